"""Metric gates on the real local fleet: simulated users reach the regions through DNS, every edge
counts what they get by region and digest, Debian's Prometheus scrapes the edges, and the release's
`gate_metrics` judges the region's users on the new digest through Prometheus's query API.

A bad build is made by the `bad-build` knob: only a digest released after it was set misbehaves in
that region, while its health check stays green — so the rollout, HTTP and soak gates pass and only
what users feel can stop it. Each test releases a new commit from a variant of the session fleet's
file with metric gates (short windows: the test fleet's DNS TTL is 2 s)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from release_checks import history, new_commit, snapshot, timed, variant_fleet

from fanout import names
from fanout.fleet import Fleet, load_fleet
from localfleet import cli
from localfleet.traffic import users

pytestmark = pytest.mark.localfleet

LATER_WAVES = ["eastus", "northeurope", "westeurope"]
ERRORS = {"name": "errors", "measure": "error_ratio", "max": 0.05}
P95 = {"name": "p95-latency", "measure": "latency_ms", "quantile": 0.95, "max": 500}
P95_VS_PREVIOUS = {
    "name": "p95-vs-previous", "measure": "latency_ms", "quantile": 0.95, "compare": "previous",
    "tolerance": 0.5, "margin": 20,
}  # fmt: skip


def metered(metered_fleet: Fleet, folder: Path, **changes: Any) -> Path:
    settings = {
        "gates.metrics.window_seconds": 14, "gates.metrics.step_seconds": 2, "gates.metrics.min_requests": 25,
        "gates.metrics.inconclusive": "fail", "gates.metrics.checks": [ERRORS, P95, P95_VS_PREVIOUS],
    }  # fmt: skip
    return variant_fleet(metered_fleet, folder, **{**settings, **changes})


@contextlib.contextmanager
def users_running(local_fleet, fleet: Fleet) -> Iterator[None]:
    # Enough users that every region gets requests in each 2 s step of the window, on a loaded machine too.
    users.start(fleet, local_fleet.state, users=16, rate=4, duration=600)
    try:
        time.sleep(3)  # every user has resolved and sent a few requests
        yield
    finally:
        users.stop(local_fleet.state)


@contextlib.contextmanager
def bad_build(local_fleet, region: str, kind: str, amount: str) -> Iterator[None]:
    cli.bad_build(local_fleet.fleet, local_fleet.state, region, kind, amount, clear=False)
    try:
        yield
    finally:
        cli.bad_build(local_fleet.fleet, local_fleet.state, region, None, None, clear=True)


@pytest.fixture
def bad_release(serving_fleet, metered_fleet, release, tmp_path):
    """bad_release(region, kind, amount) -> (run, the fleet before, after): with users on the fleet, a
    new commit released from a metered fleet file while `region`'s next build is bad."""

    def run(region: str, kind: str, amount: str, **changes: Any):
        path, fleet = metered(metered_fleet, tmp_path, **changes), serving_fleet.fleet
        before = snapshot(fleet)
        with users_running(serving_fleet, load_fleet(path)), bad_build(serving_fleet, region, kind, amount):
            done = release({"git_sha": new_commit(fleet, f"bad-{kind}")}, fleet_path=path)
        return done, before, snapshot(fleet)

    return run


def verdicts(run) -> dict[tuple[str, str], str]:
    """(region, check) -> the verdict line the run logged."""
    found = re.findall(r"\] (\S+) (\S+): ((?:pass|fail|inconclusive|skipped): [^\[]*)", run.output)
    return {(region, check): line.strip() for region, check, line in found}


def test_a_build_that_fails_users_stops_at_the_canary(serving_fleet, bad_release):
    started, fleet = time.monotonic(), serving_fleet.fleet
    run, before, after = bad_release("westus", "error-rate", "0.3")
    states = run.states()
    assert run.returncode != 0, run.tail()
    assert states["deploy_westus.gates"] == "success"
    assert states["deploy_westus.gate_metrics"] == "failed" and states["deploy_westus.rollback"] == "success"
    # The failure names region, check, observed value and threshold.
    line = verdicts(run)[("westus", "errors")]
    assert re.match(r"fail: error ratio 0\.[2-4]\d* > max 0\.0500 over 14 s \(\d+ requests\)", line), line
    assert re.search(r"westus: gate_metrics: westus errors: fail: error ratio 0\.\d+ > max 0\.0500", run.output)
    # The canary is back on the build it ran before, serving users again; no other region was touched.
    assert history(fleet, "westus")[-1].description == f"Rollback to {before['westus'].revision}"
    assert after["westus"].digest == before["westus"].digest and after["westus"].enabled
    for region in LATER_WAVES:
        assert states[names.region_task(region, names.DRAIN)] == "upstream_failed", region
        assert after[region] == before[region], region
    timed("metric gate: bad build at the canary", started)


def test_a_slow_build_in_wave_two_is_caught_only_by_the_comparison_and_held_back(serving_fleet, bad_release):
    """A slow build in eastus, which only the comparison with the regions still on the old build
    catches; with rollout.wave_quorum 1, wave 2 (eastus, northeurope) passes with northeurope, eastus
    is rolled back alone and held back, and the release goes on to wave 3."""
    started = time.monotonic()
    run, before, after = bad_release("eastus", "latency", "150", **{"rollout.wave_quorum": 1})
    states, seen = run.states(), verdicts(run)
    for key, line in sorted(seen.items()):
        print(key, line)
    # The canary (a good build there) passed every check, against the three regions still on the old build.
    assert states["deploy_westus.gate_metrics"] == "success"
    assert all(seen[("westus", c)].startswith("pass") for c in ("errors", "p95-latency", "p95-vs-previous")), seen
    assert "(eastus, northeurope, westeurope)" in seen[("westus", "p95-vs-previous")]
    # eastus: the absolute bound alone lets 150 ms more through (the histogram puts p95 in its
    # 100–250 ms bucket); the comparison with westeurope, still on the old build, does not.
    assert re.match(r"pass: p95 latency (1\d\d|2[0-4]\d)\.\d ms <= max 500\.0 ms", seen[("eastus", "p95-latency")])
    comparison = seen[("eastus", "p95-vs-previous")]
    assert re.match(r"fail: p95 latency \d+\.\d ms against \d+\.\d ms on previous \(westeurope\)", comparison)
    assert "threshold" in comparison and "Mann-Whitney U p=" in comparison
    assert states["deploy_eastus.gate_metrics"] == "failed" and states["deploy_eastus.rollback"] == "success"
    # One bad region of two: the wave passes, only eastus is rolled back, and the release reaches the rest.
    assert run.returncode == 0, run.tail()
    assert states["bake_after_wave_2"] == "success"
    assert "wave 2 passes: 1 of 2 regions passed, 1 needed; held back: eastus" in run.output
    digest = after["westus"].digest
    assert digest != before["westus"].digest
    for region in ("westus", "northeurope", "westeurope"):
        assert after[region].digest == digest and after[region].enabled, region
    # eastus serves its users the build it ran before, and the record says why it was held back.
    assert after["eastus"].digest == before["eastus"].digest and after["eastus"].enabled
    assert history(serving_fleet.fleet, "eastus")[-1].description == f"Rollback to {before['eastus'].revision}"
    recorded = run.recorded()
    assert recorded and recorded["digest"] == digest
    why = recorded["held_back"]["eastus"]
    assert why.startswith("gate_metrics: eastus p95-vs-previous: fail: p95 latency"), why
    timed("metric gate: slow build in wave 2, held back", started)


def test_a_window_without_enough_users_is_inconclusive(local_fleet, metered_fleet, tmp_path):
    """No release: the gate's own trigger, asked about a digest no user reached, against the real Prometheus."""
    from fanout.airflow.triggers import MetricGatesTrigger
    from fanout.records import FleetSnapshot

    started = time.monotonic()
    path = metered(metered_fleet, tmp_path, **{"gates.metrics.window_seconds": 6, "gates.metrics.step_seconds": 2})
    nobody = "sha256:" + "e" * 64
    outcomes = {}
    for policy in ("fail", "pass"):
        text = path.read_text().replace("inconclusive: fail", f"inconclusive: {policy}")
        path.write_text(text)
        assert load_fleet(path).gates.metrics.inconclusive == policy
        trigger = MetricGatesTrigger(
            fleet=FleetSnapshot.of_file(path).to_xcom(), region="westus", digest=nobody,
            window_start=time.time() - 6, baselines={"p95-vs-previous": ["eastus"]}, timeout_seconds=30,
        )  # fmt: skip
        outcomes[policy] = trigger.poll_inline(10)
    print(outcomes)
    assert outcomes["fail"]["status"] == "failed"
    assert "westus errors: inconclusive: 0 requests on the release digest in 6 s" in outcomes["fail"]["detail"]
    assert "gates.metrics.inconclusive: fail" in outcomes["fail"]["detail"]
    assert outcomes["pass"]["status"] == "ok"
    assert {v["outcome"] for v in outcomes["pass"]["verdicts"]} == {"inconclusive"}
    timed("metric gate: inconclusive", started)
