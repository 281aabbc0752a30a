"""What the end-to-end tests use to drive and read a running Airflow: its REST API as an
operator's script would call it, `fanout trigger` as CI runs it, and task logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fanout.trigger import AirflowApi
from localfleet.airflow_stack import AirflowStack

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


def task_log(stack: AirflowStack, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
    path = (
        stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}" / f"attempt={attempt}.log"
    )
    return path.read_text() if path.exists() else ""
