"""The stand-in's name server over the wire (dnspython queries from each location's source
address), per routing method, and the simulated users following its answers with their TTL.

In-process on free loopback ports: edges are small HTTP servers on 127.0.1.x that answer as a
region's edge does (no clusters needed), so these run in the quick suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential
from fanout.airflow.dns_waits import EdgeQuietTrigger
from fanout.airflow.triggers import MonitorOnlineTrigger
from fanout.fleet import Fleet, parse_fleet
from fanout.records import FleetSnapshot
from localfleet import procs
from localfleet.edge import Edge as LocalEdge
from localfleet.edge import make_server
from localfleet.faults import update_faults
from localfleet.testing import wait_until
from localfleet.traffic.dns import fqdn, source_address
from localfleet.traffic.promise import read_changes, summarize
from localfleet.traffic.users import Population, read
from localfleet.trafficmanager import serve

REPO = Path(__file__).resolve().parents[2]
REGIONS = ("eastus", "westus", "northeurope", "westeurope")
DIGEST = "sha256:" + "a" * 64


class Cluster:
    """A region's cluster as the edge reads it: one Deployment on the release digest, ready."""

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        image = f"127.0.0.1:5101/fanout/hello@{DIGEST}"
        return {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
                "status": {"readyReplicas": 1}}  # fmt: skip


class Edge:
    """The real localfleet edge of a region on its own loopback address, over a faked cluster."""

    def __init__(self, region: str, host: str, port: int, state: Path):
        self.edge = LocalEdge(region, "hello", "hello", Cluster(), state)
        self.url = f"http://{host}:{port}"
        self.server = make_server(self.edge, host, port)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def hits(self) -> int:
        return self.edge.user_requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fleet(tmp_path: Path, port: int, method: str, nested: Any = None, **endpoint_extra: dict[str, Any]) -> Fleet:
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")  # the copy lives in tmp
    for n, region in enumerate(data["regions"], start=1):
        region["edge_url"] = f"http://127.0.1.{n}:{port}"
        region["endpoint"].update(endpoint_extra.get(region["name"], {}))
    tm = data["traffic_manager"]
    tm.update(routing_method=method, dns_port=procs.free_port(), dns_ttl_seconds=1)
    if nested:
        tm["nested"] = nested
    tm["base_url"] = f"http://127.0.0.1:{procs.free_port()}"
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_fleet(data, path)


@pytest.fixture
def edges(tmp_path: Path) -> Iterator[tuple[int, dict[str, Edge]]]:
    port = procs.free_port()
    made = {r: Edge(r, f"127.0.1.{n}", port, tmp_path / "state") for n, r in enumerate(REGIONS, start=1)}
    yield port, made
    for edge in made.values():
        edge.close()


class Profile:
    def __init__(self, fleet: Fleet, state: Path):
        self.fleet = fleet
        tm = fleet.traffic_manager
        self.server, _ = serve(fleet, state, port=int(tm.base_url.rsplit(":", 1)[1]), probe_interval=0.2)
        # As the release's hook builds it: a region held in child profiles is read and drained there.
        places = {r.endpoint.name: fleet.endpoint_profiles(r.name) for r in fleet.regions}
        self.tm = AzureTrafficManager(
            StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url,
            endpoint_profiles=places,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while any(e.monitor_status != "Online" for e in self.tm.endpoints().values() if e.enabled):
            assert time.monotonic() < deadline, "endpoints never came Online"
            time.sleep(0.1)

    def ask(self, location: str | None = None) -> dns.message.Message:
        tm = self.fleet.traffic_manager
        source = source_address(self.fleet, location, 0) if location else "127.0.0.1"
        query = dns.message.make_query(fqdn(tm.profile), "A")
        return dns.query.udp(query, "127.0.0.1", port=tm.dns_port, timeout=2, source=source)

    def region(self, location: str | None = None) -> str | None:
        reply = self.ask(location)
        if not reply.answer:
            return None
        address = reply.answer[0][0].address
        return REGIONS[int(address.rsplit(".", 1)[1]) - 1]

    def close(self) -> None:
        self.tm.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def profile(tmp_path: Path, edges, request) -> Iterator[Profile]:
    method, extra, *nested = request.param
    made = Profile(_fleet(tmp_path, edges[0], method, *nested, **extra), tmp_path / "state")
    yield made
    made.close()


WEIGHTED = ("Weighted", {})
PRIORITY = ("Priority", {r: {"priority": n} for n, r in enumerate(REGIONS, start=1)})
GEO = ("Geographic", {"eastus": {"geo_mapping": ["GEO-NA"]}, "westus": {"geo_mapping": ["WORLD"]},
                      "northeurope": {"geo_mapping": ["DE"]}, "westeurope": {"geo_mapping": ["GEO-EU"]}})  # fmt: skip


@pytest.mark.parametrize("profile", [WEIGHTED], indirect=True)
def test_weighted_answers_enabled_endpoints_with_the_profile_ttl_and_nxdomain_when_all_are_disabled(profile):
    reply = profile.ask()
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0].ttl == 1
    assert {profile.region() for _ in range(60)} == set(REGIONS)
    for region in ("eastus", "westus", "northeurope"):
        profile.tm.set_endpoint(region, enabled=False)
    assert {profile.region() for _ in range(20)} == {"westeurope"}
    profile.tm.set_endpoint("westeurope", enabled=False)
    assert profile.ask().rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("profile", [PRIORITY], indirect=True)
def test_priority_answers_the_first_endpoint_and_the_next_when_it_is_drained(profile):
    assert profile.region() == "eastus"
    profile.tm.set_endpoint("eastus", enabled=False)
    assert profile.region() == "westus"


@pytest.mark.parametrize("profile", [("Performance", {})], indirect=True)
def test_performance_answers_the_closest_region_from_where_the_query_comes_from(profile):
    assert profile.region("us-east") == "eastus"
    assert profile.region("europe") == "westeurope"
    profile.tm.set_endpoint("westeurope", enabled=False)
    assert profile.region("europe") == "northeurope"


@pytest.mark.parametrize("profile", [GEO], indirect=True)
def test_geographic_answers_the_narrowest_mapping_and_does_not_fail_over(profile):
    assert profile.region("europe") == "northeurope"  # DE is narrower than GEO-EU
    assert profile.region("us-east") == "eastus"
    assert profile.region() == "westus"  # anywhere else: WORLD
    profile.tm.set_endpoint("northeurope", enabled=False)
    reply = profile.ask("europe")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer  # NODATA: no failover inside the profile


NESTED = ("Geographic", {}, [
    {"endpoint": "america", "profile": "hello-america", "regions": ["eastus", "westus"], "geo_mapping": ["GEO-NA"]},
    {"endpoint": "europe", "profile": "hello-europe", "regions": ["westeurope", "northeurope"],
     "geo_mapping": ["GEO-EU", "WORLD"]},
])  # fmt: skip


@pytest.mark.parametrize("profile", [NESTED], indirect=True)
def test_geographic_answers_through_a_nested_profile_and_its_fallback_until_min_child_endpoints(profile, tmp_path):
    from fanout.routing import nested_mismatches

    tm, fleet = profile.tm, profile.fleet
    parent, children = tm.profile_tree()  # the child profiles over their own ARM paths
    assert nested_mismatches(fleet, parent.endpoints, children) == []
    assert children["hello-america"].routing_method == "Priority"
    assert {n: e.priority for n, e in children["hello-america"].endpoints.items()} == {"eastus": 1, "westus": 2}
    assert "eastus" not in parent.endpoints and parent.endpoints["america"].type == "NestedEndpoints"
    assert profile.region("us-east") == "eastus" and profile.region("europe") == "westeurope"
    assert profile.region() == "westeurope"  # WORLD is mapped to the europe nested endpoint

    # The drain reaches the child profile; the child's Priority routing answers the fallback.
    assert tm.set_endpoint("eastus", enabled=False).enabled is False
    reply = profile.ask("us-east")
    assert profile.region("us-east") == "westus" and reply.answer[0].ttl == 1  # one record, the parent's TTL
    assert tm.endpoints()["america"].monitor_status == "Online"  # 1 of min 1 child endpoints left
    tm.set_endpoint("westus", enabled=False)
    wait_until(lambda: tm.endpoints()["america"].monitor_status == "Degraded", what="america Degraded")
    reply = profile.ask("us-east")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer  # NODATA: the parent does not fail over
    assert profile.region("europe") == "westeurope"

    # minChildEndpoints through the NestedEndpoints ARM path: 2 of the europe child's 2 must be Online.
    tm._call("setting minChildEndpoints", "europe", tm._client.endpoints.update, tm.resource_group, tm.profile,
             "NestedEndpoints", "europe", {"properties": {"minChildEndpoints": 2}})  # fmt: skip
    parent, children = tm.profile_tree()
    assert nested_mismatches(fleet, parent.endpoints, children) == [
        "traffic_manager.nested[1].min_child_endpoints: the file says 1, 'europe' has 2"
    ]
    tm.set_endpoint("northeurope", enabled=False)
    assert not profile.ask("europe").answer  # the child still has westeurope, but fewer than 2
    changes = read_changes(profile.server.state_dir)
    assert {"endpoint": "eastus", "status": "Disabled", "profile": "hello-america"}.items() <= changes[0].items()


@pytest.mark.parametrize("profile", [WEIGHTED], indirect=True)
def test_users_follow_dns_and_stop_reaching_a_drained_region_after_the_ttl(profile, edges, tmp_path):
    users = Population(profile.fleet, tmp_path / "state", users=6, rate=10, duration=8)
    runner = threading.Thread(target=users.run)
    since = time.time()
    runner.start()
    time.sleep(2)
    profile.tm.set_endpoint("eastus", enabled=False)
    drained_at = time.time()
    time.sleep(1 + 0.5)  # the TTL, and a little
    hits = edges[1]["eastus"].hits
    time.sleep(2)
    assert edges[1]["eastus"].hits == hits, "eastus kept getting user requests after drain + TTL"
    profile.tm.set_endpoint("eastus", enabled=True)
    runner.join(15)
    rows = read(tmp_path / "state")
    assert rows and all(r["status"] == 200 for r in rows)
    assert any(r["region"] == "eastus" and r["t"] < drained_at for r in rows)
    names = {r: r for r in REGIONS}
    summary = summarize(
        rows, read_changes(tmp_path / "state"), names, ttl=1, digest=DIGEST, since=since, until=time.time()
    )
    assert summary.kept, summary.lines()


def _users(profile: Profile, tmp_path: Path, seconds: float) -> threading.Thread:
    users = Population(profile.fleet, tmp_path / "state", users=6, rate=10, duration=seconds)
    runner = threading.Thread(target=users.run)
    runner.start()
    time.sleep(1.5)
    return runner


def _quiet(edge: Edge, timeout: float) -> EdgeQuietTrigger:
    return EdgeQuietTrigger(
        url=edge.url + "/_fanout/requests", quiet_seconds=1.5, timeout_seconds=timeout, poll_seconds=0.3
    )


# Priority: every user holds the same answer (eastus), so whose cache is stuck is not left to chance.
@pytest.mark.parametrize("profile", [PRIORITY], indirect=True)
def test_the_edge_confirms_users_gone_after_drain_and_ttl(profile, edges, tmp_path):
    runner = _users(profile, tmp_path, 8)
    assert edges[1]["eastus"].hits > 0
    profile.tm.set_endpoint("eastus", enabled=False)
    event = _quiet(edges[1]["eastus"], timeout=6).poll_inline(8)
    runner.join(15)
    assert event is not None and event["status"] == "ok", event
    assert event["waited"] < 1 + 1.5 + 2  # the TTL, the quiet time, and polling


@pytest.mark.parametrize("profile", [PRIORITY], indirect=True)
def test_a_stuck_resolver_keeps_users_coming_and_the_confirmation_times_out_saying_so(profile, edges, tmp_path):
    runner = _users(profile, tmp_path, 8)
    update_faults(tmp_path / "state", resolver_stuck=True)
    profile.tm.set_endpoint("eastus", enabled=False)
    event = _quiet(edges[1]["eastus"], timeout=4).poll_inline(6)
    runner.join(15)
    assert event is not None and event["status"] == "timeout"
    assert "last user request" in event["detail"]


@pytest.mark.parametrize("profile", [WEIGHTED], indirect=True)
def test_the_online_wait_ends_when_the_monitor_sees_the_restored_endpoint(profile, edges, tmp_path):
    update_faults(tmp_path / "state", edge_unhealthy=["eastus"])  # restored, but not healthy yet
    profile.tm.set_endpoint("eastus", enabled=False)
    profile.tm.set_endpoint("eastus", enabled=True)
    threading.Timer(1.5, lambda: update_faults(tmp_path / "state", edge_unhealthy=None)).start()
    snapshot = FleetSnapshot.of_file(profile.fleet.source_path)
    trigger = MonitorOnlineTrigger(fleet=snapshot.to_xcom(), region="eastus", timeout_seconds=10, poll_seconds=0.2)
    event = trigger.poll_inline(10)
    assert event is not None and event["status"] == "ok" and "Online" in event["detail"]
    assert event["waited"] >= 1.5


def test_a_warm_standby_starts_disabled_unless_priority_routing_makes_it_a_secondary():
    from localfleet.tm_store import seed_state

    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["regions"][3]["standby"] = "warm"
    weighted = parse_fleet(data)
    assert seed_state(weighted)["endpoints"]["westeurope"]["properties"]["endpointStatus"] == "Disabled"
    data["traffic_manager"]["routing_method"] = "Priority"
    for n, region in enumerate(data["regions"], start=1):
        region["endpoint"]["priority"] = n
    assert seed_state(parse_fleet(data))["endpoints"]["westeurope"]["properties"]["endpointStatus"] == "Enabled"
