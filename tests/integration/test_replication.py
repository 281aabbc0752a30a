"""Promise 2 on the real local fleet: a region is deployed only after its own registry replica
serves the release digest, and waiting for it is a real, deferred wait."""

from __future__ import annotations

import json
import re
import time

import pytest
from release_checks import new_commit, snapshot, timed, variant_fleet

pytestmark = pytest.mark.localfleet

LAG = 12  # long enough that the wait defers to the triggerer, twice any other region's wait
SLOW = "northeurope"  # wave 2; eastus is the home registry, which never lags
REFUSING = "westus"  # wave 1, not home: the build's push still succeeds


def test_a_lagging_replica_is_waited_for(local_fleet, release, faults, tmp_path):
    started = time.monotonic()
    fleet = local_fleet.fleet
    # A new commit gives a new digest, so no replica has it yet. Only SLOW lags; the
    # others get it at once, so any long wait can only be SLOW's.
    path = variant_fleet(fleet, tmp_path)
    faults(replica_lag={r: (LAG if r == SLOW else 0) for r in fleet.region_names if r != fleet.registry.home})
    run = release({"git_sha": new_commit(fleet)}, fleet_path=path)
    assert run.returncode == 0, run.tail()
    digest = snapshot(fleet)[SLOW].digest
    assert f"as {digest}" in run.segments["build"]

    # The replicator's own record: SLOW got the digest LAG seconds after home had it.
    copies = json.loads((local_fleet.state / "replication.json").read_text())["digests"][digest]
    seen, arrived = copies["seen"], copies["regions"][SLOW]["at"]
    assert arrived - seen >= LAG, copies

    wait = f"wait_replication_{SLOW}"
    log = run.segments[wait]
    print(f"{wait}: {run.duration(wait):.1f} s; replica got it {arrived - seen:.1f} s after home")
    # The task deferred (its trigger ran) instead of holding a worker slot…
    assert "deferring" in log and "running trigger in line" in log, log[-3000:]
    # …did not pass before the replica had the digest, and so lasted at least LAG since the push.
    assert run.ended[wait] >= arrived
    assert run.ended[wait] - seen >= LAG
    assert run.started[f"deploy_{SLOW}.helm_deploy"] > arrived
    # The other replicas had it at once: none of them waited anywhere near the lag.
    for region in fleet.region_names:
        if region != SLOW:
            other = f"wait_replication_{region}"
            print(f"{other}: {run.duration(other):.1f} s")
            assert run.duration(other) < LAG / 2, (other, run.segments[other][-2000:])
    timed("replication lag", started)


def test_replicas_that_never_sync_are_named_at_once_and_share_one_deadline(local_fleet, release, faults, tmp_path):
    """`airflow dags test` (make demo) runs the regions' waits one after another. A replica that
    never syncs is named as soon as its wait gives up, and a second stuck replica does not cost a
    second full timeout: replication started at the push. (That a wait says what it still waits
    for is tests/unit/test_waits.py's.)"""
    fleet = local_fleet.fleet
    stuck = ["northeurope", "westeurope"]  # a pair: waves 2 and 3, so the run touches nothing else
    before = snapshot(fleet)
    path = variant_fleet(fleet, tmp_path, **{"registry.replication_timeout_seconds": 12})
    faults(replica_stuck=stuck)
    run = release({"git_sha": new_commit(fleet), "regions": stuck}, fleet_path=path)
    assert run.returncode != 0, run.tail()
    first, second = sorted((f"wait_replication_{r}" for r in stuck), key=lambda task: run.ended[task])
    for task in (first, second):
        region = task.removeprefix("wait_replication_")
        cause = rf"{region}: wait_replication failed: the registry replica still lacks sha256:\w{{64}} after \d+ s"
        assert re.search(cause, run.segments[task]), run.segments[task][-2000:]
    print(f"{first}: {run.duration(first):.1f} s, {second}: {run.duration(second):.1f} s")
    assert run.duration(second) < 10, run.segments[second][-2000:]
    assert snapshot(fleet) == before


@pytest.mark.parametrize("status", [403])
def test_a_replica_that_refuses_the_credential_ends_the_wait_at_once(local_fleet, release, faults, status):
    """Item 4 of issue 13: 401/403 from a replica cannot heal by waiting. REFUSING is wave 1, so
    the failed wait stops the release before any region is drained or deployed. (401 takes the same
    path: the front's answer is tests/localfleet/test_registry.py's, the adapter's the contract tests'.)"""
    started = time.monotonic()
    fleet = local_fleet.fleet
    endpoint = fleet.registry.endpoint(REFUSING)
    before = snapshot(fleet)
    faults(registry_auth={REFUSING: status})
    run = release({"git_sha": new_commit(fleet)}, fleet_path=local_fleet.path)
    after = snapshot(fleet)
    assert run.returncode != 0, run.tail()
    wait, states = f"wait_replication_{REFUSING}", run.states()
    assert states[wait] == "failed", states
    cause = f"{REFUSING}: wait_replication: registry {endpoint}: HEAD manifest answered {status}"
    assert cause in run.output, run.tail()
    # At once: far below registry.replication_timeout_seconds, and without deferring to wait on.
    print(f"{wait}: {run.duration(wait):.1f} s of a {fleet.registry.replication_timeout_seconds} s timeout")
    assert run.duration(wait) < 10 <= fleet.registry.replication_timeout_seconds / 10, run.segments[wait][-2000:]
    # No region was touched: no drain, no Helm, traffic and releases as they were.
    ran = [t for t, s in states.items() if t.startswith("deploy_") and s not in ("upstream_failed", "skipped", None)]
    assert not ran, {t: states[t] for t in ran}
    assert after == before
    timed(f"registry answers {status}", started)
