"""Notifications on the real local fleet, received by a real HTTP receiver on loopback: the fleet
file names an Airflow connection (here an AIRFLOW_CONN_ variable, as a deployment's secrets backend
would hold it) whose Apprise config is the receiver's json:// URL, and the release DAG's callbacks
post to it through Airflow's Apprise notifier.

A successful release sends "started" and "succeeded", nothing else; a release whose HTTP gate fails
in eastus sends exactly one failure message, naming region, gate and cause (and eastus's rollback),
and the consistency check then tells the regions it left on the failed build, once."""

from __future__ import annotations

import pytest
from release_checks import new_commit, variant_fleet

from tests.receiver import Receiver

pytestmark = pytest.mark.localfleet

CONN = "fanout_notify"
UI = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def notifying(local_fleet, receiver, tmp_path, monkeypatch):
    """A copy of the session fleet's file with notifications to the receiver (the HTTP gate giving up after 10 s)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", receiver.connection())
    receiver.received.clear()
    return variant_fleet(
        local_fleet.fleet, tmp_path, notifications={"conn_id": CONN, "ui_url": UI}, **{"gates.http.timeout_seconds": 10}
    )


def events(receiver: Receiver) -> list[str]:
    return [r["title"].split(": ", 1)[1].split(" —")[0] for r in receiver.received]


def test_a_successful_release_sends_started_and_succeeded(local_fleet, release, receiver, notifying):
    sha = new_commit(local_fleet.fleet, "notify")
    run = release({"git_sha": sha}, fleet_path=notifying)
    assert run.returncode == 0, run.tail()
    assert events(receiver) == ["release started", "release succeeded"], receiver.received
    started, succeeded = receiver.received
    assert (
        f"git {sha[:12]} (main)" in started["message"]
        and "westus | eastus, northeurope | westeurope" in started["message"]
    )
    assert succeeded["type"] == "success" and f"git {sha[:12]}" in succeeded["message"]
    assert f"{UI}/dags/release_hello/runs/" in succeeded["message"]


def test_a_failing_release_sends_one_failure_naming_region_gate_and_cause(
    serving_fleet, release, run_dag, faults, receiver, notifying
):
    # The consistency check tells drift when it first sees it: let it see the fleet as it is first.
    assert run_dag("fleet_consistency_hello", {}, fleet_path=notifying).returncode == 0
    receiver.received.clear()
    faults(edge_unhealthy=["eastus"])
    run = release({"git_sha": new_commit(serving_fleet.fleet, "notify-fail")}, fleet_path=notifying)
    assert run.returncode != 0, run.tail()
    failures = [r for r in receiver.received if r["type"] == "failure"]
    assert len(failures) == 1, receiver.received
    assert failures[0]["title"] == "hello: release failed — eastus / gate_http"
    assert "region: eastus  gate: gate_http  cause: /healthz answered 503" in failures[0]["message"]
    assert f"{UI}/dags/release_hello/runs/" in failures[0]["message"]
    # Before it: the start, and eastus's rollback; never a success.
    assert events(receiver) == ["release started", "eastus rolled back", "release failed"], receiver.received

    # westus (wave 1) and northeurope (wave 2) now run the failed build, not the last release, and
    # eastus is back on it but drained (it was unhealthy at its rollback): drift, told in one message.
    receiver.received.clear()
    assert run_dag("fleet_consistency_hello", {}, fleet_path=notifying).returncode == 0
    assert events(receiver) == ["drift found (stale, traffic-mismatch)"], receiver.received
    lines = receiver.received[0]["message"].splitlines()
    found = [tuple(line.split(": ")[:2]) for line in lines[1:4]]
    assert found == [("northeurope", "stale"), ("westus", "stale"), ("eastus", "traffic-mismatch")], lines
