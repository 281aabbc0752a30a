"""docker-compose.yaml and the Dockerfile for real: built and started on a Docker engine, then a
release through the stack to a private local fleet, one region re-run over the REST API, and
`docker-compose down -v` leaving nothing behind.

The engine and base images are this machine's (tests/compose/docker_engine.py, images/README.md);
the compose file and the Dockerfile are the production ones, with settings only from the
environment. The one change for this machine is `override()`: the scheduler (where tasks run)
and the triggerer (where waits run) use the host's network, because the fleet they release to
listens on the host's loopback and this engine may not route a bridge anywhere (no iptables, no
NAT); they reach postgres and the api-server, which stay on the project's bridge network as in
production, at fixed addresses there, and listen on free ports instead of Airflow's defaults.
The private fleet file and its kubeconfig are mounted where the file names them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from common import AIRFLOW_UID, TIMINGS, say, timing
from cryptography.fernet import Fernet
from docker_engine import REPO, Engine
from release_checks import new_commit, snapshot

from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.git_source import GitRepository
from fanout.adapters.release_image import build_commit
from fanout.airflow.hooks import cache_dir
from fanout.trigger import AirflowApi
from localfleet import procs

pytestmark = [pytest.mark.compose, pytest.mark.localfleet]

PROJECT = "fanout-compose-test"
COMPONENTS = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
DAG = "release_hello"
REGION = "eastus"
REGION_TASKS = ("drain", "dns_settle", "helm_deploy", "gates", "restore", "rollback")


# Fixed addresses on the project's bridge network for the two services the host-network ones call.
SUBNET = "172.31.254.0/24"
ADDRESSES = {"postgres": "172.31.254.10", "airflow-apiserver": "172.31.254.11"}
ON_HOST_NETWORK = ("airflow-scheduler", "airflow-triggerer")  # the ones that talk to the fleet


def override(ports: dict[str, int], fleet_dir: Path, kubeconfig: tuple[Path, Path]) -> dict:
    """The one machine-specific layer over docker-compose.yaml (see the module docstring).
    `kubeconfig`: (the containers' copy, the path the fleet file names) — see container_kubeconfig."""
    fleet = [f"{fleet_dir}:{fleet_dir}:ro", f"{kubeconfig[0]}:{kubeconfig[1]}:ro"]
    # The chart, and the local token service's client for the kubeconfig's exec plugin.
    fleet += [f"{REPO / d}:{REPO / d}:ro" for d in ("include", "localfleet", "plugins")]
    services: dict = {name: {"networks": {"default": {"ipv4_address": ip}}} for name, ip in ADDRESSES.items()}
    services["airflow-dag-processor"] = {"volumes": fleet, "environment": {"FANOUT_PROJECT_DIR": str(REPO)}}
    for name in ON_HOST_NETWORK:
        services[name] = {
            "network_mode": "host",
            "extra_hosts": [f"{host}:{ip}" for host, ip in ADDRESSES.items()],
            # Off the host's default ports, which other Airflows on the machine may hold.
            "environment": {
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports["scheduler_health"]),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_logs"]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger_logs"]),
                # The private fleet file names the chart where this work tree is mounted.
                "FANOUT_PROJECT_DIR": str(REPO),
            },
            "volumes": fleet,
        }
    services["airflow-scheduler"]["healthcheck"] = {
        "test": ["CMD", "curl", "--fail", f"http://localhost:{ports['scheduler_health']}/health"]
    }
    return {"networks": {"default": {"ipam": {"config": [{"subnet": SUBNET}]}}}, "services": services}


class Stack:
    def __init__(self, engine: Engine, images: dict[str, str], fleet, fleet_dir: Path, kubeconfig: Path):
        self.engine = engine
        self.ports = {
            name: procs.free_port() for name in ("postgres", "api", "scheduler_health", "worker_logs", "trigger_logs")
        }
        self.url = f"http://127.0.0.1:{self.ports['api']}"
        folder = engine.run_dir
        layer = override(self.ports, fleet_dir, (kubeconfig, Path(fleet.regions[0].cluster.kubeconfig.path)))
        (folder / "override.yaml").write_text(yaml.safe_dump(layer, sort_keys=False))
        (folder / "empty.env").write_text("")  # never the work tree's .env
        self.argv = [
            "docker-compose",
            "--project-name", PROJECT,
            "--project-directory", str(REPO),
            "--env-file", str(folder / "empty.env"),
            "-f", str(REPO / "docker-compose.yaml"),
            "-f", str(folder / "override.yaml"),
        ]  # fmt: skip
        self.env = {
            "FANOUT_JWT_SECRET": secrets.token_hex(32),
            "FANOUT_FERNET_KEY": Fernet.generate_key().decode(),
            "FANOUT_FLEETS": str(fleet.source_path),
            "FANOUT_IMAGE": images["fanout"],
            "AIRFLOW_IMAGE": images["airflow"],
            "GO_IMAGE": images["golang"],
            "POSTGRES_IMAGE": images["postgres"],
            "AIRFLOW_UID": str(AIRFLOW_UID),
            "AIRFLOW_API_PORT": f"127.0.0.1:{self.ports['api']}",
        }

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**self.engine.env, **self.env}
        done = subprocess.run([*self.argv, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)}: {done.returncode}\n{done.stderr[-4000:]}")
        return done

    def containers(self) -> dict[str, dict]:
        """docker inspect of each of the project's containers, by service."""
        ids = self.engine.run("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
        if not ids:
            return {}
        found = json.loads(self.engine.run("inspect", *ids).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in found}

    def health(self) -> dict[str, str | None]:
        return {s: (c["State"].get("Health") or {}).get("Status") for s, c in self.containers().items()}

    def logs(self, lines: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines), check=False).stdout

    def wait_healthy(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.containers()
            health = self.health()
            init = found.get("airflow-init", {}).get("State", {})
            if init.get("Status") == "exited" and init.get("ExitCode") != 0:
                raise AssertionError(f"airflow-init failed ({init['ExitCode']}):\n{self.logs(80)}")
            if init.get("Status") == "exited" and all(health.get(s) == "healthy" for s in ("postgres", *COMPONENTS)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not all healthy after {timeout:.0f} s: {health}\n{self.logs()}")
            time.sleep(3)

    def api(self) -> AirflowApi:
        # The README's way to the generated admin password.
        done = self.compose(
            "exec", "-T", "airflow-apiserver", "cat", "/opt/airflow/config/simple_auth_manager_passwords.json.generated"
        )
        self.password = json.loads(done.stdout)["admin"]
        api = AirflowApi(self.url, username="admin", password=self.password, timeout=60)
        api.login()
        return api

    def trigger(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m fanout trigger …` as CI runs it, from the host, against the stack's REST API."""
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "plugins"),
            "FANOUT_AIRFLOW_URL": self.url,
            "FANOUT_AIRFLOW_USERNAME": "admin",
            "FANOUT_AIRFLOW_PASSWORD": self.password,
        }
        argv = [sys.executable, "-m", "fanout", "trigger", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)


def build_app(fleet, sha: str) -> str:
    """The image of commit `sha`, built and labelled as CI builds it before triggering (in production
    ACR Tasks builds, not the Airflow containers; the local fleet's builder is buildah, which the
    image does not carry). The release checks the label against the commit it resolves itself."""
    registry, source = fleet.registry, fleet.app.source
    builder = BuildahBuilder(cache_dir() / "buildah", insecure=registry.insecure)
    destination = f"{registry.pull_host(registry.home)}/{registry.repository}:compose-{time.time_ns()}"
    repository = GitRepository(source.git.url)
    commit = repository.resolve(sha, "main")
    built = build_commit(
        repository, source, commit, registry.repository,
        lambda context, labels: builder.build_and_push(context, destination, labels),
    )  # fmt: skip
    return built.digest


def wait_run(api: AirflowApi, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (state := api.get_run(DAG, run_id)["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"{run_id} still {state} after {timeout:.0f} s"
        time.sleep(3)
    return state


def task_log(api: AirflowApi, run_id: str, task_id: str, attempt: int) -> str:
    path = f"{api._run_path(DAG, run_id)}/taskInstances/{task_id}/logs/{attempt}?full_content=true"
    return api._request("GET", path, retry=True).text


def failed_task_logs(api: AirflowApi, run_id: str) -> str:
    """The end of each failed task's log: what went wrong, not only that it did."""
    found = []
    for ti in api.task_instances(DAG, run_id):
        if ti["state"] == "failed":
            found.append(f"--- {ti['task_id']} ---\n{task_log(api, run_id, ti['task_id'], ti['try_number'])[-3000:]}")
    return "\n".join(found)


def listening(ports: dict[str, int]) -> dict[str, int]:
    return {name: port for name, port in ports.items() if procs.port_open("127.0.0.1", port)}


def test_compose_up_releases_through_the_stack_and_down_leaves_nothing(
    engine, images, compose_fleet, fleet_dir, container_kubeconfig
):
    fleet, _ = compose_fleet
    stack = Stack(engine, images, fleet, fleet_dir, container_kubeconfig)
    try:
        with timing("docker-compose up → every service healthy"):
            up = stack.compose("up", "-d", "--no-build", check=False)
            assert up.returncode == 0, f"{up.stderr[-3000:]}\n{stack.health()}\n{stack.logs(60)}"
            stack.wait_healthy()
        found = stack.containers()
        # The production shape ran: the images given, as the users given, nothing restarted.
        assert found["postgres"]["Config"]["Image"] == images["postgres"]
        for service in (*COMPONENTS, "airflow-init"):
            assert found[service]["Config"]["Image"] == images["fanout"], service
        for service in COMPONENTS:
            assert found[service]["Config"]["User"] == f"{AIRFLOW_UID}:0"
            assert found[service]["RestartCount"] == 0, (service, stack.logs())
        assert found["airflow-init"]["State"]["ExitCode"] == 0
        helm = stack.compose("exec", "-T", "airflow-scheduler", "helm", "version", "--short").stdout
        assert helm.startswith("v4."), helm

        api = stack.api()
        sha = new_commit(fleet, "compose")
        digest = build_app(fleet, sha)
        run_id = f"merge__{sha}__compose"
        with timing("release: fanout trigger --wait"):
            done = stack.trigger(
                "--app", "hello", "--git-sha", sha, "--image", digest, "--run-id", run_id, "--unpause", "--wait"
            )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:] + failed_task_logs(api, run_id) + stack.logs()
        assert done.stdout == f"{run_id}\n"
        state = snapshot(fleet)
        assert {s.digest for s in state.values()} == {digest}, state
        assert all(s.enabled for s in state.values()), state

        # One region re-run: its TaskGroup cleared over the REST API, as the README documents.
        first = {ti["task_id"]: ti for ti in api.task_instances(DAG, run_id)}
        group = [f"deploy_{REGION}.{step}" for step in REGION_TASKS]
        with timing(f"clear {REGION} over REST and re-run it"):
            body = {"dry_run": False, "only_failed": False, "dag_run_id": run_id, "task_ids": group}
            api._request("POST", f"/api/v2/dags/{DAG}/clearTaskInstances", json=body)
            assert wait_run(api, run_id, timeout=600) == "success"
        second = {ti["task_id"]: ti for ti in api.task_instances(DAG, run_id)}
        for task_id, ti in second.items():
            ran_again = task_id in group and task_id != f"deploy_{REGION}.rollback"
            assert ti["try_number"] == first[task_id]["try_number"] + ran_again, (task_id, ti)
        helm = f"deploy_{REGION}.helm_deploy"
        helm_log = task_log(api, run_id, helm, second[helm]["try_number"])
        assert "no upgrade" in helm_log, helm_log[-3000:]
        assert snapshot(fleet) == state
        api.close()
    finally:
        with timing("docker-compose down -v"):
            down = stack.compose("down", "-v", "--remove-orphans", check=False)
    assert down.returncode == 0, down.stderr
    assert engine.leftovers() == {}
    assert listening(stack.ports) == {}
    # Only the engine itself (dockerd, containerd) is left running; no container shim.
    leftover = [pid for pid in procs.pids_mentioning(engine.run_dir) if "containerd-shim" in _cmdline(pid)]
    assert leftover == []
    say("timings so far: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
