"""Per-region edge endpoint: what a user routed to this region would get.

    python -m localfleet.edge --fleet include/fleets/local.yaml --region westus [--state-dir D]

Listens on the region's `edge_url` (127.0.0.1 only) and reads the app's Deployment in
that region's cluster (kubeconfig context from the fleet file):

    GET /healthz  200 {"status": "ok", ...} if the Deployment has a ready replica, else 503
    GET /version  200 {"region", "digest", "image", "ready_replicas", "replicas",
                       "updated_replicas", "observed_generation", "generation", "healthy"}
    GET /         a user's request: 200 {"region", "digest", "generation"} while a replica is ready, else 503
    GET /_fanout/requests  {"requests": n, "last_at": epoch of the last user request, "now"}
    GET /metrics  what users felt, in Prometheus' text format: the counter
                  fanout_edge_requests_total{region, digest, code} (one per GET /; digest "none"
                  when no replica served it) and the histogram fanout_edge_request_duration_seconds
                  {region, digest} of each one's latency as the edge measured it

Each region's edge listens on its own loopback address (the host of `edge_url`, e.g.
127.0.1.2) so that a DNS answer — an address, no port — really picks the region. The request
counter is what the release asks to confirm that users stopped arriving after a drain.

HTTP gates and the Traffic Manager stand-in probe these. Answers are cached for up to
one second so that many probers cost one API read. `"edge_unhealthy": ["westus"]` in
`<state_dir>/faults.json` makes /healthz fail while /version keeps answering.

`"bad_build": {"westus": {"error_rate": {"ratio": 0.2, "good": [digests]}, "latency": {"ms": 300,
"good": [...]}}}` makes user requests served by any digest not in `good` (the ones the region ran
when the knob was set) fail with 500 at exactly that ratio, and/or answer that much later. /healthz
and /version stay as they are: a bad build passes the health gates and only users feel it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Histogram, generate_latest

from fanout.fleet import Fleet, load_fleet
from localfleet import procs
from localfleet.faults import read_faults
from localfleet.kube_files import admin_kubeconfig_beside

log = logging.getLogger("localfleet.edge")
CACHE_SECONDS = 1.0
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})\Z")
# What Fanout's metric gates query (fanout.fleet.MetricSource's defaults name the same).
REQUESTS_METRIC = "fanout_edge_requests_total"
LATENCY_METRIC = "fanout_edge_request_duration_seconds"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
NO_DIGEST = "none"  # the digest label of a request no replica served


class ClusterUnreachable(RuntimeError):
    """The region's API server did not answer (or answered with an error other than 404)."""


class DeploymentReader(Protocol):
    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as the API returns it (JSON), None if it does not exist."""
        ...


def parse_digest(image: str | None) -> str | None:
    """'host/repo@sha256:…' (optionally with a tag before the @) -> 'sha256:…'; None for a tag-only image."""
    match = _DIGEST.search(image or "")
    return match.group(1) if match else None


def summarize(deployment: dict[str, Any], container: str = "app") -> dict[str, Any]:
    """The fields /version reports, from a Deployment's API JSON."""
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    # The chart names its container "app"; fall back to the first one for other charts.
    chosen = next((c for c in containers if c.get("name") == container), containers[0])
    status = deployment.get("status") or {}
    image = chosen.get("image")
    return {
        "digest": parse_digest(image),
        "image": image,
        "ready_replicas": status.get("readyReplicas") or 0,
        "replicas": deployment.get("spec", {}).get("replicas"),
        "updated_replicas": status.get("updatedReplicas") or 0,
        "observed_generation": status.get("observedGeneration"),
        "generation": deployment.get("metadata", {}).get("generation"),
    }


class KubeReader:
    """Reads Deployments with the kubernetes client; reloads the kubeconfig after a failure
    because the local control plane may have been restarted with new credentials."""

    def __init__(self, kubeconfig: Path, context: str):
        self.kubeconfig = kubeconfig
        self.context = context
        self._api: Any = None

    def _apps(self) -> Any:
        from kubernetes import client, config

        if self._api is None:
            if not self.kubeconfig.exists():
                raise ClusterUnreachable(f"no kubeconfig at {self.kubeconfig}")
            cfg = client.Configuration()
            config.load_kube_config(str(self.kubeconfig), self.context, client_configuration=cfg, persist_config=False)
            cfg.retries = 0  # fail fast: the prober asks again in a second anyway
            self._api = client.AppsV1Api(client.ApiClient(cfg))
        return self._api

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._apps().read_namespaced_deployment(
                name, namespace, _preload_content=False, _request_timeout=(1, 2)
            )
            return json.loads(resp.data)
        except ApiException as err:
            if err.status == 404:
                return None
            self._api = None
            raise ClusterUnreachable(f"API server answered {err.status} {err.reason}") from None
        except ClusterUnreachable:
            raise
        except Exception as err:
            self._api = None
            raise ClusterUnreachable(f"{type(err).__name__}: {err}") from None


class Edge:
    """Builds /healthz and /version answers for one region; thread-safe, cached."""

    def __init__(
        self,
        region: str,
        app: str,
        namespace: str,
        reader: DeploymentReader,
        state_dir: str | Path,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.region, self.app, self.namespace = region, app, namespace
        self.reader = reader
        self.state_dir = Path(state_dir)
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any] | None, str | None] | None = None
        self._last_health: str | None = None
        self.user_requests, self.last_user_request = 0, None
        self._bad_served: dict[str, int] = {}  # per bad digest: user requests it served under error_rate
        # Its own registry, not the process-wide one: tests run several edges in one process.
        self.metrics = CollectorRegistry()
        self._requests = Counter(
            REQUESTS_METRIC, "User requests (GET /) the edge answered, by the digest that served them and the status",
            ["region", "digest", "code"], registry=self.metrics,
        )  # fmt: skip
        self._latency = Histogram(
            LATENCY_METRIC, "User requests' latency as the edge measured it, injected latency included",
            ["region", "digest"], buckets=LATENCY_BUCKETS, registry=self.metrics,
        )  # fmt: skip
        self._requests.labels(region, NO_DIGEST, "503")

    def _observe(self) -> tuple[dict[str, Any] | None, str | None]:
        """(summary, None) or (None, reason why there is none)."""
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= CACHE_SECONDS:
                try:
                    dep = self.reader.read_deployment(self.namespace, self.app)
                    summary = summarize(dep) if dep is not None else None
                    reason = None if dep is not None else f"deployment {self.namespace}/{self.app} not found"
                except ClusterUnreachable as err:
                    summary, reason = None, f"cluster unreachable: {err}"
                self._cached = (now, summary, reason)
                if summary is not None:
                    self._zero_series(summary["digest"] or NO_DIGEST)
            return self._cached[1], self._cached[2]

    def _zero_series(self, digest: str) -> None:
        """Export a digest's series at 0 as soon as the edge sees it run, before any user request:
        increase() over a window counts nothing of a series' first sample, so a series born at 5
        would hide the release's first 5 requests from the gates. (The health gates' probes see
        the digest long before the region is back in Traffic Manager and its users return.)"""
        for code in ("200", "500"):
            self._requests.labels(self.region, digest, code)
        self._latency.labels(self.region, digest)

    def _fault(self) -> bool:
        return self.region in (read_faults(self.state_dir).get("edge_unhealthy") or [])

    def health(self) -> tuple[int, dict[str, Any]]:
        summary, reason = self._observe()
        if self._fault():
            reason = "fault injected"
        elif summary is not None and summary["ready_replicas"] < 1:
            reason = f"deployment {self.namespace}/{self.app} has no ready replicas"
        body: dict[str, Any] = {"region": self.region, "digest": summary["digest"] if summary else None}
        if reason is None:
            body.update(status="ok", ready_replicas=summary["ready_replicas"] if summary else 0)
        else:
            body.update(status="unhealthy", reason=reason)
        if reason != self._last_health:
            # Log changes only: gates probe every second.
            log.info("%s: %s", self.region, reason or "healthy")
            self._last_health = reason
        return (200 if reason is None else 503), body

    def version(self) -> tuple[int, dict[str, Any]]:
        summary, reason = self._observe()
        if summary is None:
            return 503, {"region": self.region, "digest": None, "healthy": False, "reason": reason}
        healthy = summary["ready_replicas"] >= 1 and not self._fault()
        return 200, {"region": self.region, **summary, "healthy": healthy}

    def _bad_build(self, digest: str | None) -> tuple[float, bool]:
        """(seconds to hold the answer, whether to fail it) for a user request `digest` serves.

        Failures are spread exactly, without randomness: the n-th request (from 0) a bad digest
        serves fails when floor((n+1)·ratio) > floor(n·ratio), so any N requests hold floor(N·ratio)
        failures and a run repeats. Fraction keeps 0.1 × 10 from rounding below 1."""
        knobs = (read_faults(self.state_dir).get("bad_build") or {}).get(self.region) or {}
        latency, errors = knobs.get("latency"), knobs.get("error_rate")
        delay = float(latency["ms"]) / 1000 if latency and digest not in latency.get("good", []) else 0.0
        if not errors or digest in errors.get("good", []):
            return delay, False
        ratio = Fraction(str(errors["ratio"]))
        with self._lock:
            n = self._bad_served.get(digest or NO_DIGEST, 0)
            self._bad_served[digest or NO_DIGEST] = n + 1
        return delay, (n + 1) * ratio // 1 > n * ratio // 1

    def serve_user(self) -> tuple[int, dict[str, Any]]:
        started = self.clock()
        with self._lock:
            self.user_requests += 1
            self.last_user_request = time.time()
        summary, reason = self._observe()
        digest = None
        if summary is None or summary["ready_replicas"] < 1:
            status, body = 503, {"region": self.region, "digest": None, "reason": reason or "no ready replica"}
        else:
            digest = summary["digest"]
            # The generation tells a user-side recorder that the region changed under it.
            status, body = 200, {"region": self.region, "digest": digest, "generation": summary["generation"]}
            delay, fail = self._bad_build(digest)
            if delay:
                self.sleep(delay)
            if fail:
                status, body = 500, {**body, "error": "bad build (fault injected)"}
        label = digest or NO_DIGEST
        self._requests.labels(self.region, label, str(status)).inc()
        self._latency.labels(self.region, label).observe(max(0.0, self.clock() - started))
        return status, body

    def exposition(self) -> bytes:
        """/metrics: the counter and histogram in Prometheus' text format (0.0.4, which every
        Prometheus 2 parses)."""
        return generate_latest(self.metrics)

    def requests(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            return 200, {"requests": self.user_requests, "last_at": self.last_user_request, "now": time.time()}


def make_server(edge: Edge, host: str, port: int) -> ThreadingHTTPServer:
    routes = {"/healthz": edge.health, "/version": edge.version, "/": edge.serve_user}
    routes["/_fanout/requests"] = edge.requests

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                status, data, kind = 200, edge.exposition(), CONTENT_TYPE_PLAIN_0_0_4
            else:
                route = routes.get(path)
                paths = [*routes, "/metrics"]
                status, body = route() if route else (404, {"error": f"no such path {self.path}", "paths": paths})
                data, kind = json.dumps(body).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes arrive every second; Edge.health logs what changes

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def edge_for(fleet: Fleet, region: str, state_dir: str | Path) -> Edge:
    access = fleet.region(region).cluster.kubeconfig
    if access is None:
        raise ValueError(f"region {region}: the local edge needs cluster.kubeconfig, not AKS access")
    # The edge stands in for the cluster's load balancer: fleet infrastructure, so the admin's view.
    reader = KubeReader(admin_kubeconfig_beside(fleet.resolve(access.path)), access.context)
    return Edge(region, fleet.app.name, fleet.app.namespace, reader, state_dir)


def running_digests(fleet: Fleet, region: str, state_dir: str | Path) -> list[str]:
    """The digest `region` serves users now, read as its edge reads it ([] if it runs none);
    ClusterUnreachable if its API server does not answer."""
    reader = edge_for(fleet, region, state_dir).reader
    deployment = reader.read_deployment(fleet.app.namespace, fleet.app.name)
    digest = summarize(deployment)["digest"] if deployment is not None else None
    return [digest] if digest else []


def listen_address(fleet: Fleet, region: str) -> tuple[str, int]:
    url = urlsplit(fleet.region(region).edge_url)
    host = url.hostname or "127.0.0.1"
    if not host.startswith("127."):
        raise ValueError(f"region {region}: the local edge listens on loopback only, not {host}")
    return host, url.port or 80


def proc_name(region: str) -> str:
    return f"edge-{region}"


def start_edge(fleet: Fleet, region: str, state_dir: str | Path) -> int:
    """Start `region`'s edge process (no-op if it runs); returns its pid once it listens."""
    if fleet.source_path is None:
        raise ValueError("the fleet must come from a file (load_fleet) to start an edge for it")
    host, port = listen_address(fleet, region)
    running = procs.pid(proc_name(region), state_dir)
    if running is not None:
        return running
    if procs.port_open(host, port):
        raise procs.ProcError(f"{proc_name(region)}: {host}:{port} is already taken by a process that is not ours")
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "localfleet.edge", "--fleet", str(fleet.source_path), "--region", region]
    argv += ["--state-dir", str(Path(state_dir).resolve())]
    env = {"PYTHONPATH": f"{root / 'plugins'}:{root}"}
    return procs.start(
        proc_name(region), argv, state_dir, env=env, cwd=root, ready=lambda: procs.port_open(host, port), timeout=20
    )


def stop_edge(fleet: Fleet, region: str, state_dir: str | Path) -> bool:
    return procs.stop(proc_name(region), state_dir)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.edge", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", required=True, type=Path)
    parser.add_argument("--region", required=True)
    parser.add_argument("--state-dir", type=Path, default=procs.DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    fleet = load_fleet(args.fleet)
    host, port = listen_address(fleet, args.region)
    server = make_server(edge_for(fleet, args.region, args.state_dir), host, port)
    log.info("edge for %s on http://%s:%d", args.region, host, port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
