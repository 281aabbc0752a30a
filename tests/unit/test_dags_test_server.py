"""The fork server behind localfleet.testing.dags_test: each run gets its own environment, output
and exit code; a run past its timeout is killed; Dag.test()'s idle polls are short."""

from __future__ import annotations

import subprocess
import time

import pytest

from localfleet import dags_test_server
from localfleet.testing import REPO, _dags_test_server, airflow_env


@pytest.fixture
def env(tmp_path):
    return airflow_env(tmp_path / "airflow", REPO / "include/fleets/local.yaml")


def test_a_run_gets_its_own_output_and_exit_code(env):
    server = _dags_test_server(env)
    done = server.run(["version"], env, timeout=60)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().splitlines()[-1][:1].isdigit(), done.stdout
    wrong = server.run(["no-such-command"], env, timeout=60)
    assert wrong.returncode == 2 and "invalid choice: 'no-such-command'" in wrong.stdout
    assert _dags_test_server(env) is server


def test_a_run_past_its_timeout_is_killed_and_the_server_goes_on(env):
    server = _dags_test_server(env)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        server.run(["db", "check-migrations", "-t", "120"], env, timeout=3)  # the database was never made
    assert time.monotonic() - started < 30
    assert server.run(["version"], env, timeout=60).returncode == 0


def test_another_airflow_environment_gets_another_server(env, tmp_path):
    other = {**env, "AIRFLOW_HOME": str(tmp_path / "other")}
    assert dags_test_server.server_key(other) != dags_test_server.server_key(env)
    assert dags_test_server.server_key({**env, "FANOUT_FLEETS": "/elsewhere.yaml"}) == dags_test_server.server_key(env)
    assert _dags_test_server(other) is not _dags_test_server(env)


def test_dag_tests_idle_polls_are_short_and_other_sleeps_are_not(monkeypatch):
    monkeypatch.setattr(time, "sleep", time.sleep)  # restored after the test
    dags_test_server._quick_polls()
    scope: dict = {"time": time}
    exec(compile("def test():\n    time.sleep(1)\n", "/x/airflow/sdk/definitions/dag.py", "exec"), scope)
    exec(compile("def other():\n    time.sleep(0.3)\n", "/x/airflow/sdk/definitions/dag.py", "exec"), scope)
    started = time.monotonic()
    scope["test"]()
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    scope["other"]()
    assert time.monotonic() - started >= 0.3
