"""`fanout status` on the real local fleet: the live half of the matrix (what each region runs, its
Helm release, ready replicas, its endpoint) agrees with what the tests read independently, and
Traffic Manager is read once for every region — an answer it refuses shows on every row, named."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from release_checks import snapshot

from localfleet.faults import read_faults

pytestmark = pytest.mark.localfleet

REPO = Path(__file__).resolve().parents[2]


def status_out(fleet, *flags: str) -> str:
    """`python -m fanout status FLEET --no-airflow …` as people and scripts run it: stdout only."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    argv = [sys.executable, "-m", "fanout", "status", str(fleet.source_path), "--no-airflow", *flags]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_json(fleet) -> dict:
    return json.loads(status_out(fleet, "--json"))  # nothing but the document on stdout, logs and all


def test_status_shows_what_each_region_runs_and_serves(serving_fleet):
    fleet = serving_fleet.fleet
    print(status_out(fleet))
    document = status_json(fleet)
    seen = snapshot(fleet)  # Helm revision, the digest the edge serves, the endpoint: read by the tests
    assert [row["region"] for row in document["regions"]] == fleet.region_names
    for row in document["regions"]:
        region, want = row["region"], seen[row["region"]]
        assert row["errors"] == {}, row
        assert row["pair"] == fleet.region(region).pair and row["wave"] in (1, 2, 3)
        assert row["running"] == want.digest and re.fullmatch(r"[0-9a-f]{40}", row["commit"] or ""), row
        assert row["helm"] == {"revision": want.revision, "status": "deployed"}, row
        assert row["ready"]["ready"] == row["ready"]["desired"] >= 1, row
        assert row["endpoint"]["status"] == ("Enabled" if want.enabled else "Disabled"), row
        assert row["endpoint"]["weight"] == want.weight and row["endpoint"]["monitor"], row


def test_status_reads_traffic_manager_once_for_every_region(serving_fleet, faults):
    # 403 is not retried: each read Fanout makes takes exactly one of the 50 refusals.
    faults(tm_errors={"status": 403, "remaining": 50})
    document = status_json(serving_fleet.fleet)
    assert read_faults(serving_fleet.state)["tm_errors"]["remaining"] == 49
    for row in document["regions"]:
        assert row["endpoint"] is None and "403" in row["errors"]["traffic"], row
        assert row["running"] and row["helm"], row  # the other systems are still read
