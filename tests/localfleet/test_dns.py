"""The stand-in's name server over the wire (dnspython queries from each location's source
address), per routing method, and the simulated users following its answers with their TTL.

In-process on free loopback ports: edges are small HTTP servers on 127.0.1.x that answer as a
region's edge does (no clusters needed), so these run in the quick suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential
from fanout.fleet import Fleet, parse_fleet
from localfleet import procs
from localfleet.traffic.dns import fqdn, source_address
from localfleet.traffic.promise import read_changes, summarize
from localfleet.traffic.users import Population, read
from localfleet.trafficmanager import serve

REPO = Path(__file__).resolve().parents[2]
REGIONS = ("eastus", "westus", "northeurope", "westeurope")
DIGEST = "sha256:" + "a" * 64


class Edge:
    """A region's edge on its own loopback address: /healthz, and / as a user request."""

    def __init__(self, region: str, host: str, port: int):
        self.region, self.hits = region, 0
        edge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/":
                    edge.hits += 1
                body = f'{{"region": "{edge.region}", "digest": "{DIGEST}"}}'.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fleet(tmp_path: Path, port: int, method: str, **endpoint_extra: dict[str, Any]) -> Fleet:
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    for n, region in enumerate(data["regions"], start=1):
        region["edge_url"] = f"http://127.0.1.{n}:{port}"
        region["endpoint"].update(endpoint_extra.get(region["name"], {}))
    tm = data["traffic_manager"]
    tm.update(routing_method=method, dns_port=procs.free_port(), dns_ttl_seconds=1)
    tm["base_url"] = f"http://127.0.0.1:{procs.free_port()}"
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_fleet(data, path)


@pytest.fixture
def edges() -> Iterator[tuple[int, dict[str, Edge]]]:
    port = procs.free_port()
    made = {r: Edge(r, f"127.0.1.{n}", port) for n, r in enumerate(REGIONS, start=1)}
    yield port, made
    for edge in made.values():
        edge.close()


class Profile:
    def __init__(self, fleet: Fleet, state: Path):
        self.fleet = fleet
        tm = fleet.traffic_manager
        self.server, _ = serve(fleet, state, port=int(tm.base_url.rsplit(":", 1)[1]), probe_interval=0.2)
        self.tm = AzureTrafficManager(
            StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url
        )
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
    method, extra = request.param
    made = Profile(_fleet(tmp_path, edges[0], method, **extra), tmp_path / "state")
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
