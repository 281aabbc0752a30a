"""A task process killed in the middle of `helm upgrade` (an OOM kill, a node going away) leaves the
region's Helm release locked in pending-upgrade. The deploy step is the one that knows the way out
(back to the last good revision, then upgrade), so it gets one retry, soon; `make faults`'
helm-sigkill scenario does this on a real Airflow. Every other Fanout step keeps no retries: a failed
gate must fail now, not be retried into a pass."""

from datetime import timedelta
from pathlib import Path

from fanout.airflow.base import FanoutOperator
from fanout.airflow.dags import build_release_dag
from fanout.fleet import load_fleet

LOCAL = Path(__file__).resolve().parents[2] / "include" / "fleets" / "local.yaml"


def test_only_the_deploy_step_is_retried_and_soon():
    dag = build_release_dag(load_fleet(LOCAL), str(LOCAL))
    deploys = [t for t in dag.tasks if t.task_id.endswith(".helm_deploy")]
    assert len(deploys) == 4
    for task in deploys:
        assert task.retries == 1, task.task_id
        assert task.retry_delay <= timedelta(seconds=10), "a drained region waits for it"
    others = [t for t in dag.tasks if isinstance(t, FanoutOperator) and t not in deploys]
    assert others and {t.task_id: t.retries for t in others if t.retries} == {}
