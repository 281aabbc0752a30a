"""Freezes, pauses and quarantines on the real local fleet and a real Airflow database: set as
Airflow holds them (Variables, here through Airflow's own CLI), read by the release before it
changes a region. A held drain waits deferred (the in-line trigger under `airflow dags test`)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from release_checks import TrafficWatch, new_commit, snapshot, timed, tm_client, variant_fleet

from fanout import names
from fanout.controls import Freeze, Pause, Quarantine, rollback_target
from fanout.trigger import build_conf
from fanout.windows import DAYS
from localfleet.testing import airflow_env, wait_until

pytestmark = pytest.mark.localfleet


def airflow(airflow_home, local_fleet, *argv: str, check: bool = True) -> None:
    env = airflow_env(airflow_home, local_fleet.path)
    subprocess.run([sys.executable, "-m", "airflow", *argv], env=env, check=check, capture_output=True, timeout=120)


@pytest.mark.matrix  # make test-matrix: make test has the waiting freeze (below) and this rule's unit test
def test_under_on_freeze_fail_a_frozen_region_fails_its_drain_and_changes_nothing(
    serving_fleet, release, airflow_home, tmp_path
):
    started, fleet = time.monotonic(), serving_fleet.fleet
    failing = variant_fleet(fleet, tmp_path, **{"rollout.on_freeze": "fail"})
    key = names.freeze_variable(fleet.app.name)
    frozen = Freeze("incident 42", "alice", datetime.now(UTC).isoformat(timespec="seconds"), regions=("eastus",))
    before = snapshot(fleet)
    airflow(airflow_home, serving_fleet, "variables", "set", key, frozen.to_json())
    try:
        run = release({"git_sha": new_commit(fleet, "frozen")}, fleet_path=failing)
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
    assert states["deploy_northeurope.restore"] == "success"
    assert states["deploy_westeurope.drain"] == "upstream_failed" and after["westeurope"] == before["westeurope"]
    timed("freeze: one region frozen, on_freeze fail", started)


def test_a_freeze_during_wave_one_holds_wave_two_until_unfrozen_and_resumed(serving_fleet, release, airflow_home):
    """Every region after the canary frozen: the canary is released, wave 2 drains nothing.
    Unfrozen while paused: still held. Resumed: the release goes on and every region is released.

    The freeze is set before the run starts: set once the canary drains, it raced the canary's
    whole change on a loaded machine (`airflow variables set` takes seconds) and sometimes lost."""
    started, fleet = time.monotonic(), serving_fleet.fleet
    before, tm = snapshot(fleet), tm_client(fleet)
    app, now = fleet.app.name, datetime.now(UTC).isoformat(timespec="seconds")
    freeze_key, pause_key = names.freeze_variable(app), names.pause_variable(app)
    later = tuple(r for r in fleet.region_names if r not in fleet.rollout.canary)
    frozen = Freeze("incident 43", "alice", now, regions=later)
    airflow(airflow_home, serving_fleet, "variables", "set", freeze_key, frozen.to_json())
    done: dict[str, Any] = {}
    running = threading.Thread(target=lambda: done.update(run=release({"git_sha": new_commit(fleet, "held")})))
    running.start()
    try:
        canary = fleet.region("westus").endpoint.name
        wait_until(lambda: not tm.endpoints()[canary].enabled, 120, what="the canary's drain")
        # The canary, not frozen, finishes; wave 2's regions stay as they were, endpoints enabled.
        wait_until(lambda: tm.endpoints()[canary].enabled, 120, what="the canary's restore")
        wait_until(lambda: deferred_drains(airflow_home), 120, what="a wave 2 drain held (deferred)")
        held = snapshot(fleet)
        assert held["westus"].digest != before["westus"].digest, "the canary is not frozen"
        for region in later:
            assert held[region] == before[region], f"{region} changed while frozen"
        paused = Pause("watching the canary", "bob", now)
        airflow(airflow_home, serving_fleet, "variables", "set", pause_key, paused.to_json())
        airflow(airflow_home, serving_fleet, "variables", "delete", freeze_key)
        time.sleep(9)  # past the hold's first look (8 s after it deferred): the pause holds it
        paused_state = snapshot(fleet)
        for region in later:
            assert paused_state[region] == before[region], f"{region} changed while paused"
        airflow(airflow_home, serving_fleet, "variables", "delete", pause_key)
        running.join(300)
    finally:
        for key in (freeze_key, pause_key):  # gone already when the test got this far
            airflow(airflow_home, serving_fleet, "variables", "delete", key, check=False)
        running.join(300)
    run = done["run"]
    assert run.returncode == 0, run.tail()
    after = snapshot(fleet)
    assert len({after[r].digest for r in fleet.region_names}) == 1 and after["eastus"].digest != before["eastus"].digest
    # `airflow dags test` runs one task at a time: the first drain of wave 2 waited out both holds.
    wave_two, at, scope = "(eastus|northeurope)", re.escape(now), re.escape(", ".join(later))
    said = rf"{wave_two} is held back, waiting \(deferred\): frozen \({scope}\) by alice at {at}: incident 43"
    assert re.search(said, run.output), run.tail()
    assert re.search(rf"{wave_two} is held back: releases paused by bob at {at}: watching the canary", run.output)
    assert re.search(rf"{wave_two} was held back \d+ s; draining now", run.output), run.tail()
    timed("freeze then pause: wave 2 held, then released", started)


def deferred_drains(airflow_home) -> list[str]:
    """The drains of the newest release run that wait, deferred (Airflow's database). `airflow dags
    test` marks a deferred task queued again while it runs the trigger in line."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id FROM task_instance WHERE state IN ('deferred', 'queued') AND task_id LIKE '%.drain' "
            "AND run_id = "
            "(SELECT run_id FROM dag_run WHERE dag_id = 'release_hello' ORDER BY id DESC LIMIT 1)"
        ).fetchall()
    return [task for (task,) in rows]


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


@pytest.mark.matrix  # waits for a window up to 90 s away: make test-matrix
def test_a_region_outside_its_deploy_window_waits_until_it_opens(serving_fleet, release, tmp_path):
    started, fleet = time.monotonic(), serving_fleet.fleet
    opens = (datetime.now(UTC) + timedelta(seconds=90)).replace(second=0, microsecond=0)  # 30–90 s away
    closes = opens + timedelta(minutes=10)
    end = "24:00" if closes.date() != opens.date() else f"{closes:%H:%M}"
    data = yaml.safe_load(fleet.source_path.read_text())
    eastus = next(r for r in data["regions"] if r["name"] == "eastus")
    allowed = f"{DAYS[opens.weekday()]} {opens:%H:%M}-{end}"
    eastus["deploy_window"] = {"timezone": "UTC", "allow": [allowed]}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    run = release({"git_sha": new_commit(fleet, "window"), "regions": ["eastus"]}, fleet_path=path)
    assert run.returncode == 0, run.tail()
    assert (
        f"outside its deploy window (UTC: {DAYS[opens.weekday()]} {opens:%H:%M}-{end}); it opens {opens.isoformat()}"
        in (run.output)
    )
    assert run.started["deploy_eastus.helm_deploy"] >= opens.timestamp(), "Helm started before the window opened"
    assert snapshot(fleet)["eastus"].digest == run.recorded()["digest"]
    timed("deploy window a minute away", started)


@pytest.mark.matrix  # one more release and its rollback: make test-matrix
def test_a_quarantined_release_is_rolled_back_through_the_release_dag(serving_fleet, release, airflow_home):
    """What `fanout quarantine` triggers (its REST side is tests/unit/test_controls.py's): the last
    good release, released again, returns every region with the waves, drains and gates of a release."""
    started, fleet = time.monotonic(), serving_fleet.fleet
    bad_run = release({"git_sha": new_commit(fleet, "to-quarantine")})
    assert bad_run.returncode == 0, bad_run.tail()
    bad = bad_run.recorded()["digest"]
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT extra FROM asset_event WHERE source_dag_id = 'release_hello' AND source_task_id = 'record' "
            "ORDER BY timestamp DESC"
        ).fetchall()
    good = rollback_target([json.loads(extra) for (extra,) in rows], bad, lambda digest: digest == bad)
    assert good is not None and good["digest"] != bad
    with TrafficWatch(fleet) as watch:
        back = release(build_conf(good["git_sha"], good.get("source_ref") or "main", good["digest"]))
    assert back.returncode == 0, back.tail()
    assert {state.digest for state in snapshot(fleet).values()} == {good["digest"]}
    assert watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    timed("quarantine: rolled back through the release DAG", started)
