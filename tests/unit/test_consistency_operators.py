"""The fast tier for the consistency DAG: which release records count, how a region is observed
and classified, and what a repair triggers — against a fake run and fake outside systems."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import DagRunTriggerException

from fanout import names
from fanout.airflow import consistency as cc
from fanout.airflow.base import SNAPSHOT_KEY
from fanout.fleet import load_fleet
from tests.fakes import DIGEST, LOCAL, OLD, FakeHook, FakeTI, snapshot_of

FLEET = load_fleet(LOCAL)
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def event(extra: dict, dag: str | None = "release_hello", task: str | None = "record") -> SimpleNamespace:
    return SimpleNamespace(extra=extra, source_dag_id=dag, source_task_id=task, timestamp=T0)


RECORD = {"app": "hello", "digest": DIGEST, "git_sha": "abc1234"}


@pytest.mark.parametrize(
    ("evt", "counts"),
    [
        (event(RECORD), True),
        (event({**RECORD, "from_rest_api": True}, dag=None, task=None), False),  # POSTed over the REST API
        (event(RECORD, dag="some_other_dag"), False),
        (event(RECORD, task="validate"), False),
        (event({**RECORD, "app": "other"}), False),
        (event({**RECORD, "digest": "latest"}), False),
    ],
)
def test_only_the_release_dags_record_task_names_the_desired_digest(evt, counts):
    assert cc.recorded_by_release(evt, "hello") is counts


def consistency_ti(returns: dict[str, object]) -> FakeTI:
    """A consistency run whose tasks returned `returns` (task id → value)."""
    xcoms = {(task, "return_value"): value for task, value in returns.items()}
    ti = FakeTI({(names.READ_DESIRED, SNAPSHOT_KEY): snapshot_of().to_xcom(), **xcoms})
    ti.dag_id = names.consistency_dag("hello")
    return ti


def run(op, ti, hook=None, fleet=FLEET, **context):
    op._hook, op._fleet, ti.pushing = hook or FakeHook(fleet), fleet, op.task_id
    return op.run({"ti": ti, "params": {}, "run_id": "check1", **context})


def report(states: dict[str, str], digest: str = DIGEST) -> dict:
    regions = {r: {"state": s, "since": "2026-11-30T11:00:00+00:00", "helm": None} for r, s in states.items()}
    return {
        "desired": {"digest": digest, "git_sha": "abc1234"},
        "regions": regions,
        "checked_at": "2026-11-30T12:00:00+00:00",
        "message": "some regions are not in sync",
    }


def test_report_mode_says_what_it_would_trigger_and_triggers_nothing():
    ti = consistency_ti({names.CLASSIFY: report({"eastus": "stale", "westus": "in-sync"})})
    out = run(cc.RepairFleetOperator(task_id=names.REPAIR, fleet_path=str(LOCAL)), ti)
    assert out["action"] == "report-only" and out["conf"]["regions"] == ["eastus"]
    assert out["conf"]["image"] == DIGEST, "a repair releases the recorded digest, never a rebuild"


REPAIRING = FLEET.model_copy(update={"consistency": FLEET.consistency.model_copy(update={"mode": "repair"})})


def test_repair_waits_while_a_release_run_is_active():
    ti = consistency_ti({names.CLASSIFY: report({"eastus": "drifted"})})
    ti.get_dr_count = lambda dag_id, states: 1
    out = run(cc.RepairFleetOperator(task_id=names.REPAIR, fleet_path=str(LOCAL)), ti, fleet=REPAIRING)
    assert out["action"] == "waiting" and out["active_release_runs"] == 1


def test_repair_triggers_one_release_run_for_the_regions_out_of_sync():
    states = {"eastus": "stale", "westus": "unreachable", "northeurope": "in-sync", "westeurope": "traffic-mismatch"}
    ti = consistency_ti({names.CLASSIFY: report(states)})
    ti.get_dr_count = lambda dag_id, states: 0
    with pytest.raises(DagRunTriggerException) as triggered:
        op = cc.RepairFleetOperator(task_id=names.REPAIR, fleet_path=str(LOCAL))
        run(op, ti, fleet=REPAIRING, dag=SimpleNamespace(dag_id="c"))
    assert triggered.value.trigger_dag_id == "release_hello"
    assert triggered.value.conf == {"git_sha": "abc1234", "image": DIGEST, "regions": ["eastus", "westeurope"]}


def test_classify_keeps_first_seen_times_across_checks(monkeypatch):
    stored: dict = {}
    monkeypatch.setattr(cc.Variable, "get", lambda key, default=None, deserialize_json=False: stored.get(key, default))
    monkeypatch.setattr(cc.Variable, "set", lambda key, value, serialize_json=False: stored.__setitem__(key, value))
    desired = {"desired": {"digest": DIGEST, "git_sha": "abc1234"}, "releases": {OLD: "0000000"}}
    hook = FakeHook(FLEET)
    observations = {names.observe(r): observation(r, DIGEST if r != "westus" else OLD) for r in FLEET.region_names}
    ti = consistency_ti({names.READ_DESIRED: desired, **observations})
    first = run(cc.ClassifyFleetOperator(task_id=names.CLASSIFY, fleet_path=str(LOCAL)), ti, hook)
    assert first["regions"]["westus"]["state"] == "stale" and first["regions"]["eastus"]["state"] == "in-sync"
    since = first["regions"]["westus"]["since"]
    again = run(cc.ClassifyFleetOperator(task_id=names.CLASSIFY, fleet_path=str(LOCAL)), ti, hook)
    assert again["regions"]["westus"]["since"] == since, "still stale: since when is kept"
    assert names.first_seen_variable("hello") in stored


def observation(region: str, digest: str) -> dict:
    return {
        "region": region, "reachable": True, "error": None,
        "deployment": {"image": f"r/hello@{digest}", "digest": digest, "replicas": 2, "updated": 2, "available": 2,
                       "generation": 1, "observed_generation": 1},
        "pods": [digest, digest], "helm": {"revision": 2, "status": "deployed", "digest": digest, "rollback_to": 1},
        "replica_has_digest": True,
        "endpoint": {"name": region, "enabled": True, "weight": 100, "monitor_status": "Online"},
        "traffic_error": None,
    }  # fmt: skip
