"""The harness itself, through its command line (what `make airflow-up|status|down` run): up
twice is one stack, status shows every part healthy, down leaves no process, port or database.
Under CeleryExecutor (Redis and two workers as well); LocalExecutor is a matrix variant, and
test_freeze_on_airflow's stack starts and stops one in `make test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localfleet import procs
from localfleet.airflow_stack import AirflowStack

pytestmark = [pytest.mark.localfleet, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


def stack_cli(folder: Path, fleet: Path, port: int, *command: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "localfleet.airflow_stack", "--fleet", str(fleet), "--folder", str(folder)]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}{os.pathsep}{REPO}"}
    return subprocess.run(
        [*argv, "--port", str(port), *command], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )


@pytest.mark.parametrize("executor", ["celery", pytest.param("local", marks=pytest.mark.matrix)])
def test_up_status_down_leaves_nothing_behind(e2e_fleet, tmp_path, executor):
    folder, port = tmp_path / "stack", procs.free_port()
    up = stack_cli(folder, e2e_fleet, port, "up", "--executor", executor)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout
        stack = AirflowStack(folder, e2e_fleet, port)
        data_dir = stack.postgres.data_dir  # the folder `up` made (mkdtemp)
        assert stack.executor == executor
        pids = {name: procs.pid(name, folder) for name in stack.parts}
        again = stack_cli(folder, e2e_fleet, port, "up")  # idempotent: the same processes, no second stack
        assert again.returncode == 0, again.stdout + again.stderr
        assert {name: procs.pid(name, folder) for name in stack.parts} == pids
        status = stack_cli(folder, e2e_fleet, port, "status")
        lines = status.stdout.splitlines()
        parts = ["postgres", *stack.parts]
        assert [line.split()[0] for line in lines] == parts, status.stdout
        assert all("running=True" in line for line in lines), status.stdout
        assert all("health=healthy" in line for line in lines[1:]), status.stdout
        env = stack_cli(folder, e2e_fleet, port, "env").stdout
        assert f"FANOUT_AIRFLOW_URL=http://127.0.0.1:{port}" in env and "FANOUT_AIRFLOW_PASSWORD=" in env
    finally:
        down = stack_cli(folder, e2e_fleet, port, "down", "--remove")
    assert down.returncode == 0, down.stdout + down.stderr
    settings = json.loads((folder / "stack.json").read_text())
    assert procs.pids_mentioning(folder) == [], "a process of the stack outlived `down`"
    assert not procs.port_open("127.0.0.1", port) and not procs.port_open("127.0.0.1", settings["postgres_port"])
    if executor == "celery":
        assert not procs.port_open("127.0.0.1", settings["redis_port"])
    assert data_dir.is_dir() is False, f"{data_dir} outlived `down --remove`"
