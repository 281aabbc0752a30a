"""Every DAG file imports cleanly and fast; the release graph keeps the wave and pair rules;
trigger conf is refused exactly the way the API server refuses it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization

from fanout.fleet import load_fleet
from fanout.planner import plan_waves

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
LOCAL = REPO / "include" / "fleets" / "local.yaml"
AZURE = REPO / "include" / "fleets" / "azure-example.yaml"
GOOD_SHA = "0123abc"


@pytest.fixture(scope="module")
def dagbag(monkeypatch_module):
    monkeypatch_module.setenv("FANOUT_FLEETS", f"{LOCAL}:{AZURE}")
    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_errors(path, capsys):
    started = time.perf_counter()
    bag = DagBag(dag_folder=str(path))
    took = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n  parse {path.name}: {took * 1000:.0f} ms, {len(bag.dags)} DAG(s)")
    assert bag.import_errors == {}
    assert bag.dags


# What a task process has imported before it parses the DAG file (the Task SDK's own runner).
TASK_PROCESS_PRELUDE = "import airflow.sdk; from airflow.sdk.execution_time import task_runner"
# Modules no task needs to be built: each is paid by every task of every run when the DAG file's
# imports pull it in (bench-release's "DAG parse" column). The task that needs one imports it.
NOT_AT_PARSE = ("apprise", "requests", "azure.core", "kubernetes", "airflow.models.asset")


def test_parsing_the_dag_file_imports_no_client_library():
    script = (
        f"{TASK_PROCESS_PRELUDE}; import json, runpy, sys; before = set(sys.modules); "
        f"runpy.run_path({str(DAG_FILES[0])!r}); "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    env = {**os.environ, "FANOUT_FLEETS": f"{LOCAL}{os.pathsep}{AZURE}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(m.startswith("fanout.airflow") for m in imported), "the parse did not import the DAGs"
    heavy = sorted(m for m in imported if m.startswith(NOT_AT_PARSE))
    assert heavy == [], f"the DAG-file parse imports {heavy}"


def test_each_fleet_gives_two_dags(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {
        "release_hello",
        "fleet_consistency_hello",
        "release_storefront",
        "fleet_consistency_storefront",
    }


def test_graphs_are_acyclic(dagbag):
    for dag in dagbag.dags.values():
        assert len(list(dag.topological_sort())) == len(dag.tasks)


@pytest.mark.parametrize(("dag_id", "fleet_file"), [("release_hello", LOCAL), ("release_storefront", AZURE)])
def test_release_graph_follows_the_plan(dagbag, dag_id, fleet_file):
    dag = dagbag.dags[dag_id]
    fleet = load_fleet(fleet_file)
    plan = plan_waves(fleet)
    ids = set(dag.task_ids)
    assert {"validate", "build", "rebalance", "record"} <= ids
    assert dag.get_task("build").upstream_task_ids == {"validate"}
    # The queue check comes first, so a superseded run changes nothing at all.
    assert [t.task_id for t in dag.roots] == ["check_superseded"]
    assert dag.get_task("validate").upstream_task_ids == {"check_superseded"}
    assert dag.max_active_runs == 1
    # Rebalance judges every region (a held-back one may have failed): the release is recorded only
    # after it, and a run refused or never built ends failed, not skipped.
    assert dag.get_task("record").upstream_task_ids == {"build", "rebalance"}
    assert dag.get_task("record").trigger_rule == "none_failed"
    # Each bake judges its wave, failed regions and all (rollout.wave_quorum).
    assert {dag.get_task(f"bake_after_wave_{w.number}").trigger_rule for w in plan.waves[:-1]} == {"all_done"}
    for region in fleet.region_names:
        group = [f"deploy_{region}.{step}" for step in ("drain", "dns_settle", "helm_deploy", "gates", "restore")]
        assert set(group) <= ids
        drain = dag.get_task(f"deploy_{region}.drain")
        # Promise 2: a region is deployed only after its own replica has the digest.
        assert f"wait_replication_{region}" in drain.upstream_task_ids
        assert dag.get_task(f"wait_replication_{region}").upstream_task_ids == {"build"}
        # The group ends once Traffic Manager sees the region Online again and, with metric gates, once
        # its users on the release have been judged; then traffic is rebalanced.
        last = "gate_metrics" if fleet.gates.metrics else "restore"
        assert "rebalance" in dag.get_task(f"deploy_{region}.{last}").downstream_task_ids
        assert dag.get_task(f"deploy_{region}.restore").upstream_task_ids == {f"deploy_{region}.gates"}
        # A failed deploy or gate rolls the region back; a failed DNS wait or restore changed no code.
        rollback = dag.get_task(f"deploy_{region}.rollback")
        judged = ("helm_deploy", "gates", "gate_metrics") if fleet.gates.metrics else ("helm_deploy", "gates")
        assert rollback.upstream_task_ids == {f"deploy_{region}.{step}" for step in judged}
        if fleet.gates.metrics:
            metrics = dag.get_task(f"deploy_{region}.gate_metrics")
            assert metrics.upstream_task_ids == {f"deploy_{region}.restore"}
            # A failed metric gate rolls the region back.
            assert f"deploy_{region}.rollback" in metrics.downstream_task_ids
        # Promise 11: Helm starts only after the drain has settled in DNS and users are confirmed gone.
        assert dag.get_task(f"deploy_{region}.helm_deploy").upstream_task_ids == {f"deploy_{region}.dns_settle"}
        assert dag.get_task(f"deploy_{region}.dns_settle").upstream_task_ids == {f"deploy_{region}.drain"}
    for earlier, later in zip(plan.waves, plan.waves[1:], strict=False):
        for a in earlier.regions:
            for b in later.regions:
                ancestors = {t.task_id for t in dag.get_task(f"deploy_{b}.drain").get_flat_relatives(upstream=True)}
                assert f"deploy_{a}.{last}" in ancestors, f"{b} (wave {later.number}) must wait for {a}"
    # Promise 3: the two regions of a pair are never deployed at the same time.
    for region in fleet.regions:
        if region.pair:
            a = {t.task_id for t in dag.get_task(f"deploy_{region.name}.drain").get_flat_relatives(upstream=True)}
            b = {t.task_id for t in dag.get_task(f"deploy_{region.pair}.drain").get_flat_relatives(upstream=True)}
            assert f"deploy_{region.pair}.restore" in a or f"deploy_{region.name}.restore" in b


def test_manual_approval_follows_the_canary_wave(dagbag):
    dag = dagbag.dags["release_storefront"]
    approve = dag.get_task("approve_after_canary")
    assert approve.upstream_task_ids == {"bake_after_wave_1"}
    assert "approve_after_canary" not in dagbag.dags["release_hello"].task_ids


def test_a_hotfix_is_approved_before_the_first_drain_and_only_where_the_fleet_has_a_hotfix_path(dagbag):
    dag = dagbag.dags["release_hello"]
    approve = dag.get_task("approve_hotfix")
    assert approve.upstream_task_ids == {"validate"}
    canary = load_fleet(LOCAL).rollout.canary[0]
    assert "approve_hotfix" in dag.get_task(f"deploy_{canary}.drain").get_flat_relative_ids(upstream=True)
    assert approve.assigned_users == [{"id": "admin", "name": "admin"}]
    assert "approve_hotfix" not in dagbag.dags["release_storefront"].task_ids


def test_consistency_dag_runs_on_the_fleet_schedule(dagbag):
    dag = dagbag.dags["fleet_consistency_hello"]
    assert dag.timetable.expression == "*/15 * * * *"
    assert {f"observe_{r}" for r in load_fleet(LOCAL).region_names} <= set(dag.task_ids)


def trigger(dagbag, conf):
    """What the API server does with a trigger's conf (see SerializedDAG.create_dagrun)."""
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["release_hello"]))
    return serialized.params.deep_merge(conf).validate()


def test_good_conf_is_accepted(dagbag):
    params = trigger(dagbag, {"git_sha": GOOD_SHA, "regions": ["westus", "eastus"], "image": "sha256:" + "a" * 64})
    assert params["regions"] == ["westus", "eastus"]
    assert params["dry_run"] is False and params["source_ref"] == "main"
    assert trigger(dagbag, {"git_sha": "f" * 40, "image": "v1.2.3-rc.1"})["image"] == "v1.2.3-rc.1"


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({}, "git_sha"),
        ({"git_sha": "HEAD"}, "git_sha"),
        ({"git_sha": GOOD_SHA, "regions": ["mars"]}, "regions"),
        ({"git_sha": GOOD_SHA, "regions": []}, "regions"),
        ({"git_sha": GOOD_SHA, "regions": ["westus", "westus"]}, "regions"),
        ({"git_sha": GOOD_SHA, "regions": "westus"}, "regions"),
        ({"git_sha": GOOD_SHA, "image": "sha256:abc"}, "image"),
        ({"git_sha": GOOD_SHA, "image": "repo:tag with space"}, "image"),
        ({"git_sha": GOOD_SHA, "dry_run": "yes"}, "dry_run"),
        ({"git_sha": GOOD_SHA, "source_ref": ""}, "source_ref"),
    ],
)
def test_bad_conf_is_refused_naming_the_field(dagbag, conf, field):
    with pytest.raises(ParamValidationError) as err:
        trigger(dagbag, conf)
    assert str(err.value).startswith(f"Invalid input for param {field}:")


def test_a_broken_fleet_file_is_an_import_error_naming_the_field(tmp_path, monkeypatch):
    data = yaml.safe_load(LOCAL.read_text())
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    data["regions"][3]["pair"] = "westus9"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FANOUT_FLEETS", str(broken))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    (error,) = bag.import_errors.values()
    assert f"{broken}: regions[3].pair: 'westus9' is not a region of this fleet" in error


def test_a_broken_fleet_file_costs_only_its_own_dags(tmp_path, monkeypatch):
    data = yaml.safe_load(AZURE.read_text())
    data["consistency"] = {"schedule": "every tuesday"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FANOUT_FLEETS", f"{broken}:{LOCAL}")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert set(bag.dags) == {"release_hello", "fleet_consistency_hello"}
    (error,) = bag.import_errors.values()
    assert f"{broken}: consistency.schedule: 'every tuesday' is not a cron expression" in error
