"""The validate task refuses input that cannot work, before any task changes anything."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from fanout.airflow.operators import ValidateReleaseOperator

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"git_sha": "0123abc", "source_ref": "main", "image": None, "regions": None, "dry_run": False}


def run_validate(fleet_path, conf=None):
    op = ValidateReleaseOperator(task_id="validate", fleet_path=str(fleet_path))
    conf = {"git_sha": "0123abc", **(conf or {})}
    context = {
        "params": {**PARAMS, **conf},
        "dag": SimpleNamespace(params=PARAMS),
        "dag_run": SimpleNamespace(conf=conf),
        "run_id": "manual__test",
    }
    return op.execute(context)


def fleet_with(tmp_path, **values):
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["app"]["source"] = str(REPO / "include/app")
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


def test_a_good_run_gets_its_plan(tmp_path, access_checks):
    out = run_validate(fleet_with(tmp_path), {"regions": ["eastus", "westus"]})
    assert out == {"waves": [["westus"], ["eastus"]], "dry_run": False}
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
    from fanout.airflow.operators import BakeOperator

    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["rollout"]["bake_seconds"] = 3
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    bake = BakeOperator(task_id="bake_after_wave_1", fleet_path=str(path), wave_regions=["westus"])
    paused = []
    monkeypatch.setattr(BakeOperator, "pause", lambda self, seconds, *_: paused.append(seconds))
    bake.execute({"params": {**PARAMS, "regions": ["westeurope"]}})
    assert paused == []
    bake.execute({"params": {**PARAMS, "regions": ["westus", "westeurope"]}})
    bake.execute({"params": PARAMS})  # no subset: every wave is touched
    assert paused == [3, 3]
