"""The matrix's private world: a local test fleet (soak 1 s, short timeouts) and a real Airflow over it,
merges triggered with `python -m fanout trigger` as CI runs it, task states watched through the REST
API, and the processes a fault kills found by pid — only ever processes of this matrix's own folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from fanout import names
from fanout.fleet import Fleet, load_fleet
from fanout.trigger import AirflowApi, TriggerError
from localfleet import cli, procs
from localfleet.airflow_stack import COMPONENTS, AirflowStack
from localfleet.bench_airflow import wait_for_dag
from localfleet.fault_matrix import observe
from localfleet.git import repo as git_repo
from localfleet.testing import REPO, write_test_fleet
from localfleet.traffic import users

T = TypeVar("T")
T0 = time.monotonic()

# The waits a failing scenario sits out, short enough for a matrix and long enough for a loaded machine.
MATRIX_SETTINGS = {
    ("registry", "replication_timeout_seconds"): 40,
    ("gates", "rollout_timeout_seconds"): 60,
    ("gates", "http", "timeout_seconds"): 40,
}


def say(line: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {line}", flush=True)


def matrix_fleet(folder: Path) -> Path:
    """The local test fleet (write_test_fleet) with MATRIX_SETTINGS applied."""
    path = write_test_fleet(folder).source_path
    data = yaml.safe_load(path.read_text())
    for keys, value in MATRIX_SETTINGS.items():
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Run:
    """One `fanout trigger --wait`: its run id, process, and (once ended) exit code and output."""

    run_id: str
    sha: str
    proc: subprocess.Popen[str]
    started: float
    code: int | None = None
    out: str = ""
    err: str = ""
    ended: float = 0.0

    def finish(self, timeout: float) -> Run:
        self.out, self.err = self.proc.communicate(timeout=timeout)
        self.code, self.ended = self.proc.returncode, time.monotonic()
        return self

    @property
    def state(self) -> str:
        return {0: "success", 1: "failed", 4: "timeout"}.get(self.code, f"exit {self.code}")


class Matrix:
    def __init__(self, folder: Path):
        self.folder = folder
        self.fleet_path = matrix_fleet(folder / "fleet")
        self.fleet: Fleet = load_fleet(self.fleet_path)
        self.state = folder / "state"
        self.stack = AirflowStack(folder / "airflow", self.fleet_path, procs.free_port())
        self.dag_id = names.release_dag(self.fleet.app.name)
        self.api: AirflowApi | None = None
        self.digest = ""  # what every region runs after the last good release
        self.scratch: dict[str, Any] = {}
        self.etcd_ports = (procs.free_port(), procs.free_port())  # what a scenario's steps hand each other

    # -- up and down -------------------------------------------------------------------------
    def up(self) -> None:
        say(f"private fleet and Airflow in {self.folder}")
        self.fleet_up()
        say("fleet up")
        self.stack.up(progress=lambda line: say(f"  airflow: {line}"))
        wait_for_dag(self.connect(), self.dag_id)
        say("release DAG parsed")

    def fleet_up(self) -> None:
        """Start whatever part of the fleet is not running (all of it the first time) on the same
        etcd ports every time: `cli.up` without them would start etcd on the default ones."""
        cli.up(self.fleet, self.state, progress=lambda _: None, etcd_ports=self.etcd_ports)

    def connect(self) -> AirflowApi:
        user, password = self.stack.credentials()
        self.api = AirflowApi(self.stack.url, username=user, password=password)
        self.api.login()
        return self.api

    def down(self) -> None:
        users.stop(self.state)
        self.stack.down(progress=lambda _: None, remove=True)
        cli.down(self.fleet, self.state, progress=lambda _: None)

    # -- merges ------------------------------------------------------------------------------
    def commit(self, what: str) -> str:
        return git_repo.commit_app(self.fleet.app.source.git, f"{what}-{uuid.uuid4().hex}")

    def trigger_env(self) -> dict[str, str]:
        user, password = self.stack.credentials()
        return {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}", "FANOUT_AIRFLOW_URL": self.stack.url,
                "FANOUT_AIRFLOW_USERNAME": user, "FANOUT_AIRFLOW_PASSWORD": password}  # fmt: skip

    def trigger(self, sha: str, wait: bool = True, what: str = "merge", timeout: float = 1500) -> Run:
        """The merge trigger as CI runs it; with `wait`, it follows the run to its end."""
        run_id = f"{what}__{sha[:12]}__{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "-m", "fanout", "trigger", "--app", self.fleet.app.name, "--git-sha", sha,
                "--run-id", run_id]  # fmt: skip
        if wait:
            argv += ["--wait", "--poll", "1", "--timeout", str(timeout)]
        proc = subprocess.Popen(
            argv, env=self.trigger_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return Run(run_id, sha, proc, time.monotonic())

    def release(self, sha: str, what: str = "merge") -> Run:
        run = self.trigger(sha, what=what).finish(1600)
        if run.code == 0:
            self.digest = self.built(run.run_id) or self.digest
        return run

    def follow(self, run_id: str, timeout: float = 1500) -> Run:
        """`fanout trigger --follow RUN --wait`: CI's job following a run it triggered earlier."""
        argv = [sys.executable, "-m", "fanout", "trigger", "--app", self.fleet.app.name, "--follow", run_id,
                "--wait", "--poll", "1", "--timeout", str(timeout)]  # fmt: skip
        proc = subprocess.Popen(
            argv, env=self.trigger_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return Run(run_id, "", proc, time.monotonic())

    def built(self, run_id: str) -> str | None:
        value = self.call(lambda api: api.xcom(self.dag_id, run_id, names.BUILD, "return_value"))
        return (value or {}).get("digest")

    # -- watching ----------------------------------------------------------------------------
    def call(self, fn: Callable[[AirflowApi], T]) -> T | None:
        """A REST call that tolerates the API being briefly away (a restarting database)."""
        try:
            return fn(self.api or self.connect())
        except (TriggerError, httpx.HTTPError, OSError):
            with contextlib.suppress(TriggerError, httpx.HTTPError, OSError):
                self.connect()
            return None

    def states(self, run_id: str) -> dict[str, str | None]:
        tis = self.call(lambda api: api.task_instances(self.dag_id, run_id)) or []
        return {ti["task_id"]: ti.get("state") for ti in tis}

    def wait_task(self, run: Run, task: str, states: tuple[str, ...], timeout: float = 600) -> float:
        """Until `task` of the run is in one of `states` (the moment, monotonic); fails when the run
        ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.states(run.run_id).get(task) in states:
                return time.monotonic()
            if run.proc.poll() is not None:
                raise RuntimeError(f"the run ended before {task} was {'/'.join(states)}")
            time.sleep(0.2)
        raise RuntimeError(f"{task} not {'/'.join(states)} within {timeout:.0f} s")

    def wait_until(self, run: Run, check: Callable[[dict[str, str | None]], bool], what: str,
                   timeout: float = 600) -> float:  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.states(run.run_id)):
                return time.monotonic()
            if run.proc.poll() is not None:
                raise RuntimeError(f"the run ended before {what}")
            time.sleep(0.2)
        raise RuntimeError(f"not {what} within {timeout:.0f} s")

    # -- Airflow's processes ---------------------------------------------------------------
    def kill_part(self, name: str) -> int:
        """SIGKILL one part of the stack with its whole process group (as a crashed container goes,
        the LocalExecutor's workers and their task processes with the scheduler); its pid."""
        pid = procs.pid(name, self.stack.folder)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.alive(name, self.stack.folder) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        return pid

    def heal_stack(self) -> list[str]:
        """Start every part that is not running, as a supervisor would; what it restarted."""
        restarted = []
        if not self.stack.postgres.running():
            self.stack.postgres.up()
            restarted.append("postgres")
        for name in COMPONENTS:
            if not procs.alive(name, self.stack.folder):
                self.stack.start_part(name)
                restarted.append(name)
        return restarted

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if self.stack.healthy():
                    return
            time.sleep(1)
        raise RuntimeError(f"Airflow not healthy within {timeout:.0f} s")

    def own_pids(self, program: str, *words: str) -> list[tuple[int, int]]:
        """(pid, parent pid) of processes of this stack running `program` with `words` in their
        arguments (found by the stack's folder in their environment)."""
        found = []
        for pid in procs.pids_mentioning(self.stack.home):
            with contextlib.suppress(OSError, IndexError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if Path(argv[0]).name == program and all(w in argv for w in words):
                    ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
                    found.append((pid, ppid))
        return found

    # -- the fleet -----------------------------------------------------------------------------
    def helm_revision(self, region: str) -> int:
        return observe.helm_latest(self.fleet, region)[1]

    def consistent(self) -> bool:
        """Every region serves the last release and its endpoint is enabled."""
        enabled = observe.endpoints_enabled(self.fleet)
        return all(
            observe.serving(self.fleet, r.name) == self.digest and enabled[r.endpoint.name] for r in self.fleet.regions
        )
