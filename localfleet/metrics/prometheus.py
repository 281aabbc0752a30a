"""The local fleet's Prometheus: what Fanout's metric gates read (fleet `gates.metrics.source`).

Started with the fleet when the fleet file has metric gates whose source URL is on loopback (a
non-loopback URL is a real monitoring service, not ours to run): Debian's `prometheus` listening
on exactly that host:port, its config and TSDB in the fleet's state folder (`<state>/prometheus/`).
It scrapes every region's edge `/metrics` every second, as the gates read 2 s steps of a 20 s
window, and keeps the `region` label as the edge reports it (honor_labels), so a query names a
region the way the fleet file does.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fanout.fleet import Fleet
from localfleet import procs

PROC = "prometheus"
BINARY = "/usr/bin/prometheus"  # Debian's package (make system-packages)
SCRAPE_SECONDS = 1
RETENTION = "2d"  # a local fleet lives for days at most; bounds the state folder
# Loopback only, and never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def listen_address(fleet: Fleet) -> tuple[str, int] | None:
    """Where this fleet's Prometheus listens, or None when the fleet wants none of ours (no
    metric gates, or a source that is not on loopback)."""
    gates = fleet.gates.metrics
    if gates is None or gates.source.kind != "prometheus":
        return None
    url = urlsplit(str(gates.source.url))
    host = url.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return (host, url.port or 80) if loopback else None


def edge_targets(fleet: Fleet) -> dict[str, str]:
    """region -> the host:port Prometheus scrapes for it (the region's edge)."""
    targets = {}
    for region in fleet.regions:
        url = urlsplit(region.edge_url)
        targets[region.name] = f"{url.hostname}:{url.port or 80}"
    return targets


def config(fleet: Fleet) -> dict[str, Any]:
    """prometheus.yml for `fleet`: one job, every edge, every second."""
    interval = f"{SCRAPE_SECONDS}s"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "fanout-edges",
                "metrics_path": "/metrics",
                # The edge's own `region` label, not a target label of the same name, is the truth.
                "honor_labels": True,
                "static_configs": [{"targets": list(edge_targets(fleet).values())}],
            }
        ],
    }


def base_dir(state: Path) -> Path:
    return Path(state) / "prometheus"


def url_of(fleet: Fleet) -> str | None:
    where = listen_address(fleet)
    return f"http://{where[0]}:{where[1]}" if where else None


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def ready(base_url: str) -> bool:
    """Prometheus answers /-/ready with 200 once its TSDB is open and it serves queries."""
    try:
        return _get(f"{base_url}/-/ready", timeout=1)[0] == 200
    except OSError:
        return False


def start(fleet: Fleet, state: Path) -> int | None:
    """Start the fleet's Prometheus (a no-op if it runs; None if the fleet wants none); returns
    its pid once it is ready. The config is rewritten each time, so a changed fleet file's
    edges are scraped after the next `down` and `up`."""
    where = listen_address(fleet)
    if where is None:
        return None
    running = procs.pid(PROC, state)
    if running is not None:
        return running
    host, port = where
    if procs.port_open(host, port):
        raise procs.ProcError(f"{PROC}: {host}:{port} is already taken by a process that is not ours")
    base = base_dir(state).resolve()
    (base / "data").mkdir(parents=True, exist_ok=True)
    (base / "prometheus.yml").write_text(yaml.safe_dump(config(fleet), sort_keys=False))
    argv = [
        BINARY,
        f"--config.file={base / 'prometheus.yml'}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]
    url = f"http://{host}:{port}"
    return procs.start(PROC, argv, state, ready=lambda: ready(url), timeout=30)


def stop(state: Path) -> bool:
    return procs.stop(PROC, state)


def query(base_url: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """An instant query over the HTTP API; the result vector (for tests and people)."""
    status, body = _get(f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout)
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {status} to {promql!r}: {answer.get('error', body[:200])}")
    return answer["data"]["result"]


def target_health(base_url: str) -> dict[str, str]:
    """host:port -> "up" / "down" / "unknown", for every edge Prometheus scrapes; {} if it does not answer."""
    try:
        status, body = _get(f"{base_url}/api/v1/targets?state=active", timeout=2)
    except OSError:
        return {}
    if status != 200:
        return {}
    targets = json.loads(body)["data"]["activeTargets"]
    return {t["labels"].get("instance", t["scrapeUrl"]): t["health"] for t in targets}
