"""`python -m fanout trigger`: start a release run from CI, once per merge, and optionally follow it.

Why a command of our own: a CI job should not need Airflow installed, and `curl` cannot do
what a release trigger must do safely. This talks to Airflow 3's REST API (v2) with httpx only
(already pinned through Airflow, well kept), so CI installs one package. It checks the conf
before anything changes (naming the field), warns when the DAG is paused (a run would sit
queued forever), picks the run id itself so a POST whose answer was lost is checked rather
than sent twice, retries reads while the API server restarts, and with `--wait` follows the
run task by task — and, when a newer merge supersedes it, the newer run — so the CI job of a
merge reports whether its code reached the fleet.

stdout carries exactly one line, the run id (`RUN=$(python -m fanout trigger …)`); everything
for people goes to stderr. Tokens and passwords never appear in any message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from fanout import names
from fanout.fleet_checks import is_loopback
from fanout.redact import scrub

ENV_URL = "FANOUT_AIRFLOW_URL"
ENV_TOKEN = "FANOUT_AIRFLOW_TOKEN"
ENV_USERNAME = "FANOUT_AIRFLOW_USERNAME"
ENV_PASSWORD = "FANOUT_AIRFLOW_PASSWORD"
DEFAULT_URL = "http://127.0.0.1:8080"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_TIMEOUT = 0, 1, 2, 3, 4

# The release DAG's Params use these patterns too (fanout.airflow.dags); they live here so CI needs no Airflow.
# `$` also matches before a trailing newline in Python, and `\Z` does not exist in JSON Schema's (ECMAScript)
# dialect: END is "nothing follows" in both.
END = r"(?![\s\S])"
GIT_SHA = re.compile(rf"^[0-9a-f]{{7,40}}{END}")
IMAGE = re.compile(rf"^(sha256:[0-9a-f]{{64}}|[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}){END}")
# A branch or tag as CI names it: printable, no spaces or control characters (a newline would forge a line of
# CI output), at most 255 characters.
SOURCE_REF = re.compile(rf"^[A-Za-z0-9_][A-Za-z0-9_./@+#=,%!-]{{0,254}}{END}")
# Airflow's default [scheduler] allowed_run_id_pattern, bounded like its run_id column.
RUN_ID = re.compile(rf"^[A-Za-z0-9_.~:+-]{{1,250}}{END}")
MAX_TIMEOUT, MAX_POLL = 7 * 24 * 3600.0, 3600.0

SUPERSEDE_TASK = names.CHECK_SUPERSEDED
AUTH_HINT = f"set {ENV_TOKEN}, or {ENV_USERNAME} and {ENV_PASSWORD}"

Log = Callable[[str], None]


class TriggerError(Exception):
    """Ends the command with a message (never a secret) and an exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> TriggerError:
    return TriggerError(message, EXIT_USAGE)


# ---- pure helpers ---------------------------------------------------------------------------


def build_conf(
    git_sha: str | None,
    source_ref: str = "main",
    image: str | None = None,
    regions: str | list[str] | None = None,
    dry_run: bool = False,
    hotfix: str | None = None,
) -> dict[str, Any]:
    """The run's conf, with the keys the release DAG declares; raises naming the first bad field."""
    if not git_sha:
        raise usage_error("git_sha: required (--git-sha, the commit to release)")
    if not GIT_SHA.match(git_sha):
        raise usage_error(f"git_sha: {git_sha!r} is not 7–40 lowercase hex characters")
    if not source_ref or not source_ref.strip():
        raise usage_error("source_ref: must not be empty (--ref)")
    if not SOURCE_REF.match(source_ref):
        raise usage_error(
            f"source_ref: {source_ref[:80]!r} is not a branch or tag name "
            "(letters, digits and _ . / @ + # = , % ! -; at most 255 characters)"
        )
    conf: dict[str, Any] = {"git_sha": git_sha, "source_ref": source_ref}
    if image is not None:
        if not IMAGE.match(image):
            raise usage_error(f"image: {image!r} is neither sha256:<64 hex> nor an image tag")
        conf["image"] = image
    if regions is not None:
        names = [r.strip() for r in regions.split(",")] if isinstance(regions, str) else list(regions)
        names = [n for n in names if n]
        if not names:
            raise usage_error("regions: give at least one region (a,b), or leave --regions out for all")
        if len(set(names)) != len(names):
            raise usage_error(f"regions: {','.join(names)} names a region twice")
        conf["regions"] = names
    if dry_run:
        conf["dry_run"] = True
    if hotfix is not None:
        if not hotfix.strip():
            raise usage_error('hotfix: give the reason (--hotfix "INC-123: …"); the approver sees it')
        conf.update(hotfix=True, hotfix_reason=" ".join(hotfix.split())[:500])
    return conf


def new_run_id(git_sha: str, now: datetime) -> str:
    """A unique, readable run id chosen before the POST: `merge__<sha12>__<UTC time to the microsecond>`."""
    return f"merge__{git_sha[:12]}__{now.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}"


def format_progress(when: datetime, task_id: str, state: str, map_index: int = -1, try_number: int = 1) -> str:
    """One line per task state change: `12:03:04  deploy_eastus.helm_deploy  running`."""
    name = task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"
    tries = f" (try {try_number})" if try_number and try_number > 1 else ""
    return f"{when:%H:%M:%S}  {name}  {state}{tries}"


def format_failure(value: Any) -> str:
    """A failed step's `failure` XCom as `region / gate: cause` (region is None for release-wide steps)."""
    if isinstance(value, Mapping):
        return f"{value.get('region') or 'release'} / {value.get('gate') or '?'}: {value.get('cause') or '?'}"
    return str(value)


def follow_command(dag_id: str, run_id: str) -> str:
    return f"python -m fanout trigger --dag {dag_id} --follow {run_id}"


def check_url(url: str, credentials: bool) -> None:
    """Refuse what is not an http(s) URL, and credentials in clear text to anything but loopback."""
    try:
        parts = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise usage_error(f"--airflow-url: {safe_url(url)!r} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.host:
        raise usage_error(f"--airflow-url: {safe_url(url)!r} is not an http(s) URL")
    if parts.scheme == "http" and credentials and not is_loopback(parts.host):
        raise usage_error(
            f"--airflow-url: {safe_url(url)!r} is plain http to another machine: the token or password "
            "would cross the network readable by anyone on the way; use https"
        )


def safe_url(url: str | httpx.URL) -> str:
    """The URL without any user:password@ part, fit for messages."""
    try:
        return str(httpx.URL(str(url)).copy_with(username=None, password=None)).rstrip("/")
    except (httpx.InvalidURL, TypeError):
        return scrub(str(url), limit=200)


def _detail(response: httpx.Response) -> str:
    """Airflow's `detail`; for validation errors only `loc: msg` (FastAPI echoes the input, which may be a secret)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.reason_phrase or ""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts)
    return "" if detail is None else str(detail)


def _xcom_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# ---- the API client -----------------------------------------------------------------------


class AirflowApi:
    """The few Airflow REST API v2 calls a release trigger needs. GETs (and the unpause PATCH) are
    retried on connection errors and 5xx, because the API server restarts; the POST that creates a
    run is never repeated blindly."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        log: Log = lambda _: None,
    ) -> None:
        self.url = safe_url(base_url)
        self._client = httpx.Client(base_url=base_url, transport=transport, timeout=timeout)
        self._secrets = [s for s in (token, password) if s]
        self._username, self._password = username, password
        self.attempts, self._sleep, self._log = attempts, sleep, log
        if token:
            self._client.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._client.close()

    def login(self) -> None:
        """Exchange username/password for a token (`POST /auth/token`; simple auth manager and FAB)."""
        if "Authorization" in self._client.headers or not (self._username and self._password):
            return
        body = {"username": self._username, "password": self._password}
        response = self._request("POST", "/auth/token", json=body, retry=True, auth_hint=False)
        token = response.json().get("access_token")
        if not token:
            raise TriggerError("POST /auth/token: Airflow answered without an access_token", EXIT_API)
        self._secrets.append(token)
        self._client.headers["Authorization"] = f"Bearer {token}"

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        path = f"/api/v2/dags/{quote(dag_id, safe='')}"
        response = self._request("GET", path, retry=True, missing_ok=True)
        if response is None:
            app = dag_id.removeprefix("release_")
            raise TriggerError(
                f"GET {path}: HTTP 404: DAG {dag_id} not found on {self.url}; "
                f"FANOUT_FLEETS there may not include a fleet file for app {app!r}",
                EXIT_API,
            )
        return response.json()

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", json={"is_paused": False}, retry=True)

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        response = self._request("GET", self._run_path(dag_id, run_id), retry=True, missing_ok=True)
        return None if response is None else response.json()

    def dag_runs(self, dag_id: str, limit: int, missing_ok: bool = False) -> list[dict[str, Any]]:
        """The DAG's newest `limit` runs, newest first ([] for a DAG Airflow does not have, if `missing_ok`)."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
        params = {"order_by": "-run_after", "limit": limit}
        response = self._request("GET", path, params=params, retry=True, missing_ok=missing_ok)
        return [] if response is None else response.json().get("dag_runs") or []

    def asset_events(self, source_dag_id: str, source_task_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` Asset events a task emitted, newest first."""
        params = {"source_dag_id": source_dag_id, "source_task_id": source_task_id, "order_by": "-timestamp",
                  "limit": limit}  # fmt: skip
        response = self._request("GET", "/api/v2/assets/events", params=params, retry=True)
        return response.json().get("asset_events") or []

    def trigger(self, dag_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the run `body["dag_run_id"]`. When the answer is lost (timeout, 5xx) the run may exist:
        look it up before sending again. A connection that never opened sent nothing, so resending is safe."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
        run_id = body["dag_run_id"]
        maybe_sent = False
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._client.post(path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:
                problem = self._transport_problem(err)
            except httpx.TransportError as err:
                maybe_sent, problem = True, self._transport_problem(err)
            else:
                if response.status_code == 409 and maybe_sent and (run := self.get_run(dag_id, run_id)):
                    return run  # our earlier POST did create it
                if response.status_code < 500:
                    if response.is_error:
                        raise self._http_error("POST", path, response)
                    return response.json()
                maybe_sent, problem = True, f"HTTP {response.status_code}: {_detail(response)}"
            if maybe_sent and (run := self.get_run(dag_id, run_id)):
                return run
            if attempt < self.attempts:
                self._log(f"POST {path}: {problem}; run {run_id} does not exist, sending again")
                self._backoff(attempt)
        raise TriggerError(self._scrub(f"POST {path}: {problem} (tried {self.attempts} times)"), EXIT_API)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (Airflow caps a page at [api] maximum_page_limit, 100 by default)."""
        path = f"{self._run_path(dag_id, run_id)}/taskInstances"
        found: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", path, params={"limit": 1000, "offset": len(found)}, retry=True).json()
            items = page.get("task_instances") or []
            found.extend(items)
            if not items or len(found) >= page.get("total_entries", 0):
                return found

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any | None:
        path = f"{self._run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/xcomEntries/{key}"
        response = self._request("GET", path, retry=True, missing_ok=True)
        return None if response is None else _xcom_value(response.json().get("value"))

    def hitl_details(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's Human-in-the-loop tasks (approvals) nobody has answered yet."""
        path = f"{self._run_path(dag_id, run_id)}/hitlDetails"
        response = self._request("GET", path, params={"response_received": False}, retry=True, missing_ok=True)
        return [] if response is None else response.json().get("hitl_details") or []

    def dag_params(self, dag_id: str) -> dict[str, Any]:
        """The DAG's Params as the API serves them: {name: {"value", "schema", "description"}}."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/details"
        response = self._request("GET", path, retry=True, missing_ok=True)
        if response is None:
            raise TriggerError(f"GET {path}: HTTP 404: DAG {dag_id} not found on {self.url}", EXIT_API)
        return response.json().get("params") or {}

    def set_variable(self, key: str, value: str, description: str) -> None:
        """Create or replace a Variable. Airflow logs every write it is asked for, refused or not, so
        look first and send one write: a PATCH that 404s would be one more line in its event log."""
        body = {"key": key, "value": value, "description": description}
        if self.get_variable(key) is None:
            self._request("POST", "/api/v2/variables", json=body)
        else:
            self._request("PATCH", f"/api/v2/variables/{quote(key, safe='')}", json=body)

    def variables(self, prefix: str, limit: int) -> list[dict[str, Any]]:
        """The Variables whose key starts with `prefix`, by key, last first."""
        params = {"variable_key_prefix_pattern": prefix, "order_by": "-key", "limit": limit}
        return self._request("GET", "/api/v2/variables", params=params, retry=True).json().get("variables") or []

    def get_variable(self, key: str) -> str | None:
        response = self._request("GET", f"/api/v2/variables/{quote(key, safe='')}", retry=True, missing_ok=True)
        return None if response is None else response.json().get("value")

    def event_logs(self, events: list[str], limit: int) -> list[dict[str, Any]]:
        """The newest `limit` entries of Airflow's audit log for these events, newest first."""
        params = {"included_events": events, "order_by": "-when", "limit": limit}
        return self._request("GET", "/api/v2/eventLogs", params=params, retry=True).json().get("event_logs") or []

    def release_events(self, app: str, limit: int = 100) -> list[dict[str, Any]]:
        """What the release DAG's `record` task recorded of each finished release (digest, git_sha,
        source_ref, run_id, …, recorded_at), newest first (fanout.status.releases)."""
        from fanout.status import releases

        return releases(app, self.asset_events(names.release_dag(app), names.RECORD, limit))

    # -- plumbing

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retry: bool = False,
        missing_ok: bool = False,
        auth_hint: bool = True,
    ) -> httpx.Response | None:
        attempts = self.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.request(method, path, json=json, params=params)
            except httpx.TransportError as err:
                problem = self._transport_problem(err)
                if attempt == attempts:
                    raise TriggerError(self._scrub(f"{method} {path}: {problem}"), EXIT_API) from None
            else:
                if response.status_code < 500 or attempt == attempts:
                    if response.status_code == 404 and missing_ok:
                        return None
                    if response.is_error:
                        raise self._http_error(method, path, response, auth_hint=auth_hint)
                    return response
                problem = f"HTTP {response.status_code}: {_detail(response)}"
            self._log(self._scrub(f"{method} {path}: {problem}; retrying ({attempt}/{attempts - 1})"))
            self._backoff(attempt)
        raise AssertionError("unreachable")

    def _transport_problem(self, err: httpx.TransportError) -> str:
        if isinstance(err, httpx.ConnectError):
            reason = "connection refused" if "refused" in str(err).lower() else f"cannot connect: {err}"
            return f"{reason} — is Airflow's API server running at {self.url}? (--airflow-url / {ENV_URL})"
        if isinstance(err, httpx.TimeoutException):
            return f"no answer from {self.url} in time ({type(err).__name__})"
        return f"{type(err).__name__} talking to {self.url}: {err}"

    def _http_error(self, method: str, path: str, response: httpx.Response, *, auth_hint: bool = True) -> TriggerError:
        status = response.status_code
        message = f"{method} {path}: HTTP {status}: {_detail(response)}"
        if status == 401:
            if auth_hint:
                message += f" — Airflow wants a valid token: {AUTH_HINT}"
            else:
                message += f" — Airflow refused {ENV_USERNAME} / {ENV_PASSWORD}"
        elif status == 403:
            message += " — the Airflow user may not do this (it needs to read, edit and trigger the DAG)"
        return TriggerError(self._scrub(message), EXIT_USAGE if _refused_conf(method, path, response) else EXIT_API)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _backoff(self, attempt: int) -> None:
        self._sleep(min(0.5 * 2**attempt, 8.0))


def _refused_conf(method: str, path: str, response: httpx.Response) -> bool:
    """Airflow's Param validation refused the conf (`Invalid input for param <field>`): bad input, not an API fault."""
    return (
        method == "POST"
        and path.endswith("/dagRuns")
        and response.status_code in (400, 422)
        and ("param" in _detail(response).lower())
    )


# ---- following a run ------------------------------------------------------------------------


@dataclass
class Outcome:
    state: str  # success | failed | timeout | superseded
    run_state: str | None = None
    task_instances: list[dict[str, Any]] = field(default_factory=list)
    superseded: dict[str, Any] | None = None


@dataclass
class Follower:
    api: AirflowApi
    dag_id: str
    log: Log
    poll: float = 5.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def follow(self, run_id: str, timeout: float, follow_superseded: bool = True) -> int:
        """Follow the run (and whatever supersedes it) to its end; return the command's exit code."""
        deadline = self.clock() + timeout
        followed = [run_id]
        while True:
            outcome = self.watch(run_id, deadline)
            if outcome.state == "superseded":
                info = outcome.superseded or {}
                newer = str(info.get("by") or "")
                self.log(f"superseded by {newer} (git {info.get('git_sha')})" + _reason(info))
                if not follow_superseded:
                    return EXIT_OK
                if not newer or newer in followed:
                    self.log(f"cannot follow {newer or 'the newer run'}: no run id, or a loop; stopping here")
                    return EXIT_OK
                followed.append(newer)
                run_id = newer
                self.log(f"following {newer}")
                continue
            if outcome.state == "timeout":
                self.log(
                    f"{run_id} still {outcome.run_state} after {timeout:g} s; "
                    f"keep following with: {follow_command(self.dag_id, run_id)}"
                )
                return EXIT_TIMEOUT
            if outcome.state == "success":
                self.log(f"{run_id}: success")
                return EXIT_OK
            self.log(f"{run_id}: {outcome.state}")
            for ti in outcome.task_instances:
                if ti.get("state") == "failed":
                    self.log(f"  failed: {ti['task_id']}")
                    failure = self.api.xcom(self.dag_id, run_id, ti["task_id"], names.FAILURE_KEY)
                    if failure is not None:
                        self.log(f"    {format_failure(failure)}")
            return EXIT_FAILED

    def watch(self, run_id: str, deadline: float) -> Outcome:
        """Poll one run, printing each state change, until it ends, is superseded, or time runs out."""
        seen: dict[tuple[str, int], str] = {}
        run_state: str | None = None
        supersede_checked = False
        while True:
            run = self.api.get_run(self.dag_id, run_id)
            if run is None:
                raise TriggerError(f"run {run_id} of {self.dag_id} not found on {self.api.url}", EXIT_API)
            if run.get("state") != run_state:
                run_state = run.get("state")
                self.log(f"{self.now():%H:%M:%S}  {run_id}  {run_state}")
            tis = self.api.task_instances(self.dag_id, run_id)
            for ti in tis:
                key, state = (ti["task_id"], ti.get("map_index", -1)), ti.get("state")
                if state and seen.get(key) != state:
                    seen[key] = state
                    self.log(format_progress(self.now(), key[0], state, key[1], ti.get("try_number") or 1))
            if not supersede_checked and seen.get((SUPERSEDE_TASK, -1)) in ("success", "skipped"):
                # The check ends successful either way; only its `superseded` XCom tells (once).
                supersede_checked = True
                info = self.api.xcom(self.dag_id, run_id, SUPERSEDE_TASK, names.SUPERSEDED_KEY)
                if isinstance(info, Mapping):
                    return Outcome("superseded", run_state, tis, dict(info))
            if run_state in ("success", "failed"):
                return Outcome(run_state, run_state, tis)
            left = deadline - self.clock()
            if left <= 0:
                return Outcome("timeout", run_state, tis)
            self.sleep(min(self.poll, left))


def _reason(info: Mapping[str, Any]) -> str:
    return f": {info['reason']}" if info.get("reason") else ""


# ---- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("Airflow")
    where.add_argument(
        "--airflow-url",
        help=f"Airflow's base URL (default: ${ENV_URL} or {DEFAULT_URL}); auth from ${ENV_TOKEN}, "
        f"or ${ENV_USERNAME} and ${ENV_PASSWORD}",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dag", help="the release DAG id, e.g. release_hello")
    target.add_argument("--app", help="the app; the DAG is release_<app>")
    what = parser.add_argument_group("the run (ignored with --follow)")
    what.add_argument("--git-sha", help="the commit released, 7–40 lowercase hex (required unless --follow)")
    what.add_argument("--ref", default="main", help="branch or tag of the commit (conf source_ref; default main)")
    what.add_argument("--image", help="release this digest (sha256:…) without building, or build with this tag")
    what.add_argument("--regions", help="comma-separated subset of regions (default: all)")
    what.add_argument("--dry-run", action="store_true", help="plan only, change nothing")
    what.add_argument(
        "--hotfix", metavar="REASON", help="the emergency path (rollout.hotfix): waits for a named approver, "
        "may then pass a freeze, bakes and soaks shorter; REASON is shown to the approver and audited",
    )  # fmt: skip
    what.add_argument("--run-id", help="the run id (default: merge__<sha12>__<UTC time>)")
    what.add_argument("--note", help="a note shown on the run in Airflow's UI")
    what.add_argument("--unpause", action="store_true", help="unpause the DAG first if it is paused")
    follow = parser.add_argument_group("following")
    follow.add_argument("--wait", action="store_true", help="follow the run; exit 0 success, 1 failed, 4 timeout")
    follow.add_argument("--follow", metavar="RUN_ID", help="follow this existing run instead of triggering one")
    follow.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow (default 3600)")
    follow.add_argument("--poll", type=float, default=5.0, help="seconds between polls (default 5)")
    follow.add_argument(
        "--no-follow-superseded",
        dest="follow_superseded",
        action="store_false",
        help="when a newer run supersedes this one, exit 0 instead of following the newer run",
    )


def connect(
    url: str,
    env: Mapping[str, str],
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = lambda _: None,
) -> AirflowApi:
    """An API client signed in with the credentials the environment gives (token, or user and password)."""
    username, password = env.get(ENV_USERNAME) or None, env.get(ENV_PASSWORD) or None
    token = env.get(ENV_TOKEN) or None
    if not token and bool(username) != bool(password):
        raise usage_error(f"set both {ENV_USERNAME} and {ENV_PASSWORD} (or {ENV_TOKEN})")
    check_url(url, bool(token or password))
    api = AirflowApi(url, token=token, username=username, password=password, transport=transport, sleep=sleep, log=log)
    try:
        api.login()
    except BaseException:
        api.close()
        raise
    return api


def run(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] = os.environ,
    transport: httpx.BaseTransport | None = None,
    stdout: Any = None,
    stderr: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Run `fanout trigger` with parsed arguments; return the exit code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr

    def log(line: str) -> None:
        print(line, file=err, flush=True)

    try:
        return _run(args, env, transport, out, log, clock, sleep, now)
    except TriggerError as error:
        log(f"fanout trigger: {error}")
        return error.exit_code


def _run(
    args: argparse.Namespace,
    env: Mapping[str, str],
    transport: httpx.BaseTransport | None,
    out: Any,
    log: Log,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    now: Callable[[], datetime],
) -> int:
    dag_id = args.dag or names.release_dag(args.app)
    url = args.airflow_url or env.get(ENV_URL) or DEFAULT_URL
    for flag, value, top in (("--timeout", args.timeout, MAX_TIMEOUT), ("--poll", args.poll, MAX_POLL)):
        if not 0 < value <= top:  # also false for nan and inf
            raise usage_error(f"{flag}: {value!r} is not a number of seconds more than 0 and at most {top:g}")
    for flag, run_id in (("--run-id", args.run_id), ("--follow", args.follow)):
        if run_id is not None and not RUN_ID.match(run_id):
            raise usage_error(f"{flag}: {run_id[:80]!r} is not a run id (letters, digits and _ . ~ : + -; 1–250)")
    conf = (
        None if args.follow else build_conf(args.git_sha, args.ref, args.image, args.regions, args.dry_run, args.hotfix)
    )

    api = connect(url, env, transport=transport, sleep=sleep, log=log)
    try:
        follower = Follower(api, dag_id, log, poll=args.poll, clock=clock, sleep=sleep, now=now)
        if args.follow:
            print(args.follow, file=out, flush=True)
            return follower.follow(args.follow, args.timeout, args.follow_superseded)

        dag = api.get_dag(dag_id)
        if dag.get("is_paused"):
            if args.unpause:
                api.unpause(dag_id)
                log(f"unpaused {dag_id}")
            else:
                log(
                    f"WARNING: {dag_id} is paused: the run will stay queued until it is unpaused "
                    f"(in the UI, `airflow dags unpause {dag_id}`, or re-run with --unpause)"
                )
        run_id = args.run_id or new_run_id(conf["git_sha"], now())
        body: dict[str, Any] = {"logical_date": None, "conf": conf, "dag_run_id": run_id}
        if args.note:
            body["note"] = args.note
        created = api.trigger(dag_id, body)
        run_id = created.get("dag_run_id", run_id)
        print(run_id, file=out, flush=True)
        log(f"triggered {dag_id} run {run_id} (git {conf['git_sha']}, ref {conf['source_ref']})")
        log(f"  {api.url}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}")
        if not args.wait:
            return EXIT_OK
        return follower.follow(run_id, args.timeout, args.follow_superseded)
    finally:
        api.close()
