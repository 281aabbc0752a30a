"""localfleet.airflow_stack's two executors without starting Airflow: what stack.json keeps, what
each process's environment says, and the Celery broker as a real redis-server process."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localfleet import procs
from localfleet.airflow_stack import REDIS, WORKERS, AirflowStack, StackError
from localfleet.worker_name import ENV as WORKER_NAME_ENV

FLEET = Path(__file__).resolve().parents[2] / "include/fleets/local.yaml"


def test_a_new_stack_is_local_and_keeps_its_executor_until_told(tmp_path):
    stack = AirflowStack(tmp_path, FLEET, procs.free_port())
    assert stack.executor == "local" and stack.parts == ("apiserver", "scheduler", "dag-processor", "triggerer")
    assert stack.env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert not any(k.startswith("AIRFLOW__CELERY__") for k in stack.env())

    port = stack.settings["api_port"]
    celery = AirflowStack(tmp_path, FLEET, port, executor="celery")
    assert celery.parts == (REDIS, "apiserver", "scheduler", "dag-processor", "triggerer", *WORKERS)
    again = AirflowStack(tmp_path, FLEET, port)  # `status`, `down`: no executor given, the stack's own
    assert again.executor == "celery"
    assert json.loads((tmp_path / "stack.json").read_text())["executor"] == "celery"
    assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0  # it holds the broker's password too
    env = again.env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"]
        == f"redis://:{again.settings['redis_password']}@127.0.0.1:" + str(again.settings["redis_port"]) + "/0"
    )
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + again.postgres.url()
    assert AirflowStack(tmp_path, FLEET, port, executor="local").env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_the_executor_changes_only_on_a_stopped_stack(tmp_path):
    stack = AirflowStack(tmp_path, FLEET, procs.free_port())
    procs.start("scheduler", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path)
    try:
        with pytest.raises(StackError, match=r"executor: .* runs with the local executor \(scheduler running\)"):
            AirflowStack(tmp_path, FLEET, stack.settings["api_port"], executor="celery")
    finally:
        procs.stop("scheduler", tmp_path)
    assert AirflowStack(tmp_path, FLEET, stack.settings["api_port"], executor="celery").executor == "celery"
    with pytest.raises(StackError, match="executor: 'kubernetes' is not one of local, celery"):
        AirflowStack(tmp_path, FLEET, stack.settings["api_port"], executor="kubernetes")


def test_each_worker_has_its_own_folders_and_name(tmp_path, monkeypatch):
    stack = AirflowStack(tmp_path, FLEET, procs.free_port(), executor="celery")
    envs = {name: stack.worker_env(name) for name in WORKERS}
    for key in ("TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        folders = {Path(env[key]) for env in envs.values()}
        assert len(folders) == len(WORKERS), key
        assert all(folder.is_relative_to(tmp_path / "workers") for folder in folders), key
    assert {env[WORKER_NAME_ENV] for env in envs.values()} == set(WORKERS)
    assert Path(envs["worker1"]["TMPDIR"]) == stack.worker_tmp("worker1")
    # HOME is the machine's: a fleet file's `~` means the same on every worker.
    assert {env["HOME"] for env in envs.values()} == {os.environ["HOME"]}
    # The hostname callable Airflow imports in the task process names the worker.
    module, _, function = envs["worker2"]["AIRFLOW__CORE__HOSTNAME_CALLABLE"].rpartition(".")
    hostname = getattr(importlib.import_module(module), function)
    code = f"import {module}; print({module}.{function}())"
    ran = subprocess.run([sys.executable, "-c", code], env=envs["worker2"], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "worker2"
    monkeypatch.delenv(WORKER_NAME_ENV, raising=False)
    assert hostname() == socket.getfqdn()  # outside a worker: Airflow's default, the machine's name


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server: `make system-packages` installs it")
def test_the_broker_is_a_private_redis_on_loopback_that_persists_nothing(tmp_path):
    stack = AirflowStack(tmp_path, FLEET, procs.free_port(), executor="celery")
    port, password = stack.settings["redis_port"], stack.settings["redis_password"]
    stack.start_part(REDIS)
    try:
        assert stack._redis_ping()
        cmdline = Path(f"/proc/{procs.pid(REDIS, tmp_path)}/cmdline").read_bytes().decode()
        assert password not in cmdline  # from its 0600 config file, not ps
        assert (tmp_path / REDIS / "redis.conf").stat().st_mode & 0o077 == 0
        stack.settings["redis_password"] = "wrong"
        assert not stack._redis_ping()  # it wants the password
        stack.settings["redis_password"] = password
        listening = Path("/proc/net/tcp").read_text()
        assert f"0100007F:{port:04X}" in listening  # bound to 127.0.0.1 only
        assert f"00000000:{port:04X}" not in listening
    finally:
        stack.down(progress=lambda _: None)
    assert not procs.port_open("127.0.0.1", port)
    assert not list((tmp_path / REDIS).glob("*.rdb")) and not list((tmp_path / REDIS).glob("appendonly*"))
