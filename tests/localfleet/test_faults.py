"""Every fault knob of the local fleet does what it says, on the real fleet, and clears."""

import json
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config

from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential, TrafficManagerError
from localfleet import cli, faults, kube, procs
from localfleet.kube_files import admin_kubeconfig_beside
from localfleet.metrics import prometheus
from localfleet.testing import wait_until

pytestmark = pytest.mark.localfleet


def apps(lf, region):
    """As the fleet's admin: these tests break and inspect the fleet, they are not Fanout."""
    access = lf.fleet.region(region).cluster.kubeconfig
    admin = admin_kubeconfig_beside(lf.fleet.resolve(access.path))
    return client.AppsV1Api(config.new_client_from_config(str(admin), context=access.context))


def tm_client(fleet, retries=3):
    tm = fleet.traffic_manager
    return AzureTrafficManager(
        StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile,
        base_url=tm.base_url, retry_total=retries, retry_backoff_factor=0.1,
    )  # fmt: skip


def deployment(name, image="registry.local/app@sha256:" + "a" * 64):
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": image}]}},
        },
    }


def rolled_out(api, name):
    d = api.read_namespaced_deployment(name, "default")
    s = d.status
    return (
        (s.observed_generation or 0) >= d.metadata.generation and s.updated_replicas == 1 and not s.unavailable_replicas
    )


@pytest.fixture(autouse=True)
def clear_faults(local_fleet):
    yield
    cli.clear_all(local_fleet.fleet, local_fleet.state)


def test_region_down_stops_its_apiserver_and_comes_back(local_fleet):
    fleet, state = local_fleet.fleet, local_fleet.state
    region = next(r for r in cli._regions(fleet) if r.name == "westeurope")
    cli.apply_fault(fleet, state, "region-down", "westeurope", None, clear=False)
    assert not kube.region_health(region, state).apiserver_ready
    assert faults.read_faults(state)["region_down"] == ["westeurope"]
    other = next(r for r in cli._regions(fleet) if r.name == "eastus")
    assert kube.region_health(other, state).ok
    cli.apply_fault(fleet, state, "region-down", "westeurope", None, clear=True)
    assert kube.region_health(region, state).ok
    assert "region_down" not in faults.read_faults(state)


def test_rollout_unhealthy_keeps_new_pods_unready_until_cleared(local_fleet):
    fleet, state = local_fleet.fleet, local_fleet.state
    api = apps(local_fleet, "northeurope")
    api.create_namespaced_deployment("default", deployment("knob"))
    try:
        wait_until(lambda: rolled_out(api, "knob"))
        cli.apply_fault(fleet, state, "rollout-unhealthy", "northeurope", None, clear=False)
        api.patch_namespaced_deployment("knob", "default", deployment("knob", image="r/app@sha256:" + "b" * 64))
        time.sleep(8)
        assert not rolled_out(api, "knob"), "a new pod became Ready while the fault was on"
        assert api.read_namespaced_deployment("knob", "default").status.available_replicas == 1  # old pod serves
        cli.apply_fault(fleet, state, "rollout-unhealthy", "northeurope", None, clear=True)
        wait_until(lambda: rolled_out(api, "knob"), timeout=30)
    finally:
        api.delete_namespaced_deployment("knob", "default")


def test_edge_unhealthy_fails_healthz_and_traffic_manager_sees_it(local_fleet):
    fleet, state = local_fleet.fleet, local_fleet.state
    url = fleet.region("westus").edge_url + "/healthz"
    cli.apply_fault(fleet, state, "edge-unhealthy", "westus", None, clear=False)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=5)
    assert err.value.code == 503 and json.loads(err.value.read())["reason"] == "fault injected"

    def degraded():
        with tm_client(fleet) as tm:
            return tm.endpoints()["westus"].monitor_status == "Degraded"

    wait_until(degraded, timeout=30)
    cli.apply_fault(fleet, state, "edge-unhealthy", "westus", None, clear=True)
    # Cleared, the edge answers for the cluster again: 200 if another test released the
    # app on this shared fleet, else 503 for a real reason — never the injected one.
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    except urllib.error.HTTPError as err:
        assert json.loads(err.read())["reason"] != "fault injected"


def test_tm_errors_answer_the_next_n_calls(local_fleet):
    fleet, state = local_fleet.fleet, local_fleet.state
    cli.apply_fault(fleet, state, "tm-errors", None, "500x50", clear=False)
    with tm_client(fleet, retries=2) as tm, pytest.raises(TrafficManagerError, match="500"):
        tm.endpoints()
    left = faults.read_faults(state)["tm_errors"]["remaining"]
    assert 40 <= left < 50
    cli.apply_fault(fleet, state, "tm-errors", None, "429x2", clear=False)
    with tm_client(fleet) as tm:
        assert set(tm.endpoints()) == set(fleet.region_names)  # 429 + Retry-After is retried through
    assert faults.read_faults(state)["tm_errors"]["remaining"] == 0


def test_replica_knobs_and_clear_all(local_fleet):
    fleet, state = local_fleet.fleet, local_fleet.state
    cli.apply_fault(fleet, state, "replica-lag", "westus", "30", clear=False)
    cli.apply_fault(fleet, state, "replica-stuck", "northeurope", None, clear=False)
    cli.apply_fault(fleet, state, "region-down", "eastus", None, clear=False)
    assert faults.read_faults(state) == {
        "replica_lag": {"westus": 30.0},
        "replica_stuck": ["northeurope"],
        "region_down": ["eastus"],
    }
    cli.clear_all(fleet, state)
    assert faults.read_faults(state) == {}
    assert all(kube.region_health(r, state).ok for r in cli._regions(fleet))


def test_registry_auth_knob_shows_in_status_and_clears(local_fleet):
    fleet, state = local_fleet.fleet, local_fleet.state
    with pytest.raises(ValueError, match="401 or 403"):
        cli.apply_fault(fleet, state, "registry-auth", "westus", "500", clear=False)
    cli.apply_fault(fleet, state, "registry-auth", "westus", "403", clear=False)
    cli.apply_fault(fleet, state, "registry-auth", "northeurope", "401", clear=False)
    assert faults.read_faults(state) == {"registry_auth": {"westus": 403, "northeurope": 401}}
    rows = {row["region"]: row for row in cli.status_rows(fleet, state)}
    assert (rows["westus"]["registry"], rows["westus"]["faults"]) == ("HTTP 403", "registry_auth")
    assert rows["northeurope"]["registry"] == "HTTP 401"
    assert rows["eastus"]["registry"] == "up"
    cli.apply_fault(fleet, state, "registry-auth", "westus", None, clear=True)
    assert faults.read_faults(state) == {"registry_auth": {"northeurope": 401}}
    cli.clear_all(fleet, state)
    assert {row["registry"] for row in cli.status_rows(fleet, state)} == {"up"}


def test_prometheus_scrapes_every_edge_and_bad_build_shows_in_status(local_fleet, metered_fleet):
    fleet, state = metered_fleet, local_fleet.state
    url = prometheus.url_of(fleet)
    assert procs.pid(prometheus.PROC, state) is not None and prometheus.ready(url)
    wait_until(lambda: {row["metrics"] for row in cli.status_rows(fleet, state)} == {"up"}, timeout=15)
    scraped = prometheus.query(url, 'up{job="fanout-edges"} == 1')
    assert len(scraped) == len(fleet.regions)
    cli.bad_build(fleet, state, "westus", "error-rate", "0.25", clear=False)
    cli.bad_build(fleet, state, "westus", "latency", "200", clear=False)
    rows = {row["region"]: row for row in cli.status_rows(fleet, state)}
    assert rows["westus"]["faults"] == "bad_build(0.25 500s +200ms)" and rows["eastus"]["faults"] == "-"
    cli.clear_all(fleet, state)
    assert faults.read_faults(state) == {}
