"""Promise 5 on the real local fleet: a gate fails in the second wave.

eastus (wave 2 of westus | eastus, northeurope | westeurope) answers 503 on /healthz from
before the run. Its HTTP gate must fail; eastus goes back to its previous Helm revision;
westeurope (wave 3) never starts; the run fails naming region, gate and cause; and traffic
stays within the rules all along: never every endpoint disabled, min_serving_regions (2)
respected, eastus enabled at the end only if it is healthy.

Each test releases a new commit (the app with a unique VERSION, so a new digest) from a variant
fleet file (same running fleet, the HTTP gate giving up after 10 s instead of 120 s)."""

from __future__ import annotations

import re
import time

import pytest
from release_checks import (
    DIGEST,
    TrafficWatch,
    healthy,
    history,
    new_commit,
    set_traffic,
    snapshot,
    timed,
    traffic,
    variant_fleet,
)

from localfleet.testing import wait_until

pytestmark = pytest.mark.localfleet

FAILING, SAME_WAVE, EARLIER, LATER = "eastus", "northeurope", "westus", "westeurope"
REGION_STEPS = ["drain", "dns_settle", "helm_deploy", "gates", "restore"]


def fail_eastus(local_fleet, release, faults, folder, policy):
    fleet = local_fleet.fleet
    path = variant_fleet(fleet, folder, **{"gates.http.timeout_seconds": 10, "failure_policy": policy})
    before = snapshot(fleet)
    faults(edge_unhealthy=[FAILING])
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": new_commit(fleet)}, fleet_path=path)
    after = snapshot(fleet)
    print(watch.report())
    for region in fleet.region_names:
        print(f"{region}: {before[region]} -> {after[region]}")
    return run, before, after, watch


def assert_common(fleet, run, before, after, watch):
    states = run.states()
    # The run fails, and says which region, which gate and why.
    assert run.returncode != 0, run.tail()
    assert "release of hello sha256:" in run.output
    assert f"{FAILING}: gate_http: /healthz answered 503" in run.output, run.tail()
    assert states["deploy_eastus.gates"] == "failed"
    assert states["deploy_eastus.rollback"] == "success"
    assert states["rebalance"] == "failed"

    # eastus went back to the revision it ran before and serves the digest it served before.
    last = history(fleet, FAILING)[-1]
    assert last.description == f"Rollback to {before[FAILING].revision}", last
    assert after[FAILING].digest == before[FAILING].digest

    # Wave 3 never started: none of its tasks ran, and the region was not touched.
    for step in REGION_STEPS:
        assert states[f"deploy_{LATER}.{step}"] == "upstream_failed", step
    assert states[f"deploy_{LATER}.rollback"] == "skipped"
    # The wave's verdict (2 of 2 needed) stops the release; the run's message names only the cause.
    assert states["bake_after_wave_2"] == "failed"
    assert "wave 2 fails: 1 of 2 regions passed, 2 needed; held back: eastus" in run.output
    verdict = re.search(r"release of hello sha256:\S+ failed — .*", run.output)
    assert verdict and "bake_after_wave" not in verdict.group(0), verdict
    assert after[LATER] == before[LATER]

    # Traffic: never every endpoint disabled, min_serving_regions held at every sample,
    # and eastus — still unhealthy — ends drained; every other region ends enabled.
    assert watch.samples and watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    assert not healthy(fleet, FAILING)
    assert not after[FAILING].enabled
    assert all(after[r].enabled and after[r].weight == 100 for r in fleet.region_names if r != FAILING), after


def heal(local_fleet, faults):
    """Undo the fault and give eastus its traffic back, as an operator would once it is healthy."""
    faults(edge_unhealthy=None)
    wait_until(lambda: healthy(local_fleet.fleet, FAILING), timeout=30, what=f"{FAILING} healthy again")
    set_traffic(local_fleet.fleet, FAILING, enabled=True)
    assert all(e.enabled for e in traffic(local_fleet.fleet).values())


def test_a_gate_failure_in_wave_two_rolls_back_and_halts(serving_fleet, release, faults, tmp_path):
    local_fleet = serving_fleet
    started = time.monotonic()
    fleet = local_fleet.fleet
    try:
        run, before, after, watch = fail_eastus(local_fleet, release, faults, tmp_path, "halt")
        assert_common(fleet, run, before, after, watch)
        new = DIGEST.search(run.segments["build"].split(" as ", 1)[1]).group(0)
        # halt: the regions that passed keep the new release.
        for region in (EARLIER, SAME_WAVE):
            assert after[region].digest == new != before[region].digest, region
            assert after[region].revision == before[region].revision + 1, region
        assert "rollback_all" not in run.states()
    finally:
        heal(local_fleet, faults)
    timed("gate failure, halt", started)


@pytest.mark.matrix  # the other failure policy of the same failure (make test-matrix)
def test_rollback_all_returns_every_changed_region(serving_fleet, release, faults, tmp_path):
    local_fleet = serving_fleet
    started = time.monotonic()
    fleet = local_fleet.fleet
    try:
        run, before, after, watch = fail_eastus(local_fleet, release, faults, tmp_path, "rollback-all")
        assert_common(fleet, run, before, after, watch)
        assert run.states()["rollback_all"] == "success"
        # rollback-all: the regions that passed go back too, each to the revision it ran before.
        for region in (EARLIER, SAME_WAVE):
            assert history(fleet, region)[-1].description == f"Rollback to {before[region].revision}", region
            assert after[region].digest == before[region].digest, region
        assert f"rollback-all: {EARLIER} to revision {before[EARLIER].revision}" in run.output, run.tail()
    finally:
        heal(local_fleet, faults)
    timed("gate failure, rollback-all", started)
