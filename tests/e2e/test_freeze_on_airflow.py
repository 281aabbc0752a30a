"""`fanout freeze / unfreeze / quarantine / audit` against the real Airflow stack: Airflow's auth
manager decides who may, and Airflow's own event log says who did."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow_checks import fanout

from fanout import names
from fanout.controls import parse_freeze, parse_quarantine

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
