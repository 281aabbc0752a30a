"""The consistency DAG on the real local fleet: each class is made to happen by hand and
detected, and with repair on the fleet converges back to in-sync.

`airflow dags test` runs one DAG run and no scheduler, so a release run the repair task
triggers stays queued: these tests check its conf, then run the release themselves with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from release_checks import admin_kubeconfig, new_commit

from fanout.adapters.helm import Helm, helm_binary
from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential
from localfleet import kube
from localfleet.testing import airflow_env, dags_test

pytestmark = pytest.mark.localfleet
REPO = Path(__file__).resolve().parents[2]
APP = NS = "hello"
CHECK, RELEASE = "fleet_consistency_hello", "release_hello"


class Fleet:
    """The session's local fleet seen from a test: run DAGs, read their results, break and mend regions."""

    def __init__(self, local_fleet, airflow_home: Path, folder: Path):
        self.fleet, self.state, self.home = local_fleet.fleet, local_fleet.state, airflow_home
        self.path = local_fleet.path
        # Same fleet, same ports, only the mode differs: the DAG ids stay the same.
        data = yaml.safe_load(self.path.read_text())
        data["consistency"]["mode"] = "repair"
        self.repair_path = folder / "fleet-repair.yaml"
        self.repair_path.write_text(yaml.safe_dump(data, sort_keys=False))
        # Hand edits and independent reads: as the fleet's admin, not as Fanout.
        self.kubeconfig = admin_kubeconfig(self.fleet)
        self.build = folder / "buildah"

    # -- Airflow ------------------------------------------------------------------
    def dags_test(self, dag_id: str, conf: dict, repair: bool = False) -> subprocess.CompletedProcess[str]:
        return dags_test(self.home, self.repair_path if repair else self.path, dag_id, conf)

    def check(self, repair: bool = False) -> tuple[dict, dict]:
        """One consistency run; its classify report and its repair outcome (XCom)."""
        done = self.dags_test(CHECK, {}, repair)
        assert done.returncode == 0, done.stdout[-4000:]
        return self.db("xcom")

    def release(self, conf: dict) -> None:
        done = self.dags_test(RELEASE, conf)
        assert done.returncode == 0 and "state=success" in done.stdout, done.stdout[-4000:]

    def db(self, what: str, run_id: str = "") -> object:
        """Read (or, for `take`, delete) rows of the test's Airflow database in an Airflow process."""
        code = f"""
import json, sys
from sqlalchemy import select
from airflow.models.dagrun import DagRun
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
with create_session() as s:
    if {what!r} == "xcom":
        run = s.scalars(select(DagRun).where(DagRun.dag_id == {CHECK!r}).order_by(DagRun.id.desc())).first()
        rows = s.scalars(select(XComModel).where(XComModel.dag_id == {CHECK!r}, XComModel.run_id == run.run_id,
                         XComModel.key == "return_value", XComModel.task_id.in_(["classify", "repair"])))
        got = {{r.task_id: XComModel.deserialize_value(r) for r in rows}}
        out = [got.get("classify"), got.get("repair")]
    else:
        runs = s.scalars(select(DagRun).where(DagRun.dag_id == {RELEASE!r})).all()
        out = [{{"run_id": r.run_id, "state": str(r.state), "conf": r.conf, "run_type": str(r.run_type)}} for r in runs]
        if {what!r} == "take":
            for r in runs:
                if r.run_id == {run_id!r}:
                    s.delete(r)
print("JSON" + json.dumps(out, default=str))
"""
        done = subprocess.run(
            [sys.executable, "-c", code], env=airflow_env(self.home, self.path), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.rsplit("JSON", 1)[1])

    # -- the fleet's parts ----------------------------------------------------------
    def helm(self, region: str) -> Helm:
        return Helm(helm_binary(), self.kubeconfig, region, timeout_seconds=120)

    def apps(self, region: str) -> client.AppsV1Api:
        return client.AppsV1Api(config.new_client_from_config(config_file=self.kubeconfig, context=region))

    def traffic(self) -> AzureTrafficManager:
        tm = self.fleet.traffic_manager
        return AzureTrafficManager(
            StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url
        )

    def chart(self) -> str:
        return str(self.fleet.resolve(self.fleet.app.chart.path))

    def push_variant(self, version: str) -> str:
        """Build include/app with another VERSION and push it to the home registry; its digest."""
        store = ["--root", str(self.build / "storage"), "--runroot", str(self.build / "run")]
        context = self.build / f"ctx-{version}"
        context.mkdir(parents=True, exist_ok=True)
        (context / "index.html").write_bytes((REPO / "include/app/index.html").read_bytes())
        (context / "VERSION").write_text(version + "\n")
        containerfile = str(REPO / "include/app/Containerfile")
        build = ["buildah", *store, "bud", "-q", "--timestamp", "0", "-f", containerfile, "-t", version, str(context)]
        subprocess.run(build, check=True, capture_output=True)
        digestfile = self.build / f"{version}.digest"
        home = self.fleet.registry
        target = f"docker://{home.endpoint(home.home)}/{home.repository}:{version}"
        push = ["buildah", *store, "push", "-q", "--tls-verify=false", "--digestfile", str(digestfile)]
        subprocess.run([*push, version, target], check=True, capture_output=True)
        return digestfile.read_text().strip()


@pytest.fixture(scope="module")
def fleet(local_fleet, airflow_home, tmp_path_factory):
    return Fleet(local_fleet, airflow_home, tmp_path_factory.mktemp("consistency"))


@pytest.fixture(scope="module")
def released(fleet):
    """The first check (maybe before any release), then a release: (first report, desired digest)."""
    first, _ = fleet.check()
    if first["desired"] is None:
        fleet.release({"git_sha": new_commit(fleet.fleet, "consistency")})
    report, _ = fleet.check()
    return first, report["desired"]


@pytest.fixture
def mend(fleet, released):
    """Put every region back on the release after a test, whatever it broke."""
    yield
    restore(fleet, released[1]["digest"])


def restore(fleet: Fleet, digest: str) -> None:
    for region in fleet.fleet.region_names:
        plane = kube.Region(region, fleet.fleet.region(region).local.apiserver_port)
        if not kube.region_health(plane, fleet.state).apiserver_ready:
            kube.start_region(plane, fleet.state, progress=lambda _: None)
        helm = fleet.helm(region)
        current = helm.current(APP, NS)
        if current.status.startswith("pending-"):
            good = [h.revision for h in helm.history(APP, NS) if h.status in ("deployed", "superseded")]
            helm.rollback(APP, NS, good[-1], wait=False)
        undo_edit(fleet, region, digest)
        values = helm.values(APP, NS)
        if values["image"]["digest"] != digest or helm.current(APP, NS).status != "deployed":
            helm.upgrade_install(APP, fleet.chart(), NS, {**values, "image": {**values["image"], "digest": digest}})
    with fleet.traffic() as tm:
        for region in fleet.fleet.regions:
            tm.set_endpoint(region.endpoint.name, enabled=True, weight=region.endpoint.weight)


def edit_image(fleet: Fleet, region: str, digest: str) -> None:
    """What `kubectl set image` does: change the Deployment behind Helm's back."""
    apps = fleet.apps(region)
    image = apps.read_namespaced_deployment(APP, NS).spec.template.spec.containers[0].image
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{image.split('@')[0]}@{digest}"}]}}}
    }
    apps.patch_namespaced_deployment(APP, NS, patch)


def undo_edit(fleet: Fleet, region: str, digest: str) -> None:
    """Set the image back and drop the editor's field ownership: `helm rollback` applies
    server-side without --force-conflicts and would refuse that field otherwise."""
    apps = fleet.apps(region)
    dep = apps.read_namespaced_deployment(APP, NS)
    if not any(m.manager == "OpenAPI-Generator" for m in dep.metadata.managed_fields or []):
        return
    edit_image(fleet, region, digest)
    dep = apps.read_namespaced_deployment(APP, NS)
    keep = [apps.api_client.sanitize_for_serialization(m) for m in dep.metadata.managed_fields
            if m.manager != "OpenAPI-Generator"]  # fmt: skip
    apps.patch_namespaced_deployment(APP, NS, {"metadata": {"managedFields": keep}})


def kill_helm_mid_upgrade(fleet: Fleet, region: str) -> None:
    """`helm upgrade --wait` of a pod that can never be scheduled, killed once Helm has marked the
    release pending-upgrade: what a crashed CI job or OOM-killed Helm leaves behind."""
    helm = fleet.helm(region)
    values = helm.values(APP, NS)
    values["resources"] = {"requests": {"cpu": "500", "memory": "16Mi"}}
    path = fleet.build.parent / f"stuck-{region}.yaml"
    path.write_text(yaml.safe_dump(values))
    argv = [helm_binary(), "upgrade", APP, fleet.chart(), "-n", NS, "-f", str(path), "--wait", "--timeout", "120s",
            "--kubeconfig", fleet.kubeconfig, "--kube-context", region]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not helm.current(APP, NS).status.startswith("pending-"):
            assert time.monotonic() < deadline and proc.poll() is None, "helm never went pending"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()


def states(report: dict) -> dict[str, str]:
    return {region: r["state"] for region, r in report["regions"].items()}


# ------------------------------------------------------------------------------------


def test_no_release_then_every_region_in_sync(fleet, released):
    first, desired = released
    if first["desired"] is None:  # this module ran first in the session
        assert first["message"].startswith("no release recorded yet")
        assert set(states(first).values()) == {"no-release"}
    report, repair = fleet.check()
    assert report["desired"]["digest"] == desired["digest"]
    assert set(states(report).values()) == {"in-sync"}, report["message"]
    assert repair["action"] == "none"
    # The report names the commit each region runs (from its Deployment), which is the release's.
    assert len(desired["git_sha"]) == 40 and desired["source_ref"] == "main", desired
    assert {r["commit"] for r in report["regions"].values()} == {desired["git_sha"]}, report["regions"]


def test_stale_stuck_and_traffic_are_detected_then_repaired(fleet, released, mend):
    desired = released[1]
    old = fleet.push_variant("0.0.1-old")
    values = fleet.helm("eastus").values(APP, NS)
    # An old digest deployed by hand; its endpoint stays enabled (the release would have drained it).
    fleet.helm("eastus").upgrade_install(
        APP, fleet.chart(), NS, {**values, "image": {**values["image"], "digest": old}}
    )
    kill_helm_mid_upgrade(fleet, "northeurope")
    with fleet.traffic() as tm:
        tm.set_endpoint(fleet.fleet.region("westeurope").endpoint.name, enabled=True, weight=50)
    history = fleet.helm("northeurope").history(APP, NS)
    last_good = [h.revision for h in history if h.status in ("deployed", "superseded")][-1]
    runs_before = fleet.db("runs")

    report, repair = fleet.check()
    assert states(report) == {
        "eastus": "stale", "westus": "in-sync", "northeurope": "stuck", "westeurope": "traffic-mismatch",
    }  # fmt: skip
    assert report["regions"]["eastus"]["running"] == old
    assert set(report["regions"]["eastus"]["classes"]) == {"stale", "traffic-mismatch"}
    assert "pending-upgrade" in report["regions"]["northeurope"]["detail"]
    assert "weight 50" in report["regions"]["westeurope"]["detail"]
    # Report mode: says what it would do and changes nothing.
    assert repair["action"] == "report-only" and repair["conf"]["regions"] == ["eastus", "westeurope"]
    assert "next" in repair["skipped"]["northeurope"]
    assert fleet.db("runs") == runs_before
    assert fleet.helm("northeurope").current(APP, NS).status == "pending-upgrade"

    report, repair = fleet.check(repair=True)
    assert report["regions"]["eastus"]["since"] < report["checked_at"]  # kept from the first check
    assert repair["action"] == "triggered" and repair["rollback"] == [{"region": "northeurope", "revision": last_good}]
    # The repair itself changes no region: the release run it queued rolls the stuck one back.
    assert fleet.helm("northeurope").current(APP, NS).status == "pending-upgrade"
    conf = {
        "git_sha": desired["git_sha"],
        "image": desired["digest"],
        "regions": ["eastus", "northeurope", "westeurope"],
    }
    queued = [r for r in fleet.db("runs") if r["run_id"] == repair["run_id"]]
    assert queued and queued[0]["conf"] == conf and queued[0]["state"] == "queued", queued

    # A second check while that run is queued must not start another repair.
    _, again = fleet.check(repair=True)
    assert again["action"] == "waiting" and len(fleet.db("runs")) == len(runs_before) + 1

    fleet.db("take", repair["run_id"])  # the scheduler's part: run it
    fleet.release(conf)
    report, repair = fleet.check(repair=True)
    assert set(states(report).values()) == {"in-sync"}, report["message"]
    assert repair["action"] == "none"


def test_an_edited_deployment_is_drifted(fleet, released, mend):
    edit_image(fleet, "westus", fleet.push_variant("0.0.2-hotfix"))
    report, _ = fleet.check()
    assert states(report)["westus"] == "drifted", report["regions"]["westus"]
    assert report["regions"]["westus"]["helm"]["digest"] == released[1]["digest"]


def test_a_region_down_is_unreachable_and_hides_nothing(fleet, released, mend):
    region = fleet.fleet.region("westeurope")
    kube.stop_region(region.name, fleet.state)
    report, repair = fleet.check(repair=True)
    assert states(report) == {"eastus": "in-sync", "westus": "in-sync", "northeurope": "in-sync",
                              "westeurope": "unreachable"}  # fmt: skip
    assert "unreachable" in report["regions"]["westeurope"]["detail"]
    # Nothing can be deployed there: repair leaves it alone and triggers nothing.
    assert repair["action"] == "none" and "westeurope" in repair["skipped"]


def test_an_endpoint_disabled_by_hand_is_traffic_mismatch(fleet, released, mend):
    with fleet.traffic() as tm:
        tm.set_endpoint(fleet.fleet.region("eastus").endpoint.name, enabled=False)
    report, _ = fleet.check()
    assert states(report)["eastus"] == "traffic-mismatch"
    assert "disabled" in report["regions"]["eastus"]["detail"]


def test_repair_undoes_an_edited_deployment(fleet, released, mend):
    edit_image(fleet, "westus", fleet.push_variant("0.0.2-hotfix"))
    report, repair = fleet.check(repair=True)
    assert states(report)["westus"] == "drifted" and repair["conf"]["regions"] == ["westus"]
    fleet.db("take", repair["run_id"])
    done = fleet.dags_test(RELEASE, repair["conf"])
    assert done.returncode == 0, done.stdout[-4000:]
    report, _ = fleet.check()
    assert states(report)["westus"] == "in-sync", report["regions"]["westus"]
