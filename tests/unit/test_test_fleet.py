"""start_test_fleet cleans up after itself: a session fixture that fails while starting gets no
teardown, so whatever did start must be stopped before the error goes up."""

import pytest

from localfleet import cli, procs
from localfleet.testing import start_test_fleet


def test_a_fleet_that_cannot_come_up_is_stopped_again(tmp_path, monkeypatch):
    stopped = []

    def up(fleet, state, **kwargs):
        raise procs.ProcError("kube-apiserver-eastus: not ready after 60s (stopped it)")

    monkeypatch.setattr(cli, "up", up)
    monkeypatch.setattr(cli, "down", lambda fleet, state, progress: stopped.append(state))
    with pytest.raises(procs.ProcError, match="not ready"):
        start_test_fleet(tmp_path)
    assert stopped == [tmp_path / "state"]
