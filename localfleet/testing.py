"""A local fleet for tests: the shipped local fleet moved to free loopback ports and a
private state directory, so tests never collide with a fleet a developer is running
(or with each other)."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fanout.fleet import Fleet, load_fleet
from fanout.fleet_checks import PROJECT_ENV
from localfleet import cli, procs
from localfleet.dags_test_server import server_key
from localfleet.kube_files import admin_kubeconfig_beside

REPO = Path(__file__).resolve().parents[1]


LOCAL_FLEET = REPO / "include/fleets/local.yaml"


def write_test_fleet(
    folder: Path,
    lags: dict[str, int] | None = None,
    kubeconfig: Path | None = None,
    traffic: dict[str, Any] | None = None,
    regions: dict[str, dict[str, Any]] | None = None,
    base: Path = LOCAL_FLEET,
    metrics: bool = False,
    **top: Any,
) -> Fleet:
    """A local fleet file (`base`, include/fleets/local.yaml unless given) on free ports, its
    kubeconfig `folder/kubeconfig` unless given.

    `lags` overrides replication lags by region; `top` replaces top-level keys
    (e.g. gates=…, failure_policy=…); `traffic` updates traffic_manager keys (routing_method=…);
    `regions` updates regions by name ({"westus": {"standby": "warm"}}, endpoint keys merged).
    `gates.metrics` is dropped (a release without users would wait out every window for nothing)
    unless `metrics`; then its Prometheus (started with the fleet) gets a free port.
    The file names this repository's app and chart by absolute path, so this repository is the
    project its paths may point into (FANOUT_PROJECT_DIR)."""
    os.environ.setdefault(PROJECT_ENV, str(REPO))
    data = yaml.safe_load(base.read_text())
    data["app"]["source"] = {
        "git": {**data["app"]["source"]["git"], "url": f"http://127.0.0.1:{procs.free_port()}/hello.git"}
    }
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    data["registry"]["endpoints"] = {r: f"127.0.0.1:{procs.free_port()}" for r in data["registry"]["endpoints"]}
    data["traffic_manager"]["base_url"] = f"http://127.0.0.1:{procs.free_port()}"
    data["traffic_manager"]["dns_port"] = procs.free_port()
    data["traffic_manager"]["dns_ttl_seconds"] = 2  # short, so that the release's DNS waits stay short
    # Every edge on its own loopback address, one port: a DNS answer (an address) picks the region.
    edge_port = procs.free_port()
    for number, region in enumerate(data["regions"], start=1):
        region["edge_url"] = f"http://127.0.1.{number}:{edge_port}"
        region["cluster"]["kubeconfig"]["path"] = str(kubeconfig or folder / "kubeconfig")
        region["local"]["apiserver_port"] = procs.free_port()
        # Replicas still lag, but 2 s at most unless a test says otherwise: every release waits for
        # its slowest replica (8 s in local.yaml), and a test session makes dozens of releases.
        lag = region["local"].get("replication_lag_seconds", 0)
        region["local"]["replication_lag_seconds"] = (lags or {}).get(region["name"], min(lag, 2))
    data["traffic_manager"].update(traffic or {})
    gates = data.setdefault("gates", {})
    # The waits every release of a test session repeats per region, short: soak 1 s, HTTP probes
    # 0.5 s apart (the gates still soak and still need their successes in a row).
    gates["soak_seconds"] = min(gates.get("soak_seconds", 0), 1)
    gates.setdefault("http", {})["interval_seconds"] = 0.5
    if not metrics:
        gates.pop("metrics", None)
    elif gates.get("metrics"):
        gates["metrics"]["source"]["url"] = f"http://127.0.0.1:{procs.free_port()}"
    for region in data["regions"]:
        change = dict((regions or {}).get(region["name"], {}))
        region["endpoint"].update(change.pop("endpoint", {}))
        region.update(change)
    data.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_fleet(path)


def start_test_fleet(folder: Path, **kwargs: Any) -> tuple[Fleet, Path]:
    """Write a test fleet into `folder` and bring it up; returns (fleet, state dir). If it cannot
    come up, what did start is stopped again: a failed fixture has no teardown to do it."""
    fleet = write_test_fleet(folder, **kwargs)
    state = folder / "state"
    try:
        cli.up(fleet, state, etcd_ports=(procs.free_port(), procs.free_port()), progress=_quiet)
    except BaseException:
        cli.down(fleet, state, progress=_quiet)
        raise
    return fleet, state


def _quiet(line: str) -> None:
    if os.environ.get("FANOUT_TEST_VERBOSE"):
        print(line, flush=True)


def airflow_env(airflow_home: Path, fleet_path: Path) -> dict[str, str]:
    """The environment for an Airflow command that sees only `fleet_path`'s DAGs."""
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FANOUT_FLEETS": str(fleet_path),
        PROJECT_ENV: os.environ.get(PROJECT_ENV, str(REPO)),
    }


def dags_test(
    airflow_home: Path, fleet_path: Path, dag_id: str, conf: dict[str, Any], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """One DAG run under `airflow dags test` seeing only `fleet_path`'s DAGs; output (stdout and
    stderr together) in `.stdout`. The database is migrated first when it is new. The run is a
    child of a fork server that imported Airflow once (localfleet.dags_test_server)."""
    env = airflow_env(airflow_home, fleet_path)
    migrate(env)
    return _dags_test_server(env).run(["dags", "test", dag_id, "--conf", json.dumps(conf)], env, timeout)


class _DagsTestServer:
    """The client side of localfleet.dags_test_server: one server process per Airflow environment."""

    def __init__(self, env: dict[str, str]) -> None:
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        self.log = Path(env["AIRFLOW_HOME"]) / "dags-test-server.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localfleet.dags_test_server"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,  # unbuffered, so that select() sees every reply line
            )

    def _reply(self, timeout: float | None = None) -> dict[str, int] | None:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the dags test server stopped (exit {self.proc.wait()}); see {self.log}")
        return json.loads(line)

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        fd, output = tempfile.mkstemp(prefix="dags-test-", suffix=".log")
        os.close(fd)
        try:
            self.proc.stdin.write((json.dumps({"argv": argv, "env": env, "output": output}) + "\n").encode())
            pid = self._reply()["pid"]
            done = self._reply(timeout)
            if done is None:
                os.killpg(pid, signal.SIGKILL)
                self._reply()
                raise subprocess.TimeoutExpired(["airflow", *argv], timeout, output=Path(output).read_text())
            return subprocess.CompletedProcess(["airflow", *argv], done["exit"], Path(output).read_text())
        finally:
            os.unlink(output)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


_servers: dict[tuple[tuple[str, str], ...], _DagsTestServer] = {}


def _dags_test_server(env: dict[str, str]) -> _DagsTestServer:
    key = server_key(env)
    server = _servers.get(key)
    if server is None or server.proc.poll() is not None:
        server = _servers[key] = _DagsTestServer(env)
        atexit.register(server.close)
    return server


def migrate(env: dict[str, str]) -> None:
    """`airflow db migrate` for AIRFLOW_HOME in `env`, once per home (a no-op costs seconds too)."""
    marker = Path(env["AIRFLOW_HOME"]) / ".fanout-migrated"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        marker.touch()


def apply_deployment(fleet: Fleet, region: str, digest: str, replicas: int = 2, admin: bool = False) -> None:
    """Create or update the app's Deployment in `region` (no Helm) so that it runs `digest`: what a
    release leaves behind, for tests of the parts that read it. With `admin`, as the cluster admin
    (the kubeconfig beside the fleet's); otherwise the fleet's own kubeconfig must be an admin's."""
    from kubernetes import client, config

    access = fleet.region(region).cluster.kubeconfig
    path = fleet.resolve(access.path)
    api = config.new_client_from_config(str(admin_kubeconfig_beside(path) if admin else path), access.context)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns, name = fleet.app.namespace, fleet.app.name
    if ns not in [n.metadata.name for n in core.list_namespace().items]:
        core.create_namespace({"metadata": {"name": ns}})
    labels = {"app": name}
    image = f"{fleet.registry.endpoint(region)}/x@{digest}"
    body = {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": image}]}},
        },
    }
    if name in [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]:
        apps.patch_namespaced_deployment(name, ns, body)
    else:
        apps.create_namespaced_deployment(ns, body)


T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 60.0, interval: float = 0.25, what: str = "") -> T:
    """Call `check` until it returns something true, and return that; fail after `timeout` seconds
    naming `what` (or the check's docstring) and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or check.__doc__ or check} (last: {value!r})")
        time.sleep(interval)
