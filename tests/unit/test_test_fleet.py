"""start_test_fleet cleans up after itself: a session fixture that fails while starting gets no
teardown, so whatever did start must be stopped before the error goes up."""

import subprocess
import sys

import pytest

from fanout.fleet import FleetError
from localfleet import cli, procs
from localfleet.testing import start_test_fleet, wait_until, write_test_fleet


def test_a_fleet_that_cannot_come_up_is_stopped_again(tmp_path, monkeypatch):
    stopped = []

    def up(fleet, state, **kwargs):
        raise procs.ProcError("kube-apiserver-eastus: not ready after 60s (stopped it)")

    monkeypatch.setattr(cli, "up", up)
    monkeypatch.setattr(cli, "down", lambda fleet, state, progress: stopped.append(state))
    with pytest.raises(procs.ProcError, match="not ready"):
        start_test_fleet(tmp_path)
    assert stopped == [tmp_path / "state"]


def test_each_fleet_file_keeps_its_own_state_and_only_one_runs_at_a_time(tmp_path, monkeypatch):
    """A second local fleet file must not inherit the first's registry data, replication record or
    knobs (a new release's digest was once never replicated that way), and must not start while
    the first still holds the default ports."""
    monkeypatch.setenv("FANOUT_CACHE", str(tmp_path / "cache"))
    first, second = (write_test_fleet(tmp_path / name) for name in ("first", "second"))
    assert cli.state_dir(first) == cli.state_dir(first)
    assert cli.state_dir(first) != cli.state_dir(second)
    assert cli.state_dir(first).parent == cli.state_dir(second).parent == tmp_path / "cache" / "localfleet"

    running = cli.state_dir(first)
    running.mkdir(parents=True)
    (running / cli.FLEET_MARKER).write_text(f"{first.source_path}\n")
    assert cli.other_fleet_up(cli.state_dir(second)) is None, "a folder with nothing running is no fleet"
    # A process of the first fleet's: its command line names the folder (python keeps its argv).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(running)])
    try:
        found = wait_until(lambda: cli.other_fleet_up(cli.state_dir(second)), timeout=10, what="the sleeper seen")
        other = first.source_path
        assert found == f"the local fleet of {other} is up: `make fleet-down FLEET={other}` first"
        assert cli.other_fleet_up(cli.state_dir(first)) is None, "a fleet is not in its own way"
        with pytest.raises(FleetError, match=rf"the local fleet of {first.source_path} is up"):
            cli.up(second)
        assert not cli.state_dir(second).exists(), "a refused up left state behind"
    finally:
        sleeper.kill()
        sleeper.wait()
