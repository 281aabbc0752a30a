"""The local fleet's Prometheus and what it reads: real Prometheus, real edges on a real control
plane, the bad-build knob set through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fanout.fleet import Fleet, load_fleet
from localfleet import cli, edge, faults, procs
from localfleet.metrics import prometheus
from localfleet.testing import REPO, apply_deployment, wait_until

FIRST, SECOND = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_where_prometheus_listens_and_what_it_scrapes(make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "with", metrics=True)
    host, port = prometheus.listen_address(fleet)
    assert host == "127.0.0.1" and port != 7170  # a free port, not the developer's fleet's
    cfg = prometheus.config(fleet)
    job = cfg["scrape_configs"][0]
    assert cfg["global"]["scrape_interval"] == "1s" and job["honor_labels"] is True
    assert job["static_configs"][0]["targets"] == [r.edge_url.split("://")[1] for r in fleet.regions]
    assert prometheus.listen_address(make_fleet(tmp_path / "without")) is None
    # A source that is not on loopback is a real monitoring service: the local fleet runs none.
    data = yaml.safe_load(fleet.source_path.read_text())
    data["gates"]["metrics"]["source"]["url"] = "https://prometheus.example.com"
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(data))
    assert prometheus.listen_address(load_fleet(tmp_path / "remote.yaml")) is None


def test_a_fleet_without_metric_gates_starts_no_prometheus(make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    assert fleet.gates.metrics is None
    assert prometheus.start(fleet, tmp_path / "state") is None
    assert procs.pid(prometheus.PROC, tmp_path / "state") is None


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def version(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/version", timeout=5) as resp:
        return json.loads(resp.read())


def fault(fleet: Fleet, cache: Path, *args: str) -> str:
    """`python -m localfleet --fleet F fault ARGS` (what `make fault ARGS=…` runs), on `cache`'s state."""
    env = {**os.environ, "FANOUT_CACHE": str(cache), "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    argv = [sys.executable, "-m", "localfleet", "--fleet", str(fleet.source_path), "fault", *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.localfleet
def test_prometheus_reads_what_users_feel_and_only_the_next_build_is_bad(cluster: Fleet, tmp_path: Path) -> None:
    fleet, cache = cluster, tmp_path / "cache"
    state = cli.state_dir(fleet, cache)  # where the CLI (fault, status) looks for this fleet's state
    base = fleet.region("westus").edge_url
    url = prometheus.url_of(fleet)
    apply_deployment(fleet, "westus", FIRST)
    edge.start_edge(fleet, "westus", state)
    try:
        assert prometheus.start(fleet, state) is not None
        assert prometheus.ready(url)
        wait_until(lambda: version(base).get("digest") == FIRST, timeout=30, what="westus runs FIRST")
        assert [get(f"{base}/") for _ in range(20)] == [200] * 20

        out = fault(fleet, cache, "bad-build", "error-rate", "westus", "0.2")
        assert FIRST[7:19] in out
        fault(fleet, cache, "bad-build", "latency", "westus", "30")
        knobs = faults.read_faults(state)["bad_build"]["westus"]
        assert knobs == {"error_rate": {"ratio": 0.2, "good": [FIRST]}, "latency": {"ms": 30.0, "good": [FIRST]}}
        assert cli._fault_notes(faults.read_faults(state), "westus") == ["bad_build(0.2 500s +30ms)"]
        # The digest that ran when the knob was set stays good.
        assert [get(f"{base}/") for _ in range(10)] == [200] * 10

        apply_deployment(fleet, "westus", SECOND)
        wait_until(lambda: version(base).get("digest") == SECOND, timeout=30, what="westus runs SECOND")
        # The edge exports SECOND's series at 0 once it sees it run, before any user request.
        on_second = f'{{region="westus",digest="{SECOND}"}}'
        wait_until(lambda: prometheus.query(url, f"fanout_edge_requests_total{on_second}"), timeout=10)
        codes = [get(f"{base}/") for _ in range(50)]
        assert codes.count(500) == 10 and codes.count(200) == 40
        assert get(f"{base}/healthz") == 200 and version(base)["healthy"] is True  # gates see nothing

        def counted() -> dict[tuple[str, str], float]:
            rows = prometheus.query(url, 'sum by (digest, code) (fanout_edge_requests_total{region="westus"})')
            return {(r["metric"]["digest"], r["metric"]["code"]): float(r["value"][1]) for r in rows}

        # Every digest's series start at 0 (see Edge._zero_series): FIRST never failed, no 503s.
        zeros = {(FIRST, "500"): 0.0, ("none", "503"): 0.0}
        expected = {(FIRST, "200"): 30.0, (SECOND, "200"): 40.0, (SECOND, "500"): 10.0, **zeros}
        wait_until(lambda: counted() == expected, timeout=15, what=f"Prometheus counts {expected}")
        # What a metric gate asks: none of SECOND's 50 requests is lost to a series born above 0.
        gate = f"sum(increase(fanout_edge_requests_total{on_second}[20s]))"
        wait_until(lambda: float(prometheus.query(url, gate)[0]["value"][1]) >= 50, timeout=10, what=gate)
        buckets = 'sum by (le, digest) (fanout_edge_request_duration_seconds_bucket{region="westus"})'
        median = {
            r["metric"]["digest"]: float(r["value"][1])
            for r in prometheus.query(url, f"histogram_quantile(0.5, {buckets})")
        }
        assert median[SECOND] >= 0.025 and median[FIRST] < 0.025  # the injected 30 ms, on SECOND only
        # No edge runs in eastus: its target is down (once scraped; a target starts "unknown").
        westus, eastus = (fleet.region(r).edge_url.split("://")[1] for r in ("westus", "eastus"))
        expected_health = {westus: "up", eastus: "down"}
        wait_until(lambda: {t: prometheus.target_health(url).get(t) for t in expected_health} == expected_health)

        fault(fleet, cache, "clear-all")
        assert "bad_build" not in faults.read_faults(state)
        assert {get(f"{base}/") for _ in range(10)} == {200}
    finally:
        prometheus.stop(state)
        edge.stop_edge(fleet, "westus", state)
    assert not procs.port_open(*prometheus.listen_address(fleet))


def test_bad_build_command_line(
    make_fleet: Callable[..., Fleet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FANOUT_CACHE", str(tmp_path / "cache"))
    fleet = make_fleet(tmp_path, metrics=True)
    state = cli.state_dir(fleet)
    run = ["--fleet", str(fleet.source_path), "fault", "bad-build"]
    for wrong in (["westus", "0.2"], ["error-rate", "westus"], ["error-rate", "westus", "2"], ["latency", "westus"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*run, *wrong])
        assert exit_.value.code == 2, wrong
    with pytest.raises(SystemExit):
        cli.main(["--fleet", str(fleet.source_path), "fault", "replica-lag", "westus", "3", "4"])
    # Without an answer from the region's cluster there is no telling which build is good: refused.
    assert cli.main([*run, "latency", "westus", "100"]) == 1
    assert "westus: cannot read which digest it runs (the good build): no kubeconfig" in capsys.readouterr().err
    assert "bad_build" not in faults.read_faults(state)
    knobs = {"error_rate": {"ratio": 0.5, "good": []}, "latency": {"ms": 9, "good": []}}
    faults.update_faults(state, bad_build={"westus": dict(knobs), "eastus": dict(knobs)})
    assert cli.main([*run, "error-rate", "westus", "--clear"]) == 0
    assert faults.read_faults(state)["bad_build"]["westus"] == {"latency": knobs["latency"]}
    assert cli.main([*run, "westus", "--clear"]) == 0
    assert faults.read_faults(state)["bad_build"] == {"eastus": knobs}
    assert cli.main([*run, "eastus", "--clear"]) == 0
    assert "bad_build" not in faults.read_faults(state)
