"""The first task of a release run: skip it when a newer queued run supersedes it.

The release DAG runs one run at a time (max_active_runs=1), so merges that land while a
release is going queue up. The scheduler starts queued runs oldest first; without this
task a burst of five merges would release five times, each one to every region. Instead,
when a run starts, it looks at the runs still queued behind it and, if one of them does the
same work or more (fanout.policy.superseding_run), it records which run and why and skips
every other task of the run whatever its trigger rule (as ShortCircuitOperator does), so a
superseded run touches no region and records no release.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.utils.skipmixin import SkipMixin
from airflow.sdk import Context

from fanout import names
from fanout.airflow.base import FanoutOperator
from fanout.policy import RunRequest, superseding_run


def dag_run(dag_id: str, run_id: str) -> Any:
    """Another run of a DAG, conf included. The Task SDK has no public call for it yet; this is
    the message its own helpers send to the supervisor (airflow.sdk.execution_time.comms)."""
    from airflow.sdk.execution_time.comms import GetDagRun
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

    return SUPERVISOR_COMMS.send(GetDagRun(dag_id=dag_id, run_id=run_id))


class CheckSupersededOperator(FanoutOperator, SkipMixin):
    """Skip every other task of this run when a newer queued run supersedes it."""

    needs_snapshot = False

    inherits_from_skipmixin = True
    runs_on_dry_run = True
    ui_color = "#f0f0f0"

    def run(self, context: Context) -> dict[str, Any] | None:
        ti, run = context["ti"], context["dag_run"]
        declared = list(context["dag"].params.keys())
        me = RunRequest.from_conf(run.run_id, run.run_after, run.conf, declared)
        # Every run of the DAG has this task; the ones whose copy has no state yet have not started.
        check = names.CHECK_SUPERSEDED
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[check])
        waiting = [run_id for run_id, tasks in states.items() if run_id != run.run_id and tasks.get(check) is None]
        queued = []
        for run_id in waiting:
            other = dag_run(ti.dag_id, run_id)
            if getattr(other.state, "value", other.state) == "queued":
                queued.append(RunRequest.from_conf(other.run_id, other.run_after, other.conf, declared))
        for refused in (r for r in queued if r.problems):
            self.log.info("queued run %s cannot supersede this one: %s", refused.run_id, "; ".join(refused.problems))
        newer = superseding_run(me, queued)
        if newer is None:
            self.log.info("queued behind this run: %s; none supersedes it", [r.run_id for r in queued] or "nothing")
            return {"superseded_by": None, "queued_behind": [r.run_id for r in queued]}
        covers = "every region" if newer.regions is None else ", ".join(newer.regions)
        reason = f"a run asked for later and queued behind this one releases {covers}; this run would only be undone"
        self.log.warning("superseded by run %s (git %s): %s", newer.run_id, newer.git_sha, reason)
        ti.xcom_push(key=names.SUPERSEDED_KEY, value={"by": newer.run_id, "git_sha": newer.git_sha, "reason": reason})
        # Raises DownstreamTasksSkipped: the supervisor skips those tasks and this one succeeds.
        self.skip(ti=ti, tasks=context["task"].get_flat_relatives(upstream=False))
        return None
