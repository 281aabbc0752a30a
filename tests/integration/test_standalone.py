"""Promise 6 against a running Airflow: clearing one region's tasks re-runs that region, and
the re-run converges to the same end state.

`airflow dags test` replaces its run each time, so this test starts `airflow standalone`
(api-server, scheduler, dag-processor, triggerer, LocalExecutor) in a private AIRFLOW_HOME on
free loopback ports, releases through the REST API, clears `deploy_eastus` and waits for the
run to succeed again. Every Airflow process is in one process group, stopped in a finally.

The release is of a new digest with one replica lagging, so one wait really defers to the
triggerer and resumes: `dags test` runs triggers in its own process and never shows that."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from release_checks import TrafficWatch, random_sha, snapshot, timed, variant_fleet

from localfleet.procs import free_port
from localfleet.testing import airflow_env

pytestmark = pytest.mark.localfleet

DAG = "release_hello"
REGION = "eastus"
SLOW, LAG = "northeurope", 20  # longer than the operators' in-worker phase: this wait defers
GROUP_STEPS = ["drain", "helm_deploy", "gate_rollout", "gate_http", "gate_soak", "restore", "rollback"]


class Api:
    """The Airflow REST API with a JWT from the simple auth manager."""

    def __init__(self, base: str, home: Path):
        self.base, self.home, self.token = base, home, ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def login(self) -> None:
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        user, password = next(iter(passwords.items()))
        self.token = self.call("POST", "/auth/token", {"username": user, "password": password}, auth=False)[
            "access_token"
        ]

    def task_instances(self, run_id: str) -> dict[str, dict[str, Any]]:
        found = self.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def wait_run(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise AssertionError(f"run {run_id} still {state} after {timeout:.0f} s")


def wait_for(what: str, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as err:
            last = err
        time.sleep(1)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise AssertionError(f"{what} not ready after {timeout:.0f} s ({last}); standalone said:\n{tail}")


@pytest.fixture
def fleet_file(local_fleet, tmp_path) -> Path:
    """The session fleet with a fresh app source: the release builds a digest no replica has."""
    return variant_fleet(local_fleet.fleet, tmp_path / "variant")


@pytest.fixture
def airflow_api(fleet_file, tmp_path) -> Iterator[Api]:
    home = tmp_path / "airflow"
    home.mkdir()
    port = free_port()
    env = airflow_env(home, fleet_file)
    env.update(
        {
            # standalone starts its parts as `airflow …`: the venv's bin must come first on PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            # Tasks reach the execution API through base_url; its default is localhost:8080.
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # Other sessions may run an Airflow here too: no fixed ports at all.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        }
    )
    log = tmp_path / "standalone.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the finally stops every part of it
        )
    try:
        api = Api(f"http://127.0.0.1:{port}", home)

        def healthy() -> bool:
            health = api.call("GET", "/api/v2/monitor/health", auth=False)
            parts = [health["metadatabase"], health["scheduler"], health["triggerer"], health.get("dag_processor")]
            return all(p and p.get("status") == "healthy" for p in parts)

        wait_for("standalone health", healthy, 240, log)
        wait_for("admin password", lambda: (home / "simple_auth_manager_passwords.json.generated").exists(), 60, log)
        api.login()
        wait_for(f"DAG {DAG}", lambda: api.call("GET", f"/api/v2/dags/{DAG}"), 180, log)
        timed("airflow standalone up", started)
        yield api
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The group may outlive its leader (tasks, gunicorn workers): make sure none is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def task_log(home: Path, run_id: str, task_id: str, attempt: int) -> str:
    path = home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / f"task_id={task_id}" / f"attempt={attempt}.log"
    return path.read_text() if path.exists() else ""


def test_clearing_one_region_redeploys_it_idempotently(local_fleet, airflow_api, faults):
    started = time.monotonic()
    fleet, api = local_fleet.fleet, airflow_api
    faults(replica_lag={SLOW: LAG})
    api.call("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    conf = {"git_sha": random_sha()}
    run_id = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    state = api.wait_run(run_id, timeout=420)
    first = api.task_instances(run_id)
    assert state == "success", {t: ti["state"] for t, ti in first.items() if ti["state"] != "success"}
    released = snapshot(fleet)
    assert len({s.digest for s in released.values()}) == 1, released
    # The lagging replica's wait went to the triggerer and came back to finish in a worker.
    wait = f"wait_replication_{SLOW}"
    assert "Pausing task as DEFERRED" in task_log(api.home, run_id, wait, first[wait]["try_number"])
    timed("release through the scheduler", started)

    group = [f"deploy_{REGION}.{step}" for step in GROUP_STEPS]
    cleared_at = time.time()
    with TrafficWatch(fleet) as watch:
        api.call(
            "POST",
            f"/api/v2/dags/{DAG}/clearTaskInstances",
            # Both default to true, and then nothing would be cleared.
            {"dry_run": False, "only_failed": False, "dag_run_id": run_id, "task_ids": group},
        )
        state = api.wait_run(run_id, timeout=300)
    second = api.task_instances(run_id)
    assert state == "success", {t: ti["state"] for t, ti in second.items()}
    print(watch.report())

    # Only the region's own tasks ran again, each one more try; everything else kept its try.
    for task_id, ti in second.items():
        ran_again = task_id in group and task_id != f"deploy_{REGION}.rollback"
        assert ti["try_number"] == first[task_id]["try_number"] + (1 if ran_again else 0), (task_id, ti)
    # Drain, deploy, gates and restore all ran again and passed…
    for step in GROUP_STEPS[:-1]:
        assert second[f"deploy_{REGION}.{step}"]["state"] == "success", step
    assert second[f"deploy_{REGION}.rollback"]["state"] == "skipped"
    # …the region was drained and restored again (never below min_serving_regions)…
    assert REGION in watch.ever_drained(), watch.report()
    assert watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    # …and converged to the same end state: same digest, same Helm revision (the digest was live,
    # so helm_deploy skipped the upgrade), traffic as the release left it.
    attempt = second[f"deploy_{REGION}.helm_deploy"]["try_number"]
    assert "no upgrade" in task_log(api.home, run_id, f"deploy_{REGION}.helm_deploy", attempt)
    assert snapshot(fleet) == released
    assert second[f"deploy_{REGION}.restore"]["end_date"] > first[f"deploy_{REGION}.restore"]["end_date"]
    print(f"cleared at {cleared_at:.0f}; re-run took {time.time() - cleared_at:.1f} s")
    timed("standalone: release, clear one region, re-run", started)
