"""`python -m localfleet.short_waits`: do waits that end within seconds of their deferral survive
a real scheduler? (apache/airflow#71580, #72716; see fanout.airflow.waits)

Brings up a private Airflow (PostgreSQL, api-server, scheduler with LocalExecutor, dag-processor,
triggerer) whose only DAGs are two made here, each of `--tasks` waits whose trigger fires
`--after` seconds after the deferral:

- short_wait_resume: the trigger resumes the task on a worker (Airflow's usual `execute_complete`);
- short_wait_end: fanout.airflow.waits, the trigger ends the task (plus one wait that times out,
  to show the failure record a failed gate leaves is written by the trigger).

It triggers each DAG `--runs` times and prints, per design, how many waits succeeded and how many
the scheduler failed with "state mismatch" (from the audit log), then tears everything down.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, BaseOperator, Context

from fanout.airflow.triggers import PollingTrigger
from fanout.airflow.waits import Ending, WaitingMixin
from fanout.trigger import AirflowApi
from localfleet import procs
from localfleet.airflow_stack import AirflowStack, StackError

DESIGNS = ("resume", "end")
FAILING = "times_out"  # the short_wait_end task whose wait gives up


class SoonTrigger(PollingTrigger):
    """Done `after` seconds after `started_at` (the deferral)."""

    def __init__(self, *, after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after = after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.SoonTrigger", {"after": self.after, **self._kwargs()}

    async def check(self) -> tuple[bool, str]:
        waited = time.time() - self.started_at
        return waited >= self.after, f"{waited:.1f} s of {self.after} s"


class ResumingWait(BaseOperator):
    """The plain deferrable pattern: the trigger's event resumes the task on a worker."""

    def __init__(self, *, after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after = after

    def execute(self, context: Context) -> None:
        self.defer(trigger=SoonTrigger(after=self.after, timeout_seconds=60, poll_seconds=0.2), method_name="resume")

    def resume(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return event


class EndingWait(WaitingMixin, BaseOperator):
    """fanout.airflow.waits: the trigger ends the task."""

    def __init__(self, *, after: float, timeout: float = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after, self.timeout = after, timeout

    def execute(self, context: Context) -> Any:
        trigger = SoonTrigger(after=self.after, timeout_seconds=self.timeout, poll_seconds=0.2)
        return self.wait(context, trigger, Ending("local", self.task_id))


def build_dags(tasks: int, after: float) -> dict[str, DAG]:
    dags = {}
    for design in DESIGNS:
        with DAG(f"short_wait_{design}", schedule=None, max_active_runs=1) as dag:
            for n in range(tasks):
                if design == "resume":
                    ResumingWait(task_id=f"wait_{n}", after=after)
                else:
                    EndingWait(task_id=f"wait_{n}", after=after)
            if design == "end":
                EndingWait(task_id=FAILING, after=60, timeout=after)
        dags[dag.dag_id] = dag
    return dags


DAG_FILE = """# airflow dag file of localfleet.short_waits
from localfleet.short_waits import build_dags

globals().update(build_dags({tasks}, {after}))
"""


class ShortWaitStack(AirflowStack):
    """A private Airflow whose DAGs folder holds only the short-wait DAGs."""

    def __init__(self, folder: Path, tasks: int, after: float) -> None:
        super().__init__(folder, folder / "no-fleet.yaml", procs.free_port())
        self.dags = folder / "dags"
        self.dags.mkdir(parents=True, exist_ok=True)
        (self.dags / "short_waits.py").write_text(DAG_FILE.format(tasks=tasks, after=after))

    def env(self) -> dict[str, str]:
        return {**super().env(), "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags)}


def run_once(api: AirflowApi, dag_id: str, n: int, timeout: float = 300) -> dict[str, str | None]:
    run_id = f"{dag_id}__{n}__{int(time.time())}"
    api.trigger(dag_id, {"logical_date": None, "dag_run_id": run_id})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get_run(dag_id, run_id) or {}
        if run.get("state") in ("success", "failed"):
            break
        time.sleep(1)
    return {ti["task_id"]: ti.get("state") for ti in api.task_instances(dag_id, run_id)} | {"__run_id": run_id}


def mismatches(api: AirflowApi, dag_id: str) -> int:
    body = api._request("GET", "/api/v2/eventLogs", params={"dag_id": dag_id, "event": "state mismatch", "limit": 1000})
    return int(body.json().get("total_entries", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.short_waits", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per design (10)")
    parser.add_argument("--tasks", type=int, default=6, help="waits per run (6)")
    parser.add_argument("--after", type=float, default=1.0, help="a trigger fires this long after deferral (1 s)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fanout-short-waits-"))
    stack = ShortWaitStack(folder, args.tasks, args.after)
    totals: dict[str, dict[str, int]] = {d: {} for d in DESIGNS}
    failure_records: list[Any] = []
    try:
        stack.up(progress=lambda line: print(f"  airflow: {line}", flush=True))
        user, password = stack.credentials()
        api = AirflowApi(stack.url, username=user, password=password)
        api.login()
        for design in DESIGNS:
            dag_id = f"short_wait_{design}"
            while True:  # until the dag-processor has parsed it
                try:
                    if api.get_dag(dag_id).get("is_paused"):
                        api.unpause(dag_id)
                    break
                except Exception:
                    time.sleep(2)
            for n in range(args.runs):
                states = run_once(api, dag_id, n)
                run_id = states.pop("__run_id")
                if design == "end":
                    failure_records.append(api.xcom(dag_id, run_id, FAILING, "failure"))
                    assert states.pop(FAILING) == "failed", "the wait that times out must fail"
                for state in states.values():
                    totals[design][str(state)] = totals[design].get(str(state), 0) + 1
                print(f"{dag_id} run {n + 1}/{args.runs}: {sorted(states.items())}", flush=True)
            totals[design]["state mismatch (audit log)"] = mismatches(api, dag_id)
        print(f"\nwaits whose trigger fires {args.after} s after deferral, {args.tasks} per run, {args.runs} runs:")
        for design, counts in totals.items():
            print(f"  short_wait_{design:<7} {counts}")
        print(f"  failure records the trigger wrote for {FAILING}: {failure_records[:1]} … ({len(failure_records)})")
        api.close()
    except (StackError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        stack.down(progress=print, remove=True)
        if not procs.pids_mentioning(folder):
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
