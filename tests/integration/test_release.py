"""The release DAG on the real local fleet (control planes, registries, Traffic Manager stand-in):
a full release wave by wave, a re-release that changes nothing, a dry run, refused conf.

The tests share the session's fleet and run in file order: the first one releases a copy of
the repo's app with its own VERSION (so the digest is new to every region, whatever earlier
tests released), the next ones check that repeating or refusing a release leaves that alone."""

from __future__ import annotations

import itertools
import time

import pytest
from release_checks import RegionState, TrafficWatch, annotations, history, new_commit, snapshot, timed, variant_fleet

pytestmark = pytest.mark.localfleet

# Plan of the local fleet (include/fleets/local.yaml): westus | eastus, northeurope | westeurope.
WAVES = [["westus"], ["eastus", "northeurope"], ["westeurope"]]
STEPS = ["drain", "dns_settle", "helm_deploy", "gates", "restore"]

# What the first test released, for the ones after it (each can also run alone).
released: dict[str, dict[str, RegionState]] = {}


@pytest.fixture(scope="module")
def app_fleet(local_fleet, tmp_path_factory):
    """A copy of the session fleet's file (the release reads it like any fleet file)."""
    return variant_fleet(local_fleet.fleet, tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def sha(local_fleet) -> str:
    """One merge for this module's releases, new to every region: the same commit must give the same digest."""
    return new_commit(local_fleet.fleet, "release")


def all_live(fleet, state: dict[str, RegionState]) -> None:
    digests = {s.digest for s in state.values()}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:"), state
    assert all(s.enabled and s.weight == 100 for s in state.values()), state


def ensure_released(local_fleet, release, app_fleet, sha) -> dict[str, RegionState]:
    if "head" not in released:
        run = release({"git_sha": sha}, fleet_path=app_fleet)
        assert run.returncode == 0, run.tail()
        released["head"] = snapshot(local_fleet.fleet)
    return released["head"]


def test_a_release_reaches_every_region_wave_by_wave(local_fleet, release, app_fleet, sha):
    started = time.monotonic()
    fleet = local_fleet.fleet
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": sha[:10]}, fleet_path=app_fleet)  # a short sha, as people type it
    assert run.returncode == 0, run.tail()
    after = snapshot(fleet)
    released["head"] = after
    print(watch.report())

    # Every region serves the one digest just built, on a new Helm revision,
    # annotated with this run, and takes traffic at its full weight again.
    all_live(fleet, after)
    digest = after["westus"].digest
    assert f"as {digest}" in run.segments["build"]
    assert digest not in {s.digest for s in before.values()}, before
    # The run recorded the full commit it resolved on the git server, and which ref it came from.
    for region in fleet.region_names:
        assert after[region].revision == before[region].revision + 1, (region, before, after)
        notes = annotations(fleet, region)
        assert notes["fanout.dev/run-id"] == run.run_id
        assert (notes["fanout.dev/git-sha"], notes["fanout.dev/source-ref"]) == (sha, "main"), notes
        assert history(fleet, region)[-1].description == f"fanout run {run.run_id} git {sha} ref main"

    # The waves really ran in order: every task of a wave finished before the next wave drained.
    for earlier, later in itertools.pairwise(WAVES):
        last_end = max(run.ended[f"deploy_{r}.{step}"] for r in earlier for step in STEPS)
        first_start = min(run.started[f"deploy_{r}.drain"] for r in later)
        assert last_end < first_start, (earlier, later)
    # …and each region was deployed only after its own replica had the digest.
    for region in fleet.region_names:
        assert run.ended[f"wait_replication_{region}"] < run.started[f"deploy_{region}.helm_deploy"]

    # Traffic: each region was drained during its wave, never more than one wave's worth
    # (2 of 4 by max_drain_share 50 %), and min_serving_regions (2) held at every sample.
    assert watch.ever_drained() == set(fleet.region_names), watch.report()
    assert watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    states = run.states()
    not_run = {t: s for t, s in states.items() if s != "success"}
    assert not_run == {f"deploy_{r}.rollback": "skipped" for r in fleet.region_names}, not_run
    timed("happy path", started)


def test_releasing_a_live_digest_changes_nothing(local_fleet, release, app_fleet, sha):
    started = time.monotonic()
    fleet = local_fleet.fleet
    before = ensure_released(local_fleet, release, app_fleet, sha)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": sha}, fleet_path=app_fleet)
    assert run.returncode == 0, run.tail()
    after = snapshot(fleet)

    # The same commit is the same digest: the home registry has it, labelled, so nothing is built …
    assert f"reusing {before['westus'].digest}" in run.segments["build"], run.segments["build"]
    assert "built and pushed" not in run.segments["build"]
    # … so no region is upgraded: Helm revisions, digests and traffic end exactly as they were.
    for region in fleet.region_names:
        assert "no upgrade" in run.segments[f"deploy_{region}.helm_deploy"], region
    assert after == before
    # Gates and restore still ran: a re-release checks the fleet, it does not skip the checks.
    states = run.states()
    for region in fleet.region_names:
        for step in STEPS:
            assert states[f"deploy_{region}.{step}"] == "success", (region, step)
    assert watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    timed("already-live digest", started)


def test_dry_run_prints_the_plan_and_changes_nothing(local_fleet, release):
    started = time.monotonic()
    fleet = local_fleet.fleet
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": "1234567", "dry_run": True})
    assert run.returncode == 0, run.tail()
    assert "wave 1 (canary): westus" in run.segments["validate"]
    assert "wave 2: eastus, northeurope" in run.segments["validate"]
    assert "wave 3: westeurope" in run.segments["validate"]
    states = run.states()
    assert states.pop("check_superseded") == "success"  # nothing was queued behind it
    assert states.pop("validate") == "success"
    assert set(states.values()) == {"skipped"}, states
    assert snapshot(fleet) == before
    assert watch.ever_drained() == set(), watch.report()
    timed("dry run", started)


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"git_sha": "HEAD"}, "Invalid input for param git_sha"),
        ({"git_sha": "1234567", "regions": ["mars"]}, "Invalid input for param regions"),
        # Airflow itself ignores conf keys no param declares; the validate task refuses them.
        ({"git_sha": "1234567", "regoins": ["westus"]}, "conf: unknown key(s) 'regoins'"),
    ],
    ids=["git_sha", "regions", "unknown-key"],
)
def test_malformed_conf_is_refused_before_anything_changes(local_fleet, release, conf, named):
    started = time.monotonic()
    fleet = local_fleet.fleet
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release(conf, timeout=240)
    assert run.returncode != 0, run.tail()
    assert named in run.output, run.tail()
    assert snapshot(fleet) == before
    assert watch.ever_drained() == set(), watch.report()
    if "validate" in run.started:  # the run was created: nothing after validate may have run
        states = run.states()
        assert states.pop("check_superseded") == "success"
        assert states.pop("validate") == "failed"
        assert set(states.values()) <= {"upstream_failed", "skipped"}, states
    timed(f"malformed conf {conf}", started)
