"""A freeze and a quarantine on the real local fleet and a real Airflow database: set as Airflow
holds them (Variables, here through Airflow's own CLI), read by the release before it changes a
region."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from release_checks import new_commit, snapshot, timed

from fanout import names
from fanout.controls import Freeze, Quarantine
from localfleet.testing import airflow_env

pytestmark = pytest.mark.localfleet


def airflow(airflow_home, local_fleet, *argv: str) -> None:
    env = airflow_env(airflow_home, local_fleet.path)
    subprocess.run([sys.executable, "-m", "airflow", *argv], env=env, check=True, capture_output=True, timeout=120)


def test_a_freeze_on_one_region_stops_the_release_there_and_changes_nothing_in_it(serving_fleet, release, airflow_home):
    started, fleet = time.monotonic(), serving_fleet.fleet
    key = names.freeze_variable(fleet.app.name)
    frozen = Freeze("incident 42", "alice", datetime.now(UTC).isoformat(timespec="seconds"), regions=("eastus",))
    before = snapshot(fleet)
    airflow(airflow_home, serving_fleet, "variables", "set", key, frozen.to_json())
    try:
        run = release({"git_sha": new_commit(fleet, "frozen")})
    finally:
        airflow(airflow_home, serving_fleet, "variables", "delete", key)
    states, after = run.states(), snapshot(fleet)
    assert run.returncode != 0, run.tail()
    # The canary was released; eastus (wave 2) was refused at its drain, naming who froze it and why.
    assert after["westus"].digest != before["westus"].digest
    assert states["deploy_eastus.drain"] == "failed"
    assert f"eastus: drain: frozen (eastus) by alice at {frozen.at}: incident 42; nothing was changed" in run.output
    assert after["eastus"] == before["eastus"], "a frozen region must not be touched"
    # Its wave partner, not frozen, was released; wave 3 never started.
    assert states["deploy_northeurope.wait_online"] == "success"
    assert states["deploy_westeurope.drain"] == "upstream_failed" and after["westeurope"] == before["westeurope"]
    timed("freeze: one region frozen", started)


def test_a_quarantined_digest_is_refused_before_anything_changes(serving_fleet, release, airflow_home):
    started, fleet = time.monotonic(), serving_fleet.fleet
    before = snapshot(fleet)
    digest = before["westus"].digest
    key = names.quarantine_variable(fleet.app.name, digest)
    bad = Quarantine(digest, "leaks memory under load", "bob", datetime.now(UTC).isoformat(timespec="seconds"))
    airflow(airflow_home, serving_fleet, "variables", "set", key, bad.to_json())
    try:
        run = release({"git_sha": new_commit(fleet, "quarantined"), "image": digest})
    finally:
        airflow(airflow_home, serving_fleet, "variables", "delete", key)
    assert run.returncode != 0, run.tail()
    said = f"image: {digest} is quarantined by bob at {bad.at}: leaks memory under load; nothing was changed"
    assert said in run.output
    assert run.states()["validate"] == "failed"
    assert snapshot(fleet) == before
    timed("quarantine: refused at validate", started)
