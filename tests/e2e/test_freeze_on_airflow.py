"""`fanout freeze / unfreeze / quarantine / audit` against the real Airflow stack: Airflow's auth
manager decides who may, and Airflow's own event log says who did. A hotfix waits for its named
approver, then passes a freeze."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from airflow_checks import Rest, fanout, fanout_trigger
from release_checks import new_commit, snapshot, timed

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


def test_a_hotfix_waits_for_its_approver_then_passes_a_freeze(airflow_stack, rest, local_fleet):
    started, fleet = time.monotonic(), local_fleet.fleet
    frozen = fanout(airflow_stack, "freeze", "--app", "hello", "--reason", "e2e: change freeze")
    assert frozen.returncode == 0, frozen.stderr
    sha, finished = new_commit(fleet, "e2e-hotfix"), {}
    run_id = f"hotfix__{sha[:12]}"
    argv = ("--app", "hello", "--git-sha", sha, "--run-id", run_id, "--hotfix", "INC-77: null deref", "--wait")
    running = threading.Thread(target=lambda: finished.update(done=fanout_trigger(airflow_stack, *argv)))
    running.start()
    try:
        wait_until(lambda: state_of(rest, run_id, names.APPROVE_HOTFIX) == "awaiting_input", 300, what="the approval")
        # As a person would: not within seconds of the request. Airflow 3.3 fails a task resumed
        # that soon after it parked (the stale executor event of apache/airflow#72716, see waits.py).
        time.sleep(SETTLE_SECONDS)
        # A viewer may not answer it (Airflow's auth manager); the named approver may.
        with pytest.raises(TriggerError, match="HTTP 403"):
            Rest(airflow_stack, user="auditor").respond("release_hello", run_id, names.APPROVE_HOTFIX, "Approve")
        rest.respond("release_hello", run_id, names.APPROVE_HOTFIX, "Approve")
        running.join(900)
    finally:
        fanout(airflow_stack, "unfreeze", "--app", "hello", "--reason", "e2e: hotfix done")
        running.join(900)
    done = finished["done"]
    assert done.returncode == 0, done.stderr[-4000:]
    digest = rest.xcom("release_hello", run_id, "build", "return_value")["digest"]
    assert {s.digest for s in snapshot(fleet).values()} == {digest}, "the approved hotfix passed the freeze"
    assert rest.xcom("release_hello", run_id, names.APPROVE_HOTFIX, "return_value")["approved_by"] == "admin"
    audit = fanout(airflow_stack, "audit", "--app", "hello")
    assert f"hotfix {run_id} approved by admin: INC-77: null deref" in audit.stdout, audit.stdout
    timed("e2e: hotfix approved, through a freeze", started)


def state_of(rest: Rest, run_id: str, task_id: str) -> str | None:
    if rest.get_run("release_hello", run_id) is None:
        return None
    return rest.tasks("release_hello", run_id).get(task_id, {}).get("state")
