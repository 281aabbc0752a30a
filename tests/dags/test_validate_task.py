"""The validate task refuses input that cannot work, before any task changes anything."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from fanout.airflow.fleet_steps import ValidateReleaseOperator
from fanout.fleet import load_fleet
from fanout.planner import plan_waves
from fanout.records import release_shape
from tests.fakes import FakeTI, snapshot_of

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"git_sha": "0123abc", "source_ref": "main", "image": None, "regions": None, "dry_run": False,
          "hotfix": False, "hotfix_reason": None}  # fmt: skip


@pytest.fixture(autouse=True)
def live_profile(monkeypatch):
    """The live profile the validate task reads: as the fleet file says, unless a test changes it."""
    live = {"routing_method": None, "types": None}

    def problems(self):
        from fanout.routing import profile_mismatches

        fleet = self.fleet
        types = live["types"] or {r.endpoint.name: r.endpoint.type for r in fleet.regions}
        return profile_mismatches(fleet, live["routing_method"] or fleet.traffic_manager.routing_method, types)

    monkeypatch.setattr(ValidateReleaseOperator, "live_profile_problems", problems)
    return live


def run_validate(fleet_path, conf=None, ti=None):
    fleet = load_fleet(fleet_path)
    graph = release_shape(fleet, plan_waves(fleet))
    op = ValidateReleaseOperator(task_id="validate", fleet_path=str(fleet_path), graph=graph)
    conf = {"git_sha": "0123abc", **(conf or {})}
    ti = ti or FakeTI()
    ti.pushing = "validate"
    context = {
        "params": {**PARAMS, **conf},
        "dag": SimpleNamespace(params=PARAMS),
        "dag_run": SimpleNamespace(conf=conf),
        "run_id": "manual__test",
        "ti": ti,
    }
    return op.execute(context)


def fleet_with(tmp_path, traffic=None, regions=None, **values):
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["traffic_manager"].update(traffic or {})
    for region in data["regions"]:
        region["endpoint"].update((regions or {}).get(region["name"], {}))
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    data["app"]["values"].update(values)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def access_checks(monkeypatch):
    """The clusters' and Azure's side of validate (FleetHook.preflight, tested on the local fleet and
    the contract server) faked: the regions it was asked about."""
    from fanout.airflow.hooks import FleetHook

    asked: list[str] = []
    monkeypatch.setattr(FleetHook, "preflight", lambda self, regions: asked.extend(regions))
    return asked


def test_a_good_run_gets_its_plan_and_records_the_fleet_it_decided_from(tmp_path, access_checks):
    ti = FakeTI()
    path = fleet_with(tmp_path)
    out = run_validate(path, {"regions": ["eastus", "westus"]}, ti)
    assert out == {"waves": [["westus"], ["eastus"]], "dry_run": False}
    snapshot = ti.xcoms[("validate", "snapshot")]
    assert snapshot["text"] == path.read_text()
    assert snapshot["waves"] == [list(w.regions) for w in plan_waves(load_fleet(path)).waves], "the whole graph's"
    assert access_checks == ["westus", "eastus"]


def test_a_region_without_the_release_permissions_is_refused(tmp_path, monkeypatch):
    from fanout.airflow.hooks import FleetHook
    from fanout.preflight import PreflightError

    def refuse(self, regions: list[str]) -> None:
        raise PreflightError(f"{regions[0]}: the identity Fanout uses may not patch deployments.apps")

    monkeypatch.setattr(FleetHook, "preflight", refuse)
    with pytest.raises(AirflowFailException, match=r"preflight: westus: .* may not patch deployments.apps"):
        run_validate(fleet_with(tmp_path))


def test_a_dry_run_asks_no_cluster(tmp_path, access_checks):
    assert run_validate(fleet_with(tmp_path), {"dry_run": True})["dry_run"] is True
    assert access_checks == []


def test_chart_values_that_do_not_render_are_refused(tmp_path):
    refused = r"(?s)app.values / app.chart \(westus\): .*'/replicaCount': got string"
    with pytest.raises(AirflowFailException, match=refused):
        run_validate(fleet_with(tmp_path, replicaCount="two"))


def test_unknown_conf_keys_are_refused(tmp_path):
    with pytest.raises(AirflowFailException, match=r"conf: unknown key.s. 'regoins'"):
        run_validate(fleet_with(tmp_path), {"regoins": ["westus"]})


def test_bake_waits_only_after_waves_this_run_touched(tmp_path, monkeypatch):
    from fanout.airflow.fleet_steps import BakeOperator

    path = fleet_with(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["rollout"]["bake_seconds"] = 3
    path.write_text(yaml.safe_dump(data))
    bake = BakeOperator(task_id="bake_after_wave_1", fleet_path=str(path), wave_number=1, wave_regions=["westus"])
    bake._fleet = load_fleet(path)
    ti = FakeTI({("validate", "snapshot"): snapshot_of(path).to_xcom()})  # the run was validated
    ti.states.update({"deploy_westus.drain": "success", "deploy_westus.gate_metrics": "success"})  # canary passed
    paused = []
    monkeypatch.setattr(BakeOperator, "pause", lambda self, seconds, *_: paused.append(seconds))
    bake.execute({"params": {**PARAMS, "regions": ["westeurope"]}, "ti": ti})
    assert paused == []
    bake.execute({"params": {**PARAMS, "regions": ["westus", "westeurope"]}, "ti": ti})
    bake.execute({"params": PARAMS, "ti": ti})  # no subset: every wave is touched
    bake.execute({"params": {**PARAMS, "hotfix": True}, "ti": ti})  # a hotfix bakes rollout.hotfix's time
    assert paused == [3, 3, 0]


def test_a_profile_that_routes_otherwise_than_the_file_is_refused(tmp_path, live_profile):
    live_profile["routing_method"] = "Performance"
    with pytest.raises(
        AirflowFailException,
        match=r"traffic_manager.routing_method: the file says Weighted, profile 'hello' routes Performance",
    ):
        run_validate(fleet_with(tmp_path), {"regions": ["westus"]})
    live_profile.update(routing_method=None, types={"eastus": "AzureEndpoints", "westus": "ExternalEndpoints"})
    wrong_type = r"regions\[0\].endpoint.type: the file says ExternalEndpoints, the profile has AzureEndpoints"
    missing = r"regions\[2\].endpoint.name: 'northeurope' is not an endpoint"
    with pytest.raises(AirflowFailException, match=f"{wrong_type}.*{missing}"):
        run_validate(fleet_with(tmp_path), {"regions": ["westus"]})


def test_draining_a_geographys_only_answer_is_refused_naming_it(tmp_path):
    geo = {"eastus": {"geo_mapping": ["GEO-NA"]}, "westus": {"geo_mapping": ["US"]},
           "northeurope": {"geo_mapping": ["GEO-EU"]}, "westeurope": {"geo_mapping": ["WORLD"]}}  # fmt: skip
    refused = (
        r"traffic_manager: draining westus leaves geography US with no answer: Geographic routing does not fail over"
    )
    with pytest.raises(AirflowFailException, match=refused):
        run_validate(fleet_with(tmp_path, traffic={"routing_method": "Geographic"}, regions=geo))


def test_a_quarantined_digest_is_refused_naming_who_and_why(tmp_path, monkeypatch):
    from fanout import names
    from fanout.airflow import base
    from fanout.controls import Quarantine

    digest = "sha256:" + "b" * 64
    held = {names.quarantine_variable("hello", digest): Quarantine(digest, "leaks memory", "bob", "t0").to_json()}
    monkeypatch.setattr(base.Variable, "get", staticmethod(lambda key, default=None: held.get(key, default)))
    with pytest.raises(AirflowFailException, match=rf"image: {digest} is quarantined by bob at t0: leaks memory"):
        run_validate(fleet_with(tmp_path), {"image": digest})
    run_validate(fleet_with(tmp_path), {"image": "sha256:" + "c" * 64})  # another digest is released as before


def test_a_hotfix_must_say_why_and_needs_the_fleets_hotfix_path(tmp_path):
    path = fleet_with(tmp_path)
    with pytest.raises(AirflowFailException, match="hotfix_reason: say why this release is a hotfix"):
        run_validate(path, {"hotfix": True, "hotfix_reason": "  "})
    run_validate(path, {"hotfix": True, "hotfix_reason": "INC-9: null deref"})
    data = yaml.safe_load(path.read_text())
    del data["rollout"]["hotfix"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(AirflowFailException, match=r"hotfix: .*fleet.yaml has no hotfix path \(rollout.hotfix\)"):
        run_validate(path, {"hotfix": True, "hotfix_reason": "INC-9"})
