"""What the end-to-end tests use to drive and read a running Airflow: its REST API as an
operator's script would call it, `fanout trigger` as CI runs it, task logs, and (Celery mode)
which worker ran what and what its temporary folder held."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fanout.trigger import AirflowApi
from localfleet.airflow_stack import WORKERS, AirflowStack
from localfleet.poller import Poller

REPO = Path(__file__).resolve().parents[2]
CONSISTENCY_SCHEDULE = "*/2 * * * *"


class Rest(AirflowApi):
    """`fanout trigger`'s REST client as one of the stack's users (its admin unless told), plus what
    an operator's script adds."""

    def __init__(self, stack: AirflowStack, user: str = "admin"):
        user, password = stack.credentials(user)
        super().__init__(stack.url, username=user, password=password)
        self.login()

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str) -> Any:
        """Answer a human-in-the-loop task (an approval) as this user."""
        path = f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/-1/hitlDetails"
        return self.call("PATCH", path, {"chosen_options": [option], "params_input": {}})

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._request(method, path, json=body, retry=method == "GET")
        return response.json() if response.content else None

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's task instances by task id."""
        return {ti["task_id"]: ti for ti in self.task_instances(dag_id, run_id)}

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.get_run(dag_id, run_id)["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise AssertionError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")


def fanout_trigger(stack: AirflowStack, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m fanout trigger …` as CI runs it, pointed at the stack."""
    return fanout(stack, "trigger", *args, timeout=timeout)


def fanout(stack: AirflowStack, command: str, *args: str, user: str = "admin", timeout: float = 900
           ) -> subprocess.CompletedProcess:  # fmt: skip
    """`python -m fanout <command> …` as a person or CI runs it, pointed at the stack as `user`."""
    user, password = stack.credentials(user)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "plugins"),
        "FANOUT_AIRFLOW_URL": stack.url,
        "FANOUT_AIRFLOW_USERNAME": user,
        "FANOUT_AIRFLOW_PASSWORD": password,
    }
    return subprocess.run(
        [sys.executable, "-m", "fanout", command, *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def task_log(rest: Rest, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
    """A task attempt's log as the UI shows it: through the api-server, whichever worker ran it."""
    path = f"{rest._run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{attempt}?full_content=true"
    return rest._request("GET", path, retry=True).text


def region_tasks(tis: dict[str, dict[str, Any]], regions: list[str]) -> dict[str, dict[str, Any]]:
    """The task instances of `regions`: their deploy group (deploy_<region>.…) and waits (…_<region>)."""
    return {t: ti for t, ti in tis.items() if set(re.split(r"[._]", t)) & set(regions)}


# The folders Fanout's tasks keep kubeconfigs (fanout.adapters.aks.KubeconfigDir) and Helm values
# files (fanout.adapters.helm.values_file) in, under the task process's TMPDIR while it runs.
SECRET_FOLDERS = ("fanout-kube-", "fanout-helm-")


class WorkerTmpWatch(Poller):
    """Samples each Celery worker's TMPDIR while a block runs: which kubeconfig and values-file
    folders appeared in it (`seen`), and which are still there (`left`)."""

    def __init__(self, stack: AirflowStack, interval: float = 0.1) -> None:
        super().__init__(interval)
        self.folders = {name: stack.worker_tmp(name) for name in WORKERS} if stack.executor == "celery" else {}
        self.seen: dict[str, set[str]] = {name: set() for name in self.folders}

    def secret_folders(self, worker: str) -> set[str]:
        try:
            return {p.name for p in self.folders[worker].iterdir() if p.name.startswith(SECRET_FOLDERS)}
        except FileNotFoundError:
            return set()

    def left(self) -> dict[str, set[str]]:
        return {name: found for name in self.folders if (found := self.secret_folders(name))}

    def poll(self) -> None:
        for name in self.folders:
            self.seen[name] |= self.secret_folders(name)
