"""What users see during a release on the real local fleet: they reach the app through the
profile's DNS name (the stand-in's name server), with the TTL, and every request is recorded.

Per routing method the promise holds (no failed request, none served by a region between its drain
+ TTL and its restore or by a region changing under it, the release everywhere one TTL after the
last restore); with the DNS waits turned off the same recorder catches requests served mid-change.
Each test restarts only the session fleet's Traffic Manager stand-in from a variant fleet file
(routing method, TTL, priorities), and puts the original back afterwards."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from release_checks import new_commit, serving, snapshot, variant_fleet

from fanout.airflow.dns_waits import SKIP_ENV
from fanout.fleet import load_fleet
from localfleet import cli, procs
from localfleet.tm_store import STATE_FILE
from localfleet.traffic import users
from localfleet.traffic.promise import Summary, read_changes, summarize

pytestmark = pytest.mark.localfleet
REGIONS = ["eastus", "westus", "northeurope", "westeurope"]


def restart_traffic_manager(path: Path, state: Path) -> None:
    procs.stop(cli.TM_PROC, state)
    (state / STATE_FILE).unlink(missing_ok=True)  # a fresh profile from the file: method, TTL, statuses
    cli.start_traffic_manager(load_fleet(path), state)


@contextlib.contextmanager
def profile(local_fleet, folder: Path, **changes: Any) -> Iterator[Path]:
    path = variant_fleet(local_fleet.fleet, folder, **changes)
    restart_traffic_manager(path, local_fleet.state)
    try:
        yield path
    finally:
        users.stop(local_fleet.state)
        restart_traffic_manager(local_fleet.path, local_fleet.state)


def watched_release(release, local_fleet, path: Path) -> tuple[Any, Summary]:
    fleet, state = load_fleet(path), local_fleet.state
    if any(serving(local_fleet.fleet, r) is None for r in REGIONS):
        # A fleet that never had the app fails every user request: release it once, unwatched.
        first = release({"git_sha": new_commit(local_fleet.fleet)}, fleet_path=local_fleet.path)
        assert first.returncode == 0, first.tail()
    users.start(fleet, state, users=8, rate=4, duration=900)
    time.sleep(3)  # every user has resolved and sent a few requests
    since = time.time()
    run = release({"git_sha": new_commit(local_fleet.fleet)}, fleet_path=path)
    until = time.time()
    time.sleep(fleet.traffic_manager.dns_ttl_seconds + 2)
    users.stop(state)
    digest = re.search(r"as (sha256:[0-9a-f]{64})", run.segments.get("build", ""))
    endpoint_region = {r.endpoint.name: r.name for r in fleet.regions}
    summary = summarize(
        users.read(state), read_changes(state), endpoint_region, ttl=fleet.traffic_manager.dns_ttl_seconds,
        digest=digest.group(1) if digest else "?", since=since, until=until,
    )  # fmt: skip
    print("\n".join(summary.lines()))
    return run, summary


def priority_regions(local_fleet) -> list[dict[str, Any]]:
    import yaml

    regions = yaml.safe_load(local_fleet.path.read_text())["regions"]
    for n, region in enumerate(regions, start=1):
        region["endpoint"]["priority"] = n
        # eastus (1) and westus (2) each carry everyone when the other is out.
        region["capacity_share"] = 0.5 if region["name"] in ("eastus", "westus") else None
    return regions


# Each geography answers through a child profile (Priority) whose fallback takes it while the primary
# is drained: a Geographic fleet that is released instead of refused.
NESTED = [
    {"endpoint": "america", "profile": "hello-america", "regions": ["eastus", "westus"], "geo_mapping": ["GEO-NA"]},
    {"endpoint": "europe", "profile": "hello-europe", "regions": ["westeurope", "northeurope"],
     "geo_mapping": ["GEO-EU", "WORLD"]},
]  # fmt: skip


# Weighted in make test; the other methods keep the same promise through other answers (make test-matrix).
@pytest.mark.parametrize(
    "method",
    [
        "Weighted",
        pytest.param("Performance", marks=pytest.mark.matrix),
        pytest.param("Priority", marks=pytest.mark.matrix),
        pytest.param("Geographic-nested", marks=pytest.mark.matrix),
    ],
)
def test_a_release_keeps_the_promise_to_users(local_fleet, serving_fleet, release, tmp_path, method):
    # serving_fleet: an empty fleet's first release runs under the session's own (Weighted) profile,
    # before this test swaps the stand-in for a variant the session's fleet file does not match.
    changes: dict[str, Any] = {"traffic_manager.routing_method": method.removesuffix("-nested")}
    if method == "Priority":
        changes["regions"] = priority_regions(local_fleet)
    if method == "Geographic-nested":
        changes["traffic_manager.nested"] = NESTED
    with profile(local_fleet, tmp_path, **changes) as path:
        run, summary = watched_release(release, local_fleet, path)
    assert run.returncode == 0, run.tail()
    assert summary.kept, summary.lines()
    # Helm started only once the edge saw users gone (the trigger's line, in the worker under dags test).
    assert run.segments["deploy_eastus.dns_settle"] and "eastus: confirm_drained passed after" in run.output
    served = {region for region, _ in summary.per_region_phase}
    if method == "Priority":
        # Everyone on eastus; while it is drained everyone on westus; afterwards eastus again.
        assert (
            summary.per_region_phase[("eastus", "before")] > 0 and summary.per_region_phase[("westus", "before")] == 0
        )
        assert summary.per_region_phase[("westus", "during")] > 0
        assert summary.per_region_phase[("eastus", "after")] > 0 and summary.per_region_phase[("westus", "after")] == 0
    elif method == "Performance":
        assert served >= {"eastus", "westeurope"}  # each location's closest region
    elif method == "Geographic-nested":
        # The primaries before and after; each fallback only while its primary is drained.
        phase = summary.per_region_phase
        assert phase[("eastus", "before")] > 0 and phase[("westeurope", "before")] > 0
        assert phase[("westus", "before")] == 0 and phase[("northeurope", "before")] == 0
        assert phase[("westus", "during")] > 0 and phase[("northeurope", "during")] > 0
        assert "via nested 'america' answered by fallback westus" in run.segments["validate"]
    else:
        assert served == set(REGIONS)


def test_with_the_dns_waits_off_the_recorder_catches_requests_served_mid_change(
    local_fleet, release, tmp_path, monkeypatch
):
    monkeypatch.setenv(SKIP_ENV, "1")  # the negative control: Helm starts right after the drain
    # Users keep a drained region's answer up to the TTL: long enough that a Helm upgrade slowed by a
    # loaded machine (make test's other worker) still changes the region while some of them are on it.
    with profile(local_fleet, tmp_path, **{"traffic_manager.dns_ttl_seconds": 20}) as path:
        run, summary = watched_release(release, local_fleet, path)
    assert run.returncode == 0, run.tail()
    assert summary.mid_change, summary.lines()


def test_a_geography_s_only_answer_is_refused_before_anything_changes(local_fleet, release, tmp_path):
    import yaml

    regions = yaml.safe_load(local_fleet.path.read_text())["regions"]
    codes = {"eastus": ["GEO-NA"], "westus": ["US"], "northeurope": ["GEO-EU"], "westeurope": ["WORLD"]}
    for region in regions:
        region["endpoint"]["geo_mapping"] = codes[region["name"]]
    before = snapshot(local_fleet.fleet)
    with profile(local_fleet, tmp_path, **{"traffic_manager.routing_method": "Geographic", "regions": regions}) as path:
        run = release({"git_sha": new_commit(local_fleet.fleet)}, fleet_path=path)
        assert run.returncode != 0
        assert "draining westus leaves geography US with no answer" in run.segments["validate"]
        assert run.states().get("build") in (None, "upstream_failed")
        assert snapshot(local_fleet.fleet) == before


@pytest.mark.matrix  # a fault of the users' side: in the fault matrix (make test-matrix)
def test_a_stuck_resolver_stops_the_release_before_helm_with_a_clear_message(local_fleet, release, tmp_path, faults):
    changes = {"traffic_manager.routing_method": "Priority", "regions": priority_regions(local_fleet)}
    before = snapshot(local_fleet.fleet)
    with profile(local_fleet, tmp_path, **changes) as path:
        users.start(load_fleet(path), local_fleet.state, users=4, rate=4, duration=600)
        time.sleep(2)
        faults(resolver_stuck=True)
        # Only eastus: every user holds its answer, so the stuck resolvers keep coming after its drain.
        run = release({"git_sha": new_commit(local_fleet.fleet), "regions": ["eastus"]}, fleet_path=path)
    assert run.returncode != 0
    log = run.segments["deploy_eastus.dns_settle"]
    assert "users still reach eastus" in log and "a resolver holds the old answer; nothing was deployed" in log
    assert run.states()["deploy_eastus.helm_deploy"] == "upstream_failed"
    assert snapshot(local_fleet.fleet)["eastus"].revision == before["eastus"].revision
