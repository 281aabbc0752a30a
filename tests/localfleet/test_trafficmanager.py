"""The Traffic Manager stand-in, driven only through the real Azure SDK client and the production
adapter (raw urllib only where the SDK cannot misbehave on purpose: no bearer, no api-version).

Everything runs in-process on free loopback ports; no binaries needed, so these run in the quick suite.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.trafficmanager import TrafficManagerManagementClient
from azure.mgmt.trafficmanager.models import Endpoint, EndpointProperties

from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential, TrafficManagerError
from fanout.fleet import Fleet, parse_fleet
from localfleet.testing import wait_until
from localfleet.trafficmanager import clear_errors, inject_errors, serve
from tests.receiver import LoopbackHttp

REPO = Path(__file__).resolve().parents[2]
SUB, RG, PROFILE = "00000000-0000-0000-0000-000000000000", "fanout-local", "hello"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeEdge:
    """A region's edge: answers GET /healthz with `status` after `delay`, changeable while running."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.http = LoopbackHttp(self._answer)
        self.url = f"http://127.0.0.1:{self.http.port}"

    def _answer(self, method: str, path: str, body: bytes) -> int:
        time.sleep(self.delay)
        return self.status if path == "/healthz" else 404

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def edges() -> Iterator[list[FakeEdge]]:
    made = [FakeEdge() for _ in range(4)]
    yield made
    for edge in made:
        edge.close()


@pytest.fixture
def fleet(edges: list[FakeEdge]) -> Fleet:
    path = REPO / "include/fleets/local.yaml"
    data = yaml.safe_load(path.read_text())
    for region, edge in zip(data["regions"], edges, strict=True):
        region["edge_url"] = edge.url
    data["traffic_manager"].pop("dns_port")  # these tests need no name server (test_dns does)
    return parse_fleet(data, path)


class StandIn:
    def __init__(self, fleet: Fleet, state_dir: Path):
        self.fleet, self.state_dir = fleet, state_dir
        self.server, _ = serve(fleet, state_dir, port=0, probe_interval=0.2)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        self.stop()
        self.__init__(self.fleet, self.state_dir)  # type: ignore[misc]

    def adapter(self, **kwargs: Any) -> AzureTrafficManager:
        kwargs.setdefault("retry_backoff_factor", 0.01)
        return AzureTrafficManager(StaticTokenCredential(), SUB, RG, PROFILE, base_url=self.base_url, **kwargs)

    def client(self) -> TrafficManagerManagementClient:
        return TrafficManagerManagementClient(StaticTokenCredential(), SUB, base_url=self.base_url)


@pytest.fixture
def standin(fleet: Fleet, tmp_path: Path) -> Iterator[StandIn]:
    s = StandIn(fleet, tmp_path / "state")
    yield s
    s.stop()


HTTP = {"enforce_https": False}  # the SDK refuses bearer auth over http without it


def test_profile_get_through_sdk(standin: StandIn) -> None:
    p = standin.client().profiles.get(RG, PROFILE, **HTTP)
    assert p.name == PROFILE and p.type == "Microsoft.Network/trafficManagerProfiles"
    assert p.id == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/trafficManagerProfiles/hello"
    assert p.properties.traffic_routing_method == "Weighted"
    assert p.properties.profile_status == "Enabled"
    assert p.properties.dns_config.ttl == standin.fleet.traffic_manager.dns_ttl_seconds
    assert p.properties.monitor_config.path == "/healthz"
    assert [e.name for e in p.properties.endpoints] == ["eastus", "westus", "northeurope", "westeurope"]
    state = standin.adapter().profile_status()
    assert (state.name, state.status, state.routing_method, state.dns_ttl) == (PROFILE, "Enabled", "Weighted", 10)


def test_endpoint_get_is_case_insensitive_like_azure(standin: StandIn) -> None:
    e = standin.client().endpoints.get(RG.upper(), PROFILE, "externalendpoints", "EastUS", **HTTP)
    assert e.name == "eastus"
    assert e.type == "Microsoft.Network/trafficManagerProfiles/externalEndpoints"
    assert e.id.endswith("/trafficManagerProfiles/hello/externalEndpoints/eastus")
    assert (e.properties.endpoint_status, e.properties.weight, e.properties.target) == ("Enabled", 100, "127.0.0.1")


def test_patch_disables_and_enables_with_merge(standin: StandIn) -> None:
    tm = standin.adapter()
    drained = tm.set_endpoint("westus", enabled=False)
    assert (drained.enabled, drained.weight, drained.monitor_status) == (False, 100, "Disabled")
    restored = tm.set_endpoint("westus", enabled=True, weight=250)
    assert (restored.enabled, restored.weight) == (True, 250)
    # PATCH merges: the target set at seeding is still there.
    e = standin.client().endpoints.get(RG, PROFILE, "ExternalEndpoints", "westus", **HTTP)
    assert (e.properties.target, e.properties.weight, e.properties.endpoint_status) == ("127.0.0.1", 250, "Enabled")
    assert tm.endpoints()["westus"].weight == 250


def test_put_creates_then_replaces(standin: StandIn) -> None:
    client = standin.client()
    body = Endpoint(properties=EndpointProperties(target="edge.example.com", endpoint_status="Enabled", weight=7))
    created = client.endpoints.create_or_update(RG, PROFILE, "ExternalEndpoints", "spare", body, **HTTP)
    assert (created.name, created.properties.weight) == ("spare", 7)
    body = Endpoint(properties=EndpointProperties(target="edge2.example.com", endpoint_status="Disabled", weight=9))
    replaced = client.endpoints.create_or_update(RG, PROFILE, "ExternalEndpoints", "spare", body, **HTTP)
    assert (replaced.properties.target, replaced.properties.weight) == ("edge2.example.com", 9)
    spare = standin.adapter().endpoints()["spare"]
    assert (spare.enabled, spare.monitor_status) == (False, "Disabled")
    enabled = client.endpoints.update(
        RG, PROFILE, "ExternalEndpoints", "spare", {"properties": {"endpointStatus": "Enabled"}}, **HTTP
    )
    assert enabled.properties.target == "edge2.example.com"
    # Not loopback, so never probed from here: it can only be Degraded.
    wait_until(lambda: standin.adapter().endpoints()["spare"].monitor_status == "Degraded", what="spare Degraded")
    assert client.endpoints.delete(RG, PROFILE, "ExternalEndpoints", "spare", **HTTP) is not None
    assert "spare" not in standin.adapter().endpoints()


@pytest.mark.parametrize("weight", [0, 1001])
def test_weight_out_of_range_is_400_naming_weight(standin: StandIn, weight: int) -> None:
    client = standin.client()
    for call in (client.endpoints.update, client.endpoints.create_or_update):
        with pytest.raises(HttpResponseError) as info:
            body = {"properties": {"target": "127.0.0.1", "weight": weight}}
            call(RG, PROFILE, "ExternalEndpoints", "eastus", body, **HTTP)
        assert info.value.status_code == 400
        assert info.value.error.code == "BadRequest"
        assert "weight" in info.value.error.message
    assert standin.adapter().endpoints()["eastus"].weight == 100


def test_unknown_endpoint_and_profile_are_404(standin: StandIn) -> None:
    client = standin.client()
    with pytest.raises(ResourceNotFoundError) as info:
        client.endpoints.get(RG, PROFILE, "ExternalEndpoints", "mars", **HTTP)
    assert info.value.error.code == "NotFound"
    with pytest.raises(ResourceNotFoundError) as info:
        client.profiles.get(RG, "nope", **HTTP)
    assert info.value.error.code == "ResourceNotFound"
    with pytest.raises(TrafficManagerError) as err:
        standin.adapter().set_endpoint("mars", enabled=False)
    assert err.value.status_code == 404
    assert "'hello'" in str(err.value) and "'mars'" in str(err.value) and "NotFound" in str(err.value)


def _raw(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
    try:
        with NO_PROXY.open(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.load(e)


def test_bearer_and_api_version_are_required(standin: StandIn) -> None:
    path = (
        f"{standin.base_url}/subscriptions/{SUB}/resourceGroups/{RG}"
        f"/providers/Microsoft.Network/trafficmanagerprofiles/{PROFILE}"
    )
    status, headers, body = _raw(path + "?api-version=2026-09-01", {})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer ")
    assert body["error"]["code"] == "AuthenticationFailed"
    status, _, body = _raw(path + "?api-version=2026-09-01", {"Authorization": "Bearer "})
    assert status == 401
    status, _, body = _raw(path, {"Authorization": "Bearer x"})
    assert (status, body["error"]["code"]) == (400, "MissingApiVersionParameter")
    status, _, body = _raw(path + "?api-version=1999-01-01", {"Authorization": "Bearer x"})
    assert (status, body["error"]["code"]) == (400, "NoRegisteredProviderFound")
    status, _, body = _raw(path + "?api-version=2026-09-01", {"Authorization": "Bearer x"})
    assert status == 200 and body["properties"]["trafficRoutingMethod"] == "Weighted"
    status, _, body = _raw(f"{standin.base_url}/_fanout/state", {})
    assert status == 200 and body["profile"]["name"] == PROFILE and body["tm_errors"] == {}


def test_state_survives_restart(standin: StandIn) -> None:
    standin.adapter().set_endpoint("northeurope", enabled=False, weight=42)
    standin.restart()
    after = standin.adapter().endpoints()["northeurope"]
    assert (after.enabled, after.weight) == (False, 42)


def test_monitor_status_follows_the_edge(standin: StandIn, edges: list[FakeEdge]) -> None:
    tm = standin.adapter()

    def status(name: str) -> str | None:
        return tm.endpoints()[name].monitor_status

    wait_until(lambda: status("eastus") == "Online", what="eastus Online")
    assert tm.profile_status().monitor_status == "Online"
    edges[0].status = 503
    wait_until(lambda: status("eastus") == "Degraded", what="eastus Degraded")
    tm.set_endpoint("eastus", enabled=False)
    assert status("eastus") == "Disabled"
    for edge in edges:
        edge.status = 500
    wait_until(lambda: tm.profile_status().monitor_status == "Degraded", what="profile Degraded")
    edges[0].status = 200
    tm.set_endpoint("eastus", enabled=True)
    wait_until(lambda: status("eastus") == "Online", what="eastus Online again")


def test_checking_endpoint_until_the_first_probe(fleet: Fleet, edges: list[FakeEdge], tmp_path: Path) -> None:
    for edge in edges:
        edge.delay = 0.5  # the first probe round takes ~2 s: long enough to look before it ends
    s = StandIn(fleet, tmp_path / "slow")
    try:
        tm = s.adapter()
        assert {e.monitor_status for e in tm.endpoints().values()} == {"CheckingEndpoint"}
        assert tm.profile_status().monitor_status == "CheckingEndpoints"
        wait_until(lambda: tm.profile_status().monitor_status == "Online", what="profile Online")
    finally:
        s.stop()


def test_injected_429_is_retried_by_the_sdk(standin: StandIn) -> None:
    inject_errors(standin.state_dir, 429, 2)
    started = time.monotonic()
    assert standin.adapter().set_endpoint("westeurope", enabled=True, weight=300).weight == 300
    assert time.monotonic() - started >= 1.5  # two Retry-After: 1 waits were honoured
    faults = json.loads((standin.state_dir / "faults.json").read_text())
    assert faults["tm_errors"]["remaining"] == 0


def test_injected_500s_end_in_a_clear_error(standin: StandIn) -> None:
    (standin.state_dir / "faults.json").write_text(json.dumps({"region_down": ["westus"]}))
    inject_errors(standin.state_dir, 500, 100)
    with pytest.raises(TrafficManagerError) as err:
        standin.adapter(retry_total=2).set_endpoint("westus", enabled=False)
    message = str(err.value)
    assert err.value.status_code == 500 and "'hello'" in message and "'westus'" in message and "500" in message
    assert "fanout-local-fake-token" not in message
    clear_errors(standin.state_dir)
    faults = json.loads((standin.state_dir / "faults.json").read_text())
    assert faults == {"region_down": ["westus"]}  # other fault knobs' keys are left alone
    assert standin.adapter().endpoints()["westus"].enabled is True


def test_a_nested_endpoint_must_target_a_profile_of_the_stand_in(standin: StandIn) -> None:
    from azure.core.exceptions import HttpResponseError

    endpoints = standin.client().endpoints
    for props in ({"minChildEndpoints": 1}, {"targetResourceId": f"/subscriptions/{SUB}/resourceGroups/{RG}/x"}):
        with pytest.raises(HttpResponseError) as err:
            endpoints.create_or_update(RG, PROFILE, "NestedEndpoints", "child", {"properties": props}, **HTTP)
        assert err.value.status_code == 400 and "properties.targetResourceId" in str(err.value)
    assert "child" not in standin.adapter().endpoints()


@pytest.mark.parametrize("status", [429, 500])
def test_a_storm_as_long_as_the_retry_budget_is_retried_through(standin: StandIn, status: int) -> None:
    """retry_total is the whole budget: azure-core's own cap of 3 error statuses (retry_status) made
    four throttled answers in a row fail a drain (`make faults`, tm-429-500)."""
    inject_errors(standin.state_dir, status, 5)
    assert standin.adapter().set_endpoint("westeurope", enabled=True, weight=300).weight == 300
    assert json.loads((standin.state_dir / "faults.json").read_text())["tm_errors"]["remaining"] == 0
