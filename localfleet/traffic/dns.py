"""The local fleet's Traffic Manager name server: real DNS (UDP and TCP) on loopback.

It answers `<profile>.trafficmanager.net` the way Traffic Manager does, from the stand-in's
live state (`Store.dns_view`): the routing method picks the endpoint (`answer.choose`), the
answer carries the profile's TTL, no enabled endpoint is NXDOMAIN. It runs inside the stand-in's
process, so a drain changes the very next answer — and resolvers keep the old one for the TTL.

dnslib's DNSServer does the wire format and the UDP/TCP serving (a small, maintained,
pure-Python library with a resolver interface: exactly this job, nothing to hand-write).

Like Traffic Manager, it locates the user by the query's source address: the simulated users of
location number i (in `traffic_manager.locations` order) send from 127.1.<i+1>.x
(`source_address`), the whole 127/8 being loopback on Linux.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from dnslib import CNAME, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from fanout.fleet import Fleet
from localfleet.traffic.answer import Where, choose

log = logging.getLogger("localfleet.dns")
ZONE = "trafficmanager.net"


def fqdn(profile: str) -> str:
    return f"{profile}.{ZONE}".lower()


def source_address(fleet: Fleet, location: str, user: int) -> str:
    """The loopback address users at `location` query from (user numbers from 0)."""
    index = list(fleet.traffic_manager.locations).index(location)
    return f"127.1.{index + 1}.{user % 250 + 1}"


def where_from(fleet: Fleet, address: str) -> Where:
    """Where a query from `address` comes from; anywhere else is WORLD with no latency table."""
    ip = ipaddress.ip_address(address)
    names = list(fleet.traffic_manager.locations)
    if ip in ipaddress.ip_network("127.1.0.0/16"):
        index = ip.packed[2] - 1
        if 0 <= index < len(names):
            loc = fleet.traffic_manager.locations[names[index]]
            return Where(names[index], tuple(loc.geography), dict(loc.latency_ms))
    return Where()


class TrafficManagerResolver(BaseResolver):
    def __init__(self, fleet: Fleet, view: Callable[[], Mapping[str, Any]], rng: random.Random | None = None):
        self.fleet, self.view, self.rng = fleet, view, rng or random.Random()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        qname = str(request.q.qname).rstrip(".").lower()
        view = self.view()
        if qname != fqdn(view["name"]):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        chosen = choose(view, where_from(self.fleet, handler.client_address[0]), self.rng)
        if chosen is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for ep in chosen:
            target = ep["target"]
            try:
                ipaddress.IPv4Address(target)
            except ValueError:
                reply.add_answer(RR(request.q.qname, QTYPE.CNAME, rdata=CNAME(target), ttl=view["ttl"]))
                continue
            if request.q.qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(target), ttl=view["ttl"]))
        return reply


def serve_dns(fleet: Fleet, view: Callable[[], Mapping[str, Any]], host: str, port: int) -> list[DNSServer]:
    """Start UDP and TCP servers in background threads; stop each with `.stop()`."""
    # Seeded: the weighted answers come in the same order each run, so a test's traffic repeats.
    resolver = TrafficManagerResolver(fleet, view, random.Random(f"{fleet.traffic_manager.profile}/dns"))
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    servers = [DNSServer(resolver, port=port, address=host, tcp=tcp, logger=quiet) for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    return servers
