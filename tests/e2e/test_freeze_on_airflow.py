"""`fanout freeze / unfreeze / audit` against the real Airflow stack: Airflow's auth manager decides
who may freeze, and Airflow's own event log says who did."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow_checks import fanout

from fanout import names
from fanout.controls import parse_freeze

pytestmark = [pytest.mark.localfleet, pytest.mark.e2e]


def test_a_freeze_is_held_by_airflow_audited_with_its_actor_and_refused_to_a_viewer(airflow_stack, rest):
    key = names.freeze_variable("hello")
    freeze = ("freeze", "--app", "hello", "--regions", "eastus", "--reason")
    refused = fanout(airflow_stack, *freeze, "try", user="auditor")
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
    audit = fanout(airflow_stack, "audit", "--app", "hello")
    assert audit.returncode == 0, audit.stderr
    lines = audit.stdout.splitlines()
    print(audit.stdout)
    # Newest first, each with the user Airflow signed in, not the one Fanout wrote down.
    assert "  admin  unfreeze by admin: e2e over" in lines[0], lines
    assert "  admin  freeze eastus by admin: e2e incident" in lines[1], lines
    assert not any("try" in line for line in lines)
