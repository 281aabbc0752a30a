"""The Fanout page in a real browser: Debian's headless Chromium driven by Selenium (chromedriver
from Debian too, so nothing is downloaded at run time), signed in to the stack's Airflow with the
session cookie its login sets. Reads come from the page's own DOM, as a person would see it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from fanout.trigger import AirflowApi
from localfleet.airflow_stack import AirflowStack
from localfleet.poller import Poller

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# One JavaScript read of everything the tests compare: the matrix's data-value cells and the steps.
READ_PAGE = """
const rows = sel => Object.fromEntries([...document.querySelectorAll(sel + " tbody tr")].map(tr =>
  [tr.dataset.region, Object.fromEntries([...tr.querySelectorAll("td[data-col]")].map(td =>
    [td.dataset.col, {text: td.textContent, value: td.dataset.value}]))]));
return {read_at: document.body.dataset.readAt || null, matrix: rows("#matrix"), steps: rows("#steps"),
        run: document.getElementById("current").textContent,
        run_state: (document.getElementById("run-state") || {}).textContent || null,
        problems: document.getElementById("problems").textContent};
"""


class FanoutPage:
    def __init__(self, stack: AirflowStack, rest: AirflowApi, shots: Path, app: str = "hello") -> None:
        self.stack, self.app, self.shots = stack, app, shots
        shots.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self._lock = threading.Lock()  # one WebDriver session: one command at a time
        # Signed in as the login form signs in: Airflow's session cookie, holding the user's token.
        token = rest._client.headers["Authorization"].removeprefix("Bearer ")
        self.driver.get(f"{stack.url}/api/v2/monitor/health")
        self.driver.add_cookie({"name": "_token", "value": token, "path": "/", "httpOnly": True})

    def close(self) -> None:
        self.driver.quit()

    def open(self) -> None:
        with self._lock:
            self.driver.get(f"{self.stack.url}/fanout/{self.app}")
        self.wait(lambda page: page["read_at"] is not None, 30, "the page never loaded its data")

    def open_in_airflow(self, timeout: float = 60) -> str:
        """Airflow's UI at Browse → Fanout, once the page in its frame has its data; the frame's src."""
        with self._lock:
            self.driver.get(f"{self.stack.url}/plugin/fanout")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                frames = self.driver.find_elements(By.TAG_NAME, "iframe")
                if frames:
                    self.driver.switch_to.frame(frames[0])
                    loaded = self.driver.execute_script("return document.body && document.body.dataset.readAt")
                    self.driver.switch_to.default_content()
                    if loaded:
                        return frames[0].get_attribute("src")
            time.sleep(0.5)
        raise AssertionError(f"Airflow's UI did not show the Fanout page within {timeout:.0f} s")

    def read(self) -> dict[str, Any]:
        with self._lock:
            return self.driver.execute_script(READ_PAGE)

    def wait(self, check, timeout: float, why: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            page = self.read()
            if check(page):
                return page
            if time.monotonic() > deadline:
                raise AssertionError(f"{why} (after {timeout:.0f} s); the page shows {page}")
            time.sleep(0.5)

    def refreshes(self, count: int, timeout: float = 60) -> dict[str, Any]:
        """The page after `count` more refreshes of its data (without reloading it)."""
        seen = [self.read()["read_at"]]

        def refreshed(page: dict[str, Any]) -> bool:
            if page["read_at"] != seen[-1]:
                seen.append(page["read_at"])
            return len(seen) > count

        return self.wait(refreshed, timeout, f"fewer than {count} refreshes")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        with self._lock:
            if not self.driver.save_screenshot(str(path)):
                raise AssertionError(f"no screenshot {path}")
        return path


class StepWatch(Poller):
    """Reads the open page every other second while a release runs: what the release section showed, in
    order, and a screenshot once a region is deploying or gating."""

    def __init__(self, page: FanoutPage) -> None:
        super().__init__(2.0)  # every step but the shortest lasts longer
        self.page = page
        self.seen: list[tuple[str, dict[str, str]]] = []  # (run line, {region: step}) each time it changed
        self.shot: Path | None = None

    def poll(self) -> None:
        page = self.page.read()
        now = (page["run"], {r: cells["step"]["text"] for r, cells in page["steps"].items()})
        if not self.seen or self.seen[-1][1] != now[1]:
            self.seen.append(now)
        if self.shot is None and any(s.startswith(("deploying", "gate")) for s in now[1].values()):
            self.shot = self.page.shot("during-release")

    def steps_of(self, region: str) -> list[str]:
        found: list[str] = []
        for _, steps in self.seen:
            if region in steps and (not found or found[-1] != steps[region]):
                found.append(steps[region])
        return found
