"""`fanout freeze / unfreeze / quarantine / audit` against the real Airflow stack: Airflow's auth
manager decides who may, and Airflow's own event log says who did. A hotfix waits for its named
approver, then passes a freeze."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from airflow_checks import Rest, fanout, fanout_trigger
from release_checks import new_commit, snapshot, timed, tm_client

from fanout import names
from fanout.airflow.waits import SETTLE_SECONDS
from fanout.controls import parse_freeze, parse_quarantine
from fanout.trigger import TriggerError
from localfleet.testing import wait_until

pytestmark = [pytest.mark.localfleet, pytest.mark.e2e]


def test_freeze_and_quarantine_are_held_by_airflow_audited_once_with_their_actor_and_refused_to_a_viewer(
    airflow_stack, rest
):
    key, digest = names.freeze_variable("hello"), "sha256:" + "d" * 64
    freeze = ("freeze", "--app", "hello", "--regions", "eastus", "--reason")
    refused = fanout(airflow_stack, *freeze, "viewer attempt", user="auditor")
    assert refused.returncode != 0 and "HTTP 403" in refused.stderr, refused.stderr
    assert rest.get_variable(key) is None
    done = fanout(airflow_stack, *freeze, "e2e incident")
    try:
        assert done.returncode == 0, done.stderr
        assert "hello: frozen (eastus) by admin at" in done.stdout
        held, now = parse_freeze(rest.get_variable(key)), datetime.now(UTC)
        assert held is not None and held.covers("eastus", now) and not held.covers("westus", now)
    finally:
        lifted = fanout(airflow_stack, "unfreeze", "--app", "hello", "--reason", "e2e over")
    assert lifted.returncode == 0 and "unfrozen (eastus) by admin: e2e over" in lifted.stdout, lifted.stderr
    assert parse_freeze(rest.get_variable(key)) is None
    bad = fanout(airflow_stack, "quarantine", "--app", "hello", digest, "--reason", "e2e bad build")
    assert bad.returncode == 0, bad.stderr
    assert parse_quarantine(rest.get_variable(names.quarantine_variable("hello", digest)), digest) is not None
    audit = fanout(airflow_stack, "audit", "--app", "hello", user="admin")
    assert audit.returncode == 0, audit.stderr
    print(audit.stdout)
    # Each action once, newest first, with the user Airflow signed in; the refused attempt is not one.
    assert [line.split("  ", 1)[1] for line in audit.stdout.splitlines()] == [
        f"admin  quarantine {digest} by admin: e2e bad build",
        "admin  unfreeze by admin: e2e over",
        "admin  freeze eastus by admin: e2e incident",
    ]


def test_a_hotfix_waits_for_its_approver_then_passes_a_freeze_but_not_a_pause(airflow_stack, rest, local_fleet):
    """A hotfix of the canary region while the app is frozen and paused: it waits for its named
    approver, passes the freeze, and its drain still waits in the triggerer for `fanout resume`."""
    started, fleet, region = time.monotonic(), local_fleet.fleet, local_fleet.fleet.rollout.canary[0]
    for command in ("freeze", "pause"):
        done = fanout(airflow_stack, command, "--app", "hello", "--reason", f"e2e: {command}")
        assert done.returncode == 0, done.stderr
    before, tm, drain = snapshot(fleet), tm_client(fleet), f"deploy_{region}.drain"
    sha, finished = new_commit(fleet, "e2e-hotfix"), {}
    run_id = f"hotfix__{sha[:12]}"
    argv = (
        "--app",
        "hello",
        "--git-sha",
        sha,
        "--regions",
        region,
        "--run-id",
        run_id,
        "--hotfix",
        "INC-77: x",
        "--wait",
    )
    running = threading.Thread(target=lambda: finished.update(done=fanout_trigger(airflow_stack, *argv)))
    running.start()
    try:
        wait_until(lambda: state_of(rest, run_id, names.APPROVE_HOTFIX) == "awaiting_input", 300, what="the approval")
        parked = time.monotonic()
        # Where the approver looks: the Fanout page shows the approval, its reason and where to answer it.
        page = rest.call("GET", "/fanout/hello/data")
        waiting = {a["task_id"]: a for a in page["approvals"]}[names.APPROVE_HOTFIX]
        assert waiting["hotfix"]["hotfix_reason"] == "INC-77: x", waiting
        assert waiting["link"] == f"/dags/release_hello/runs/{run_id}/tasks/{names.APPROVE_HOTFIX}/required_actions"
        # As a person would: not within seconds of the request. Airflow 3.3 fails a task resumed
        # that soon after it parked (the stale executor event of apache/airflow#72716, see waits.py).
        time.sleep(max(0.0, SETTLE_SECONDS - (time.monotonic() - parked)))
        # A viewer may not answer it (Airflow's auth manager); the named approver may.
        with pytest.raises(TriggerError, match="HTTP 403"):
            Rest(airflow_stack, user="auditor").respond("release_hello", run_id, names.APPROVE_HOTFIX, "Approve")
        rest.respond("release_hello", run_id, names.APPROVE_HOTFIX, "Approve")
        # Past the freeze, held by the pause: the drain waits deferred, the region untouched.
        wait_until(lambda: state_of(rest, run_id, drain) == "deferred", 300, what="the drain held by the pause")
        assert tm.endpoints()[fleet.region(region).endpoint.name].enabled and snapshot(fleet) == before
    finally:
        for command in ("resume", "unfreeze"):
            fanout(airflow_stack, command, "--app", "hello", "--reason", "e2e: hotfix done")
        running.join(900)
    done = finished["done"]
    assert done.returncode == 0, done.stderr[-4000:]
    digest, after = rest.xcom("release_hello", run_id, "build", "return_value")["digest"], snapshot(fleet)
    assert after[region].digest == digest, "the approved hotfix passed the freeze"
    assert {r: s for r, s in after.items() if r != region} == {r: s for r, s in before.items() if r != region}
    assert rest.xcom("release_hello", run_id, drain, "return_value")["held_seconds"] > SETTLE_SECONDS - 1
    assert rest.xcom("release_hello", run_id, names.APPROVE_HOTFIX, "return_value")["approved_by"] == "admin"
    audit = fanout(airflow_stack, "audit", "--app", "hello")
    assert f"hotfix {run_id} approved by admin: INC-77: x" in audit.stdout, audit.stdout
    timed("e2e: hotfix approved, through a freeze, held by a pause", started)


def state_of(rest: Rest, run_id: str, task_id: str) -> str | None:
    if rest.get_run("release_hello", run_id) is None:
        return None
    return rest.tasks("release_hello", run_id).get(task_id, {}).get("state")
