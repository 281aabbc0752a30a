"""check_superseded against a faked Task SDK boundary: which runs it asks about, what it
records, and that it skips every later task of the run (whatever their trigger rules)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from airflow.providers.common.compat.sdk import DownstreamTasksSkipped

from fanout.airflow import supersede
from fanout.airflow.dags import build_release_dag
from fanout.fleet import load_fleet

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class FakeTI:
    """The two Task SDK calls the check makes, and the XComs it pushes."""

    dag_id = "release_hello"
    map_index = -1

    def __init__(self, states):
        self.states, self.pushed = states, {}

    def get_task_states(self, dag_id, task_ids):
        assert dag_id == self.dag_id and task_ids == ["check_superseded"]
        return self.states

    def xcom_push(self, key, value):
        self.pushed[key] = value


def run_check(monkeypatch, others, me_conf=None):
    """others: run_id -> (state of the run, minutes after mine, conf); returns (result, ti)."""
    fleet_path = REPO / "include/fleets/local.yaml"
    dag = build_release_dag(load_fleet(fleet_path), str(fleet_path))
    task = dag.get_task("check_superseded")
    runs = {
        run_id: SimpleNamespace(run_id=run_id, state=state, run_after=T0 + timedelta(minutes=m), conf=conf)
        for run_id, (state, m, conf) in others.items()
    }
    asked = []

    def fake_dag_run(dag_id, run_id):
        asked.append(run_id)
        return runs[run_id]

    monkeypatch.setattr(supersede, "dag_run", fake_dag_run)
    # Runs that started have a state for their check; queued ones (and the finished ones here) do not.
    states = {"me": {"check_superseded": "running"}, "old": {"check_superseded": "success"}}
    states |= {run_id: {"check_superseded": None} for run_id in runs}
    ti = FakeTI(states)
    context = {
        "ti": ti,
        "task": task,
        "params": {"git_sha": "1111111", "regions": None, "dry_run": False},
        "dag_run": SimpleNamespace(run_id="me", run_after=T0, conf={"git_sha": "1111111", **(me_conf or {})}),
        "dag": dag,
    }
    try:
        return task.execute(context), ti, asked
    except DownstreamTasksSkipped as skipped:
        return skipped, ti, asked


def test_no_newer_run_lets_the_release_go(monkeypatch):
    result, ti, asked = run_check(monkeypatch, {"q-older": ("queued", -5, {"git_sha": "0000000"})})
    assert result == {"superseded_by": None, "queued_behind": ["q-older"]}
    assert ti.pushed == {} and asked == ["q-older"]  # runs that already started are not asked about


def test_a_newer_queued_run_skips_every_later_task(monkeypatch):
    others = {
        "newer": ("queued", 1, {"git_sha": "2222222"}),
        "newest": ("queued", 2, {"git_sha": "3333333"}),
        "newest-dry": ("queued", 3, {"git_sha": "4444444", "dry_run": True}),
    }
    result, ti, _ = run_check(monkeypatch, others)
    assert isinstance(result, DownstreamTasksSkipped)
    skipped = set(result.tasks)
    # Everything after the check, including tasks that run on all_done / none_failed.
    assert {"validate", "build", "rebalance", "record", "bake_after_wave_1", "deploy_eastus.rollback"} <= skipped
    assert "check_superseded" not in skipped
    assert ti.pushed["superseded"]["by"] == "newest" and ti.pushed["superseded"]["git_sha"] == "3333333"
    assert "every region" in ti.pushed["superseded"]["reason"]


def test_a_newer_one_region_repair_does_not_supersede_a_full_release(monkeypatch):
    result, ti, _ = run_check(monkeypatch, {"repair": ("queued", 1, {"git_sha": "2222222", "regions": ["eastus"]})})
    assert result["superseded_by"] is None and ti.pushed == {}


def test_a_run_that_is_not_queued_supersedes_nothing(monkeypatch):
    # A run created but already failed or being started is no reason to skip.
    result, _, _ = run_check(monkeypatch, {"gone": ("failed", 1, {"git_sha": "2222222"})})
    assert result == {"superseded_by": None, "queued_behind": []}


def test_a_dry_run_is_never_superseded(monkeypatch):
    others = {"newer": ("queued", 1, {"git_sha": "2222222"})}
    result, ti, _ = run_check(monkeypatch, others, me_conf={"dry_run": True})
    assert not isinstance(result, DownstreamTasksSkipped) and ti.pushed == {}


def test_a_newer_run_that_validate_will_refuse_supersedes_nothing(monkeypatch):
    others = {"typo": ("queued", 1, {"git_sha": "2222222", "regoins": ["eastus"]})}
    result, ti, _ = run_check(monkeypatch, others)
    assert result == {"superseded_by": None, "queued_behind": ["typo"]} and ti.pushed == {}
