"""As a new user would: a second local fleet file (include/fleets/local-europe.yaml: one pair,
westeurope as its home registry, ports of its own) brought up and released to. Its state is its
own, so nothing of the session's fleet (registry data, replication record, knobs) applies to it."""

from __future__ import annotations

import pytest
from release_checks import Run, new_commit, snapshot

from localfleet import cli, procs
from localfleet.replicator import read_state
from localfleet.testing import REPO, write_test_fleet

pytestmark = pytest.mark.localfleet


def test_a_second_fleet_file_with_another_home_region_releases_everywhere(tmp_path, local_fleet, run_dag, airflow_home):
    fleet = write_test_fleet(tmp_path / "europe", base=REPO / "include/fleets/local-europe.yaml")
    assert fleet.registry.home == "westeurope" != local_fleet.fleet.registry.home
    state = cli.state_dir(fleet, tmp_path / "cache")
    cli.up(fleet, state, progress=lambda _: None, etcd_ports=(procs.free_port(), procs.free_port()))
    try:
        # Its own app name, so its release records never count as the session fleet's releases.
        conf = {"git_sha": new_commit(fleet, "europe")}
        done = run_dag(f"release_{fleet.app.name}", conf, fleet_path=fleet.source_path, timeout=480)
        run = Run(done.stdout, done.returncode, airflow_home / "airflow.db")
        assert run.returncode == 0, run.tail()
        serving = snapshot(fleet)
        digests = {s.digest for s in serving.values()}
        assert len(digests) == 1 and None not in digests, serving
        assert all(s.enabled for s in serving.values()), serving
        # Built into westeurope's registry and copied from there: the replicator of this fleet.
        record = read_state(state)
        assert record["home"] == "westeurope", record.get("home")
        assert set(record["digests"][digests.pop()]["regions"]) == {"westeurope", "northeurope"}
    finally:
        cli.down(fleet, state, progress=lambda _: None)
