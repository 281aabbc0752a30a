"""The fast tier: every release operator's decisions against a fake run and fake outside systems
(tests/fakes.py), in milliseconds. The slow tier (real fleet, real Airflow) proves the wiring."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred

from fanout import names
from fanout.adapters.helm import HelmRelease
from fanout.adapters.traffic import TrafficManagerError
from fanout.airflow import fleet_steps as fs
from fanout.airflow import region_steps as rs
from fanout.airflow.base import SNAPSHOT_KEY
from fanout.fleet import load_fleet
from tests.fakes import DIGEST, LOCAL, OLD, FakeHook, FakeTI, released, run_task

FLEET = load_fleet(LOCAL)


def region_op(cls, region: str = "eastus"):
    return cls(task_id=names.region_task(region, cls.step), fleet_path=str(LOCAL), region=region)


def fleet_op(cls, task_id: str, **kw):
    return cls(task_id=task_id, fleet_path=str(LOCAL), **kw)


def failed(ti: FakeTI, region: str, gate: str, cause: str = "boom") -> None:
    """`gate` failed in `region`: its task (`gates` for a gate check) failed and recorded it."""
    task = names.region_task(region, names.GATES if gate in names.GATE_CHECKS else gate)
    ti.states[task] = "failed"
    ti.xcoms[(task, names.FAILURE_KEY)] = {"region": region, "gate": gate, "cause": cause}


# -- skipping ---------------------------------------------------------------------------


def test_a_region_outside_the_runs_subset_is_skipped_before_any_call():
    hook = FakeHook(FLEET)
    with pytest.raises(AirflowSkipException, match="not in this run's regions"):
        run_task(region_op(rs.DrainRegionOperator), released(FakeTI()), hook, {"regions": ["westus"]})
    assert hook.tm.calls == []


def test_a_dry_run_skips_every_changing_step():
    hook = FakeHook(FLEET)
    with pytest.raises(AirflowSkipException, match="dry run"):
        run_task(region_op(rs.DrainRegionOperator), released(FakeTI()), hook, {"dry_run": True})
    assert hook.tm.calls == []


# -- drain ------------------------------------------------------------------------------


def test_drain_disables_the_endpoint_and_records_it_was_enabled():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    out = run_task(region_op(rs.DrainRegionOperator), ti, hook)
    assert out == {"was_enabled": True, "held_seconds": 0.0} and hook.tm.calls == [("eastus", False, None)]


def test_drain_refused_by_min_serving_records_why_and_changes_nothing():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    for name in ("westus", "northeurope", "westeurope"):
        hook.tm.state[name] = hook.tm.state[name].__class__(name, "ExternalEndpoints", False, 100, "Online")
    with pytest.raises(AirflowFailException, match="eastus: drain failed: refused: draining eastus would leave 0"):
        run_task(region_op(rs.DrainRegionOperator), ti, hook)
    assert hook.tm.calls == []
    failure = ti.xcoms[(names.region_task("eastus", names.DRAIN), names.FAILURE_KEY)]
    assert failure["region"] == "eastus" and failure["gate"] == "drain" and "min_serving_regions" in failure["cause"]


def test_an_unforeseen_outside_error_is_recorded_with_region_step_and_cause():
    """Traffic Manager still throttling after every retry (`make faults`, tm-429-500): the run's
    message named only the task ("failed: deploy_westus.drain"), not what happened."""
    hook, ti = FakeHook(FLEET), released(FakeTI())

    def throttled():
        raise TrafficManagerError("profile 'hello': reading the profile failed: HTTP 429", profile="hello")

    hook.tm.endpoints = throttled
    with pytest.raises(TrafficManagerError):  # raised as it was: Airflow's retry rules still decide
        run_task(region_op(rs.DrainRegionOperator), ti, hook)
    failure = ti.xcoms[(names.region_task("eastus", names.DRAIN), names.FAILURE_KEY)]
    assert failure["region"] == "eastus" and failure["gate"] == "drain"
    assert failure["cause"] == "TrafficManagerError: profile 'hello': reading the profile failed: HTTP 429"


def test_a_step_failing_with_its_own_exception_records_it_too():
    """The build's "registry … unreachable" (`make faults`, registry-down) reached the run's message
    as only "failed: build"."""

    class Unreachable(fs.BuildImageOperator):
        def run(self, context):
            raise AirflowFailException("registry 127.0.0.1:5101 unreachable: [Errno 111] Connection refused")

    ti = released(FakeTI())
    with pytest.raises(AirflowFailException):
        run_task(fleet_op(Unreachable, names.BUILD), ti, FakeHook(FLEET))
    failure = ti.xcoms[(names.BUILD, names.FAILURE_KEY)]
    assert failure["gate"] == "build" and "registry 127.0.0.1:5101 unreachable" in failure["cause"]


def test_a_failure_fail_recorded_is_not_overwritten():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    for name in ("westus", "northeurope", "westeurope"):
        hook.tm.state[name] = hook.tm.state[name].__class__(name, "ExternalEndpoints", False, 100, "Online")
    with pytest.raises(AirflowFailException):
        run_task(region_op(rs.DrainRegionOperator), ti, hook)
    failure = ti.xcoms[(names.region_task("eastus", names.DRAIN), names.FAILURE_KEY)]
    assert failure["cause"].startswith("refused: ")


def test_an_approved_hotfix_is_still_refused_a_drain_that_breaks_min_serving():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    for name in ("westus", "northeurope", "westeurope"):
        hook.tm.state[name] = hook.tm.state[name].__class__(name, "ExternalEndpoints", False, 100, "Online")
    with pytest.raises(AirflowFailException, match="eastus: drain failed: refused: draining eastus would leave 0"):
        run_task(region_op(rs.DrainRegionOperator), ti, hook, {"hotfix": True, "hotfix_reason": "INC-9"})
    assert hook.tm.calls == []


# -- deploy -----------------------------------------------------------------------------


def test_deploy_of_a_live_digest_changes_nothing():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    hook.helms["eastus"].history_ = [HelmRelease("hello", "hello", 3, "deployed", "hello-0.1.0")]
    hook.deployments["eastus"] = deployment(DIGEST)
    out = run_task(region_op(rs.HelmDeployOperator), ti, hook)
    assert out == {"changed": False, "previous_revision": 3, "revision": 3} and hook.helms["eastus"].calls == []


def test_deploy_unlocks_a_stuck_release_before_upgrading():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    hook.helms["eastus"].history_ = [
        HelmRelease("hello", "hello", 1, "deployed", "c"),
        HelmRelease("hello", "hello", 2, "pending-upgrade", "c"),
    ]
    out = run_task(region_op(rs.HelmDeployOperator), ti, hook)
    assert hook.helms["eastus"].calls == [("rollback", 1), ("upgrade", DIGEST)]
    assert out["changed"] is True and out["previous_revision"] == 1, "back to the last good revision"


def test_a_failed_upgrade_still_records_where_a_rollback_returns_to():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    hook.helms["eastus"].history_ = [HelmRelease("hello", "hello", 4, "deployed", "c")]
    hook.helms["eastus"].fail_upgrade = "UPGRADE FAILED: timed out"
    with pytest.raises(AirflowFailException, match="helm_deploy failed: UPGRADE FAILED"):
        run_task(region_op(rs.HelmDeployOperator), ti, hook)
    task = names.region_task("eastus", names.HELM_DEPLOY)
    assert ti.xcoms[(task, "return_value")] == {"changed": True, "previous_revision": 4, "revision": None}


# -- gates ------------------------------------------------------------------------------


def test_the_gates_defer_with_the_runs_snapshot():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(TaskDeferred) as deferred:
        run_task(region_op(rs.GatesOperator), ti, hook)
    for item in deferred.value.trigger.serialize()[1]["phases"]:
        kwargs = item["kwargs"]
        assert kwargs["region"] == "eastus" and kwargs["digest"] == DIGEST
        assert kwargs["fleet"] == ti.xcoms[(names.VALIDATE, SNAPSHOT_KEY)], "each check decides from the run's snapshot"


def test_a_timed_out_gate_fails_naming_region_gate_and_cause():
    ti = released(FakeTI())
    op = region_op(rs.GatesOperator)
    op._fleet, ti.pushing = FLEET, op.task_id
    event = {"status": "timeout", "detail": "edge serves sha256:0000, expected …", "waited": 300.0}
    with pytest.raises(AirflowFailException, match=r"eastus: gate_http failed: edge serves .* \(gave up after 300 s\)"):
        op.end_wait({"ti": ti}, {**event, "ending": op.ending(names.GATE_HTTP).as_dict()})
    assert ti.xcoms[(op.task_id, names.FAILURE_KEY)]["gate"] == "gate_http"


def test_replication_waits_count_from_the_push_so_waits_in_a_row_share_one_deadline(monkeypatch):
    """Under `airflow dags test` the regions' waits run one after another: the second region must
    not start a fresh 300 s after the first ran out. A region re-run by hand waits its full time."""

    async def lacking(self):
        return False, "127.0.0.1:5001 does not have it yet"

    monkeypatch.setattr("fanout.airflow.triggers.ReplicationTrigger.check", lacking)
    timeout = FLEET.registry.replication_timeout_seconds
    ti = released(FakeTI())
    ti.xcoms[(names.BUILD, "return_value")]["pinned_at"] = time.time() - timeout - 1
    with pytest.raises(AirflowFailException, match=r"eastus: wait_replication failed: .*still lacks .* after \d+ s"):
        run_task(region_op(rs.WaitForReplicationOperator), ti, FakeHook(FLEET))
    ti.try_number = 2
    with pytest.raises(TaskDeferred):
        run_task(region_op(rs.WaitForReplicationOperator), ti, FakeHook(FLEET))


# -- rollback ---------------------------------------------------------------------------


def test_rollback_skips_when_no_step_of_the_region_failed():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(AirflowSkipException, match="no step of this region failed"):
        run_task(region_op(rs.RollbackRegionOperator), ti, hook)
    assert hook.helms["eastus"].calls == [] and hook.tm.calls == []


def upgraded_from_4(ti: FakeTI) -> FakeTI:
    """eastus drained from enabled, then upgraded from helm revision 4 to 5 in this run."""
    ti.xcoms[(names.region_task("eastus", names.DRAIN), "return_value")] = {"was_enabled": True}
    ti.xcoms[(names.region_task("eastus", names.HELM_DEPLOY), "return_value")] = {
        "changed": True, "previous_revision": 4, "revision": 5,
    }  # fmt: skip
    return ti


def test_rollback_returns_to_the_previous_revision_and_gives_traffic_back_when_healthy():
    hook, ti = FakeHook(FLEET, serving={"eastus": OLD}), upgraded_from_4(released(FakeTI()))
    hook.tm.state["eastus"] = replace(hook.tm.state["eastus"], enabled=False)  # as the drain left it
    failed(ti, "eastus", names.GATE_HTTP, "edge unhealthy")
    out = run_task(region_op(rs.RollbackRegionOperator), ti, hook)
    assert hook.helms["eastus"].calls == [("rollback", 4)]
    assert out["rolled_back_to"] == 4 and out["traffic"] == "enabled" and out["gate"] == "gate_http"
    assert hook.tm.calls == [("eastus", True, 100)]


def test_rollback_after_a_metric_gate_drains_the_restored_region_before_helm_changes_it():
    hook, ti = FakeHook(FLEET, serving={"eastus": OLD}), upgraded_from_4(released(FakeTI()))
    failed(ti, "eastus", names.GATE_METRICS, "eastus errors: fail: error ratio 0.2000 > max 0.0200")
    out = run_task(region_op(rs.RollbackRegionOperator), ti, hook)
    assert out["gate"] == "gate_metrics" and out["traffic"] == "enabled"
    # Off Traffic Manager first (users were on the bad build), back once the old build runs.
    assert hook.tm.calls == [("eastus", False, None), ("eastus", True, 100)]
    assert hook.helms["eastus"].calls == [("rollback", 4)]


def test_rollback_of_a_first_install_keeps_the_region_drained():
    hook, ti = FakeHook(FLEET, unhealthy=("eastus",)), released(FakeTI())
    ti.xcoms[(names.region_task("eastus", names.DRAIN), "return_value")] = {"was_enabled": True}
    ti.xcoms[(names.region_task("eastus", names.HELM_DEPLOY), "return_value")] = {"changed": True}
    failed(ti, "eastus", names.GATE_ROLLOUT)
    out = run_task(region_op(rs.RollbackRegionOperator), ti, hook)
    assert out["rolled_back_to"] is None and out["traffic"] == "drained" and hook.tm.calls == []


def test_rollback_leaves_a_region_drained_before_the_run_drained():
    hook, ti = FakeHook(FLEET, serving={"eastus": OLD}), released(FakeTI())
    ti.xcoms[(names.region_task("eastus", names.DRAIN), "return_value")] = {"was_enabled": False}
    ti.xcoms[(names.region_task("eastus", names.HELM_DEPLOY), "return_value")] = {"changed": False}
    failed(ti, "eastus", names.GATE_SOAK)
    out = run_task(region_op(rs.RollbackRegionOperator), ti, hook)
    assert out["traffic"] == "drained (it was drained before this run)" and hook.tm.calls == []


# -- rebalance and rollback-all ---------------------------------------------------------


def test_rebalance_of_a_refused_run_changes_nothing():
    hook = FakeHook(FLEET)
    with pytest.raises(AirflowSkipException, match="validate refused"):
        run_task(fleet_op(fs.RebalanceOperator, names.REBALANCE), FakeTI(), hook)
    assert hook.tm.calls == []


def test_rebalance_enables_every_region_on_the_release():
    hook, ti = FakeHook(FLEET, serving=dict.fromkeys(FLEET.region_names, DIGEST)), released(FakeTI())
    hook.tm.state["eastus"] = hook.tm.state["eastus"].__class__("eastus", "ExternalEndpoints", False, 100, "Online")
    out = run_task(fleet_op(fs.RebalanceOperator, names.REBALANCE), ti, hook)
    assert hook.tm.calls == [("eastus", True, 100)] and out["warnings"] == []


def test_rebalance_of_a_failed_run_names_every_failure():
    hook, ti = FakeHook(FLEET, serving=dict.fromkeys(FLEET.region_names, OLD)), released(FakeTI())
    failed(ti, "westus", names.GATE_HTTP, "edge answered 503")
    ti.states[names.wait_replication("eastus")] = "failed"
    with pytest.raises(AirflowFailException) as caught:
        run_task(fleet_op(fs.RebalanceOperator, names.REBALANCE), ti, hook)
    message = str(caught.value)
    assert "westus: gate_http: edge answered 503" in message
    assert "eastus: wait_replication: task wait_replication_eastus failed; see its log" in message


def test_rollback_all_returns_every_changed_region_not_yet_rolled_back():
    hook, ti = FakeHook(FLEET, serving=dict.fromkeys(FLEET.region_names, OLD)), released(FakeTI())
    failed(ti, "westus", names.GATE_HTTP)
    for region, deploy in {
        "eastus": {"changed": True, "previous_revision": 2},
        "westus": {"changed": True, "previous_revision": 7},
        "northeurope": {"changed": False, "previous_revision": 1},
    }.items():
        ti.xcoms[(names.region_task(region, names.HELM_DEPLOY), "return_value")] = deploy
    ti.xcoms[(names.region_task("westus", names.ROLLBACK), "return_value")] = {"rolled_back_to": 7}
    out = run_task(fleet_op(fs.RollbackAllOperator, names.ROLLBACK_ALL), ti, hook)
    assert list(out["rolled_back"]) == ["eastus"] and hook.helms["eastus"].calls == [("rollback", 2)]
    assert hook.helms["westus"].calls == [] and hook.helms["northeurope"].calls == []


# -- validate: the run's snapshot ---------------------------------------------------------


def test_validate_refuses_a_fleet_file_whose_waves_changed_since_the_dag_was_built(tmp_path, monkeypatch):
    monkeypatch.setattr("fanout.airflow.fleet_steps.render_chart", lambda *a, **k: "")
    path = tmp_path / "fleet.yaml"
    path.write_text(absolute_paths(LOCAL.read_text()))
    from fanout.planner import plan_waves
    from fanout.records import release_shape

    graph = release_shape(FLEET, plan_waves(FLEET))
    path.write_text(absolute_paths(LOCAL.read_text()).replace("max_regions_per_wave: 2", "max_regions_per_wave: 1"))
    op = fs.ValidateReleaseOperator(task_id=names.VALIDATE, fleet_path=str(path), graph=graph)
    ti = FakeTI()
    ti.pushing = op.task_id
    run = type("Run", (), {"conf": {"git_sha": "0123456"}})()
    dag = type("Dag", (), {"params": {"git_sha": 1}})()
    with pytest.raises(AirflowFailException, match="changed since this DAG was built \\(waves: built with"):
        op.execute({"ti": ti, "params": {"git_sha": "0123456"}, "dag_run": run, "dag": dag, "run_id": "r"})
    assert (names.VALIDATE, SNAPSHOT_KEY) not in ti.xcoms, "a refused run records no snapshot"


def test_later_tasks_decide_from_the_snapshot_not_the_file(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(absolute_paths(LOCAL.read_text()))
    ti = released(FakeTI(), path=path)
    path.write_text("garbage: [")  # the file changes (even breaks) after validate
    op = rs.DrainRegionOperator(task_id="d", fleet_path=str(path), region="eastus")
    ti.pushing = op.task_id
    assert op.snapshot({"ti": ti}).fleet().region("eastus").endpoint.weight == 100


def deployment(digest: str) -> dict:
    image = f"127.0.0.1:5101/fanout/hello@{digest}"
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
    }


def absolute_paths(text: str) -> str:
    """The local fleet file's text for a copy elsewhere: its app and chart named by absolute path."""
    return text.replace("../app", str(LOCAL.parent.parent / "app")).replace(
        "../charts/hello", str(LOCAL.parent.parent / "charts" / "hello")
    )


@pytest.mark.parametrize(
    ("cls", "task_id"),
    [(rs.RollbackRegionOperator, "deploy_eastus.rollback"), (fs.RollbackAllOperator, names.ROLLBACK_ALL)],
)
def test_a_run_validate_refused_is_skipped_by_the_steps_that_answer_failures(cls, task_id):
    """one_failed / all_done still start them when validate failed: nothing ran, nothing to undo."""
    hook = FakeHook(FLEET)
    op = cls(
        task_id=task_id, fleet_path=str(LOCAL), **({"region": "eastus"} if cls is rs.RollbackRegionOperator else {})
    )
    with pytest.raises(AirflowSkipException, match="validate refused this run"):
        run_task(op, FakeTI(), hook)
    assert hook.tm.calls == [] and all(h.calls == [] for h in hook.helms.values())


def test_a_hotfix_soaks_rollout_hotfixs_time():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(TaskDeferred) as deferred:
        run_task(region_op(rs.GatesOperator), ti, hook, {"hotfix": True})
    soak = deferred.value.trigger.phases[-1]
    assert soak["delay"] == soak["kwargs"]["timeout_seconds"] == FLEET.rollout.hotfix.soak_seconds
    assert FLEET.rollout.hotfix.soak_seconds < FLEET.gates.soak_seconds
