"""The per-region edge: digest parsing and answers from a faked cluster, then a real one."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from fanout.fleet import Fleet
from localfleet import edge, procs
from localfleet.edge import ClusterUnreachable, Edge, make_server, parse_digest
from localfleet.faults import update_faults
from localfleet.testing import apply_deployment

DIGEST = "sha256:" + "ab" * 32


def deployment(ready: int = 2, image: str = f"127.0.0.1:5101/fanout/hello@{DIGEST}") -> dict[str, Any]:
    return {
        "metadata": {"name": "hello", "namespace": "hello", "generation": 3},
        "spec": {
            "replicas": 2,
            # Not first on purpose: the chart's container is named "app".
            "template": {"spec": {"containers": [{"name": "proxy", "image": "x:1"}, {"name": "app", "image": image}]}},
        },
        "status": {"readyReplicas": ready, "updatedReplicas": 2, "observedGeneration": 3, "replicas": 2},
    }


class FakeReader:
    def __init__(self, answer: dict[str, Any] | Exception | None):
        self.answer = answer
        self.calls = 0

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("image", "digest"),
    [
        (f"127.0.0.1:5101/fanout/hello@{DIGEST}", DIGEST),
        (f"myacr.azurecr.io/fanout/hello:1.2@{DIGEST}", DIGEST),
        ("127.0.0.1:5101/fanout/hello:latest", None),
        ("hello@sha256:abc", None),  # truncated: not a digest
        (None, None),
    ],
)
def test_parse_digest(image: str | None, digest: str | None) -> None:
    assert parse_digest(image) == digest


def make_edge(answer: Any, tmp_path: Path, clock: Callable[[], float] = time.monotonic) -> Edge:
    return Edge("westus", "hello", "hello", FakeReader(answer), tmp_path, clock=clock)


def test_healthy_deployment_reports_its_digest(tmp_path: Path) -> None:
    status, body = make_edge(deployment(), tmp_path).health()
    assert (status, body["status"], body["digest"]) == (200, "ok", DIGEST)
    status, body = make_edge(deployment(), tmp_path).version()
    assert status == 200
    assert body == {
        "region": "westus",
        "digest": DIGEST,
        "image": f"127.0.0.1:5101/fanout/hello@{DIGEST}",
        "ready_replicas": 2,
        "replicas": 2,
        "updated_replicas": 2,
        "observed_generation": 3,
        "generation": 3,
        "healthy": True,
    }


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (deployment(ready=0), "no ready replicas"),
        (None, "deployment hello/hello not found"),
        (ClusterUnreachable("connection refused"), "cluster unreachable: connection refused"),
    ],
)
def test_unhealthy_answers_say_why(answer: Any, reason: str, tmp_path: Path) -> None:
    status, body = make_edge(answer, tmp_path).health()
    assert status == 503 and body["status"] == "unhealthy" and reason in body["reason"]


def test_version_when_there_is_nothing_to_report(tmp_path: Path) -> None:
    status, body = make_edge(ClusterUnreachable("timed out"), tmp_path).version()
    assert status == 503 and body["digest"] is None and "timed out" in body["reason"]
    status, body = make_edge(deployment(ready=0), tmp_path).version()
    assert status == 200 and body["healthy"] is False


def test_injected_fault_fails_health_but_not_version(tmp_path: Path) -> None:
    e = make_edge(deployment(), tmp_path)
    update_faults(tmp_path, edge_unhealthy=["westus"])
    expected = {"region": "westus", "digest": DIGEST, "status": "unhealthy", "reason": "fault injected"}
    assert e.health() == (503, expected)
    status, body = e.version()
    assert status == 200 and body["healthy"] is False and body["digest"] == DIGEST
    update_faults(tmp_path, edge_unhealthy=["northeurope"])
    assert e.health()[0] == 200


def test_cluster_is_read_at_most_once_a_second(tmp_path: Path) -> None:
    now = [100.0]
    e = make_edge(deployment(), tmp_path, clock=lambda: now[0])
    for _ in range(5):
        e.health()
        e.version()
    now[0] += 0.99
    e.health()
    assert e.reader.calls == 1
    now[0] += 0.02
    e.health()
    assert e.reader.calls == 2


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_server(tmp_path: Path) -> None:
    port = procs.free_port()
    server = make_server(make_edge(deployment(), tmp_path), "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/version?x=1")[1]["digest"] == DIGEST
        status, body = get(f"http://127.0.0.1:{port}/nope")
        assert status == 404 and "/healthz" in body["paths"]
    finally:
        server.shutdown()
        server.server_close()


# -- what users feel: /metrics and the bad-build knob ----------------------------------------

GOOD, BAD = DIGEST, "sha256:" + "cd" * 32


def sample(e: Edge, name: str, **labels: str) -> float:
    return e.metrics.get_sample_value(name, {"region": "westus", **labels}) or 0.0


def test_every_user_request_is_counted_by_digest_and_status(tmp_path: Path) -> None:
    e = make_edge(deployment(), tmp_path)
    for _ in range(3):
        assert e.serve_user()[0] == 200
    e.health(), e.version()  # probes are not users
    assert sample(e, "fanout_edge_requests_total", digest=DIGEST, code="200") == 3
    assert sample(e, "fanout_edge_request_duration_seconds_count", digest=DIGEST) == 3
    down = make_edge(deployment(ready=0), tmp_path)
    assert down.serve_user()[0] == 503
    assert sample(down, "fanout_edge_requests_total", digest="none", code="503") == 1
    text = e.exposition().decode()
    assert f'fanout_edge_requests_total{{code="200",digest="{DIGEST}",region="westus"}} 3.0' in text
    assert f'fanout_edge_request_duration_seconds_bucket{{digest="{DIGEST}",le="0.005",region="westus"}}' in text
    assert '"2.5"' in text and 'le="5.0"' in text and 'le="+Inf"' in text


def test_a_digest_is_exported_at_zero_before_its_first_user_request(tmp_path: Path) -> None:
    """So that increase() over the gate's window counts the release's first requests too."""
    e = make_edge(deployment(), tmp_path)
    assert 'fanout_edge_requests_total{code="503",digest="none",region="westus"} 0.0' in e.exposition().decode()
    e.version()  # a health gate's probe: the edge now knows what runs
    text = e.exposition().decode()
    for code in ("200", "500"):
        assert f'fanout_edge_requests_total{{code="{code}",digest="{DIGEST}",region="westus"}} 0.0' in text
    assert f'fanout_edge_request_duration_seconds_count{{digest="{DIGEST}",region="westus"}} 0.0' in text


def edge_on(image_digest: str, tmp_path: Path, now: list[float]) -> Edge:
    """An edge whose clock only the injected latency moves (its sleep advances `now`)."""

    def sleep(seconds: float) -> None:
        now[0] += seconds

    reader = FakeReader(deployment(image=f"127.0.0.1:5101/fanout/hello@{image_digest}"))
    return Edge("westus", "hello", "hello", reader, tmp_path, clock=lambda: now[0], sleep=sleep)


@pytest.mark.parametrize(("ratio", "requests", "failed"), [(0.2, 50, 10), (0.1, 30, 3), (0.3, 7, 2), (1, 4, 4)])
def test_bad_build_fails_an_exact_share_of_user_requests(
    ratio: float, requests: int, failed: int, tmp_path: Path
) -> None:
    update_faults(tmp_path, bad_build={"westus": {"error_rate": {"ratio": ratio, "good": [GOOD]}}})
    bad = edge_on(BAD, tmp_path, [0.0])
    codes = [bad.serve_user()[0] for _ in range(requests)]
    assert codes.count(500) == failed and set(codes) <= {200, 500}
    # Spread out, not bunched: the first k requests hold floor(k × ratio) failures, for every k.
    assert all(codes[:k].count(500) == int(Fraction(str(ratio)) * k) for k in range(requests + 1))
    assert sample(bad, "fanout_edge_requests_total", digest=BAD, code="500") == failed
    assert sample(bad, "fanout_edge_requests_total", digest=BAD, code="200") == requests - failed
    # The digest that ran when the knob was set stays good; health and version never notice.
    good = edge_on(GOOD, tmp_path, [0.0])
    assert {good.serve_user()[0] for _ in range(20)} == {200}
    assert bad.health()[0] == 200 and bad.version()[1]["healthy"] is True


def test_bad_build_pattern_is_deterministic(tmp_path: Path) -> None:
    update_faults(tmp_path, bad_build={"westus": {"error_rate": {"ratio": 0.25, "good": []}}})
    patterns = [[e.serve_user()[0] for _ in range(8)] for e in (edge_on(BAD, tmp_path, [0.0]) for _ in range(2))]
    assert patterns[0] == patterns[1] == [200, 200, 200, 500, 200, 200, 200, 500]


def test_bad_build_latency_is_what_the_histogram_measures(tmp_path: Path) -> None:
    knobs = {"latency": {"ms": 300, "good": [GOOD]}, "error_rate": {"ratio": 0.5, "good": [GOOD]}}
    update_faults(tmp_path, bad_build={"westus": knobs})
    now = [0.0]
    bad, good = edge_on(BAD, tmp_path, now), edge_on(GOOD, tmp_path, now)
    assert [bad.serve_user()[0] for _ in range(4)] == [200, 500, 200, 500]  # both knobs at once
    assert good.serve_user()[0] == 200
    assert sample(bad, "fanout_edge_request_duration_seconds_sum", digest=BAD) == pytest.approx(1.2)
    assert sample(bad, "fanout_edge_request_duration_seconds_bucket", digest=BAD, le="0.25") == 0
    assert sample(bad, "fanout_edge_request_duration_seconds_bucket", digest=BAD, le="0.5") == 4
    assert sample(good, "fanout_edge_request_duration_seconds_sum", digest=GOOD) == 0
    # Another region's knob is not this one's.
    update_faults(tmp_path, bad_build={"eastus": knobs})
    assert {bad.serve_user()[0] for _ in range(4)} == {200}


def test_metrics_over_http(tmp_path: Path) -> None:
    port = procs.free_port()
    e = make_edge(deployment(), tmp_path)
    server = make_server(e, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        get(f"http://127.0.0.1:{port}/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            kind, text = resp.headers["Content-Type"], resp.read().decode()
        assert kind.startswith("text/plain; version=0.0.4")
        assert f'fanout_edge_requests_total{{code="200",digest="{DIGEST}",region="westus"}} 1.0' in text
    finally:
        server.shutdown()
        server.server_close()


# -- on a real control plane (localfleet.kube) --------------------------------------------


def wait_for(url: str, check: Callable[[int, dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status, body = 0, {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, body = get(url)
            if check(status, body):
                return body
        time.sleep(0.25)
    raise AssertionError(f"{url} never matched; last answer {status} {body}")


@pytest.mark.localfleet
def test_edge_reports_what_the_region_runs(cluster: Fleet) -> None:
    from localfleet import kube

    state = cluster.source_path.parent / "state"
    base = cluster.region("westus").edge_url
    edge.start_edge(cluster, "westus", state)
    try:
        body = wait_for(f"{base}/healthz", lambda s, b: s == 503)
        assert "not found" in body["reason"]
        first, second = "sha256:" + "1" * 64, "sha256:" + "2" * 64
        apply_deployment(cluster, "westus", first)
        wait_for(f"{base}/version", lambda s, b: s == 200 and b["digest"] == first and b["ready_replicas"] == 2)
        assert get(f"{base}/healthz")[0] == 200
        apply_deployment(cluster, "westus", second)
        body = wait_for(f"{base}/version", lambda s, b: b.get("digest") == second and b["updated_replicas"] == 2)
        assert body["observed_generation"] == body["generation"] == 2
        kube.stop_region("westus", cluster.source_path.parent.parent)
        body = wait_for(f"{base}/healthz", lambda s, b: s == 503)
        assert "cluster unreachable" in body["reason"], body
    finally:
        edge.stop_edge(cluster, "westus", state)
