"""Simulated users of the local fleet: they find the app through DNS, as real users do.

    python -m localfleet --fleet F users start [--users 8 --rate 2 --duration 600]
    python -m localfleet --fleet F users read     # the summary of what they saw so far
    python -m localfleet --fleet F users stop

A bounded population (at most MAX_USERS), each user a thread with a location (round robin over
`traffic_manager.locations`). Each has its own caching stub resolver (dnspython): it asks the
profile's name server from its location's loopback source address and keeps the answer exactly
for the answer's TTL, so a drained region keeps getting that user's requests until the TTL runs
out — as with every real resolver. It sends `rate` requests a second to `http://<address>:<edge
port>/` and records each one as a JSON line in `<state>/users/requests.jsonl`: time, user,
location, address, region and digest served, status, latency. Loopback only; the process stops by
itself after `duration` seconds. Fault knob `resolver_stuck` (faults.json, true) makes every
resolver keep its answer past the TTL, like a misbehaving ISP resolver.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from fanout.fleet import Fleet, load_fleet
from localfleet import faults, procs
from localfleet.traffic.dns import fqdn, source_address

PROC = "users"
MAX_USERS = 64
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def records_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "users" / "requests.jsonl"


class StubResolver:
    """One user's resolver: asks the name server, caches the answer for its TTL."""

    def __init__(self, name: str, server: tuple[str, int], source: str, state_dir: Path):
        self.name, self.server, self.source, self.state_dir = name, server, source, state_dir
        self.cached: tuple[str | None, float] | None = None  # (address or None for no answer, expires)

    def resolve(self) -> tuple[str | None, str]:
        """(address, how): the address to use now, or None and why there is none."""
        now = time.time()
        stuck = bool(faults.read_faults(self.state_dir).get("resolver_stuck"))
        if self.cached and (now < self.cached[1] or (stuck and self.cached[0])):
            return self.cached[0], "cached"
        query = dns.message.make_query(self.name, dns.rdatatype.A)
        try:
            reply = dns.query.udp(query, self.server[0], port=self.server[1], timeout=1, source=self.source)
        except (dns.exception.DNSException, OSError) as err:
            return None, f"dns error: {type(err).__name__}"
        if reply.rcode() != dns.rcode.NOERROR:
            self.cached = None
            return None, dns.rcode.to_text(reply.rcode())
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.A:
                self.cached = (rrset[0].address, now + rrset.ttl)
                return self.cached[0], "resolved"
        self.cached = (None, now + 1)  # NODATA: ask again soon
        return None, "NODATA"


class Population:
    def __init__(self, fleet: Fleet, state_dir: Path, users: int, rate: float, duration: float):
        if not 1 <= users <= MAX_USERS:
            raise ValueError(f"users: {users} is outside 1..{MAX_USERS}")
        tm = fleet.traffic_manager
        if not tm.dns_port:
            raise ValueError(f"{fleet.source_path}: traffic_manager.dns_port is not set; users need the name server")
        self.fleet, self.state_dir, self.users, self.rate, self.duration = fleet, state_dir, users, rate, duration
        self.port = urlsplit(fleet.regions[0].edge_url).port or 80
        self.server = (urlsplit(tm.base_url).hostname or "127.0.0.1", tm.dns_port)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.out = records_path(state_dir)
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def _record(self, row: dict[str, Any]) -> None:
        with self._lock, self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def _user(self, number: int) -> None:
        locations = list(self.fleet.traffic_manager.locations) or [None]
        location = locations[number % len(locations)]
        source = source_address(self.fleet, location, number) if location else "127.0.0.1"
        resolver = StubResolver(fqdn(self.fleet.traffic_manager.profile), self.server, source, self.state_dir)
        # Users start a little apart so their TTLs do not all expire at the same instant.
        self.stop.wait(number / max(self.users * self.rate, 1))
        while not self.stop.is_set():
            self._record(self._request(number, location, resolver))
            self.stop.wait(1 / self.rate)

    def _request(self, number: int, location: str | None, resolver: StubResolver) -> dict[str, Any]:
        started = time.time()
        row: dict[str, Any] = {"t": started, "user": number, "location": location, "region": None, "digest": None}
        address, how = resolver.resolve()
        row["address"] = address
        if address is None:
            return {**row, "status": how, "latency_ms": 0.0}
        try:
            with NO_PROXY.open(f"http://{address}:{self.port}/", timeout=2) as resp:
                body, row["status"] = json.loads(resp.read()), resp.status
        except urllib.error.HTTPError as err:
            body, row["status"] = json.loads(err.read() or b"{}"), err.code
        except (OSError, ValueError) as err:
            body, row["status"] = {}, f"error: {type(err).__name__}"
        row.update(region=body.get("region"), digest=body.get("digest"), generation=body.get("generation"))
        row["latency_ms"] = round((time.time() - started) * 1000, 1)
        return row

    def run(self) -> None:
        threads = [threading.Thread(target=self._user, args=(n,), daemon=True) for n in range(self.users)]
        for thread in threads:
            thread.start()
        self.stop.wait(self.duration)
        self.stop.set()
        for thread in threads:
            thread.join(5)


def start(fleet: Fleet, state_dir: Path, users: int = 8, rate: float = 2.0, duration: float = 600) -> int:
    """Start the population as a process (a fresh record); returns its pid."""
    if procs.pid(PROC, state_dir) is not None:
        raise procs.ProcError("users are already running; stop them first")
    records_path(state_dir).unlink(missing_ok=True)
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "localfleet.traffic.users", "--fleet", str(fleet.source_path)]
    argv += ["--state-dir", str(Path(state_dir).resolve()), "--users", str(users), "--rate", str(rate)]
    argv += ["--duration", str(duration)]
    env = {"PYTHONPATH": f"{root / 'plugins'}:{root}"}
    return procs.start(
        PROC, argv, state_dir, env=env, cwd=root, ready=lambda: records_path(state_dir).exists(), timeout=20
    )


def stop(state_dir: Path) -> bool:
    return procs.stop(PROC, state_dir)


def read(state_dir: Path) -> list[dict[str, Any]]:
    """Every request recorded so far (a line being written is skipped)."""
    path = records_path(state_dir)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.traffic.users", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second per user")
    parser.add_argument("--duration", type=float, default=600, help="seconds until the users stop by themselves")
    args = parser.parse_args(argv)
    Population(load_fleet(args.fleet), args.state_dir, args.users, args.rate, args.duration).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
