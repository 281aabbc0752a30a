"""A real Airflow for the local fleet, the way teams run it: PostgreSQL, then the api-server,
scheduler, dag-processor and triggerer as separate processes. The executor is LocalExecutor (tasks
run under the scheduler) or, with `executor="celery"`, CeleryExecutor: a Redis broker (Debian's
redis-server) and two Celery workers, each with its own temporary and tool folders, as two
machines would have; the tasks each one runs record its name as their host.

`airflow dags test` runs a DAG in one process and replaces its run each time; per-merge
triggers, queued and superseded runs, clearing one region and scheduled checks need the real
thing. Everything lives in one folder:

    <folder>/stack.json   ports and secrets, so `up` again and `down` find the same stack
    <folder>/home/        AIRFLOW_HOME (task logs under home/logs)
    <folder>/pids, logs/  one pidfile and log per process (localfleet.procs)
    <folder>/redis/       Celery mode: the broker's working folder (it persists nothing)
    <folder>/workers/<name>/tmp, cache, config, data
                          Celery mode: each worker's TMPDIR and XDG folders (Helm's cache and
                          registry logins), so kubeconfigs and values files stay on their worker

`up` is idempotent; `down` stops every part and then any process still carrying this
AIRFLOW_HOME (task processes outlive a killed scheduler otherwise), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fanout.cache import cache_dir
from localfleet import procs
from localfleet.postgres import Postgres, PostgresError
from localfleet.testing import airflow_env
from localfleet.worker_name import ENV as WORKER_NAME_ENV

DEFAULT_FOLDER = cache_dir() / "airflow"
DEFAULT_API_PORT = 8280  # not 8080: leave that to an Airflow the developer runs already
COMPONENTS = ("apiserver", "scheduler", "dag-processor", "triggerer")
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
# Celery mode: the broker, then two workers. Concurrency 4 each: together the stack's parallelism.
REDIS = "redis"
WORKERS = ("worker1", "worker2")
WORKER_CONCURRENCY = 4
Progress = Callable[[str], None]


class StackError(RuntimeError):
    """A part of the local Airflow failed; the message names it and quotes its log."""


# A release is a chain of short dependent tasks: what matters is how soon the next one starts.
TUNED = {
    # Default 1 s: an idle scheduler loop sleeps that long, so a task that ends just after the
    # loop went idle waits up to 1 s for its downstream to be scheduled — on every boundary of
    # the critical path. A loop that did something never sleeps; 0.2 s costs little CPU.
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    # Default 30 s: the dag-processor parses every DAG file that often, taking CPU from the task
    # processes of a small machine in the middle of a release. The fleet files change only
    # with a merge; the DAG is then re-parsed within 2 minutes.
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
}


class AirflowStack:
    def __init__(
        self,
        folder: Path,
        fleet_path: Path,
        api_port: int | None = None,
        parallelism: int = 8,
        tuned: bool = True,
        executor: str | None = None,
    ):
        """`executor` "local" or "celery"; None keeps what stack.json says (a new stack: "local")."""
        if executor is not None and executor not in EXECUTORS:
            raise StackError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
        self.tuned = tuned
        self.folder, self.fleet_path = folder.resolve(), fleet_path.resolve()
        self.settings = self._settings(api_port, parallelism)
        if executor is not None and executor != self.executor:
            self._change_executor(executor)
        self.postgres = Postgres(self.folder, self.settings["postgres_port"])

    @property
    def executor(self) -> str:
        return self.settings.get("executor", "local")

    @property
    def parts(self) -> tuple[str, ...]:
        """Every process of the stack but PostgreSQL, in start order."""
        if self.executor == "celery":
            return (REDIS, *COMPONENTS, *WORKERS)
        return COMPONENTS

    def worker_folder(self, name: str) -> Path:
        return self.folder / "workers" / name

    def worker_tmp(self, name: str) -> Path:
        """A Celery worker's TMPDIR: its tasks' kubeconfigs and values files live there while they run."""
        return self.worker_folder(name) / "tmp"

    @property
    def home(self) -> Path:
        return self.folder / "home"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings['api_port']}"

    def _settings(self, api_port: int | None, parallelism: int) -> dict[str, Any]:
        path = self.folder / "stack.json"
        if path.exists():
            settings = json.loads(path.read_text())
            if api_port is None or settings["api_port"] == api_port:
                return settings
        from cryptography.fernet import Fernet

        settings = {
            "api_port": api_port or DEFAULT_API_PORT,
            "postgres_port": procs.free_port(),
            "worker_log_port": procs.free_port(),
            "trigger_log_port": procs.free_port(),
            "parallelism": parallelism,
            "jwt_secret": secrets.token_urlsafe(32),
            "fernet_key": Fernet.generate_key().decode(),
            "executor": "local",
        }
        self._save(settings)
        return settings

    def _save(self, settings: dict[str, Any]) -> None:
        path = self.folder / "stack.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(settings, indent=1))

    def _change_executor(self, executor: str) -> None:
        running = [name for name in (*COMPONENTS, REDIS, *WORKERS) if procs.alive(name, self.folder)]
        if running:
            raise StackError(
                f"executor: the stack in {self.folder} runs with the {self.executor} executor "
                f"({', '.join(running)} running); stop it first (down)"
            )
        self.settings["executor"] = executor
        if executor == "celery" and "redis_port" not in self.settings:
            self.settings["redis_port"] = procs.free_port()
            self.settings["redis_password"] = secrets.token_urlsafe(24)
        self._save(self.settings)

    @property
    def broker_url(self) -> str:
        """Celery mode: the Redis broker, password-protected (any local user can reach loopback)."""
        return f"redis://:{self.settings['redis_password']}@127.0.0.1:{self.settings['redis_port']}/0"

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack (and of `airflow` commands run
        against it)."""
        s, url = self.settings, self.url
        return {
            **airflow_env(self.home, self.fleet_path),
            # Components run `airflow …` and tasks run `helm`: the venv's bin comes first.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url(),
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
            **(self._celery_env() if self.executor == "celery" else {}),
            # An admin for everything, and a read-only user that Airflow must refuse a freeze.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,auditor:viewer",
            "AIRFLOW__CORE__PARALLELISM": str(s["parallelism"]),
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            # Local only: a DAG runs on its schedule as soon as it is parsed (production keeps the default).
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(s["api_port"]),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(s["worker_log_port"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(s["trigger_log_port"]),
            # One machine runs the fleet, every task process and a one-worker api-server: under
            # load a worker's call to the Execution API takes longer than the 5 s default and the
            # task fails while still queued, and a task's DAG parse takes longer than 30 s.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            **(TUNED if self.tuned else {}),
        }

    def _celery_env(self) -> dict[str, str]:
        return {
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            # Task states come back through the stack's PostgreSQL, as in Airflow's own compose file.
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.postgres.url()}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        }

    def worker_env(self, name: str) -> dict[str, str]:
        """One Celery worker's environment: the stack's, plus its own folders and name.

        TMPDIR is where its tasks write kubeconfigs and values files (tempfile), XDG_* where Helm
        keeps its cache and registry logins: per worker, as on two machines. HOME stays: a fleet
        file's `~` must mean the same on every worker (one machine, one user). Logs stay in the
        shared AIRFLOW_HOME/logs — the shared log volume of Airflow's compose file — and the
        workers serve none: both would want the one worker_log_server_port the api-server asks.
        """
        folder = self.worker_folder(name)
        return {
            **self.env(),
            "TMPDIR": str(folder / "tmp"),
            "XDG_CACHE_HOME": str(folder / "cache"),
            "XDG_CONFIG_HOME": str(folder / "config"),
            "XDG_DATA_HOME": str(folder / "data"),
            # What the tasks it runs record as their host (the TI's hostname in the REST API).
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "localfleet.worker_name.hostname",
            WORKER_NAME_ENV: name,
            # What Fanout caches (the Helm binary among it) is the machine's, not the worker's.
            "FANOUT_CACHE": str(cache_dir()),
        }

    # -- lifecycle -----------------------------------------------------------------
    def up(self, progress: Progress = print, timeout: float = 300) -> None:
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        progress(f"postgres on 127.0.0.1:{self.postgres.port}")
        try:
            self.postgres.up()
        except (PostgresError, procs.ProcError) as err:
            raise StackError(str(err)) from None
        progress("airflow db migrate")
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=self.env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-3000:]}")
        if self.executor == "celery":
            progress(f"redis on 127.0.0.1:{self.settings['redis_port']}")
            self.start_part(REDIS)
        for name in (*COMPONENTS, *(WORKERS if self.executor == "celery" else ())):
            progress(f"airflow celery worker {name}" if name in WORKERS else f"airflow {self.command(name)[0]}")
            self.start_part(name)
        progress("waiting until every part reports healthy")
        self._wait("every part healthy", self.healthy, deadline=started + timeout)
        progress(f"Airflow is up at {self.url} in {time.monotonic() - started:.0f} s")

    def command(self, name: str) -> list[str]:
        """The `airflow …` arguments of one Airflow part (COMPONENTS, WORKERS)."""
        if name in WORKERS:
            # --celery-hostname: the Celery node name (celery@worker1), unique per worker.
            return ["celery", "worker", "--celery-hostname", name, "--concurrency", str(WORKER_CONCURRENCY),
                    "--skip-serve-logs"]  # fmt: skip
        return {
            "apiserver": ["api-server", "--host", "127.0.0.1", "--port", str(self.settings["api_port"]), "-w", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],
        }[name]

    def _redis_argv(self) -> list[str]:
        folder = self.folder / REDIS
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The password in a 0600 config file: `--requirepass` on the command line would show in ps.
        conf = folder / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(f"requirepass {self.settings['redis_password']}\n")
        # Loopback only, no snapshots or append-only file: a broker that starts empty each time (a
        # task whose message was lost stays queued in Airflow's database, and the scheduler queues
        # it again after [scheduler] task_queued_timeout).
        port = str(self.settings["redis_port"])
        return [shutil.which("redis-server") or "redis-server", str(conf), "--port", port, "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no",
                "--protected-mode", "yes"]  # fmt: skip

    def start_part(self, name: str) -> int:
        """Start one part if it is not running (also what restarts a part that died); its pid."""
        try:
            if name == REDIS:
                if shutil.which("redis-server") is None:
                    raise StackError("redis-server is not installed: run `make system-packages` (Debian redis-server)")
                return procs.start(name, self._redis_argv(), self.folder, ready=self._redis_ping, timeout=30)
            argv = [sys.executable, "-m", "airflow", *self.command(name)]
            if name in WORKERS:
                for sub in ("tmp", "cache", "config", "data"):
                    (self.worker_folder(name) / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
                return procs.start(name, argv, self.folder, env=self.worker_env(name))
            return procs.start(name, argv, self.folder, env=self.env())
        except procs.ProcError as err:
            raise StackError(str(err)) from None

    def _redis_ping(self) -> bool:
        """Redis answers PING with this stack's password (RESP by hand: no client library needed here)."""
        password = self.settings["redis_password"].encode()
        with socket.create_connection(("127.0.0.1", self.settings["redis_port"]), timeout=2) as conn:
            conn.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password))
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = conn.recv(256)
                if not chunk:
                    break
                answer += chunk
        return answer == b"+OK\r\n+PONG\r\n"

    def workers_answering(self, timeout: float = 1.0) -> set[str]:
        """The workers (by name) that answer a Celery ping through the broker right now: connected,
        consuming, and their pool started. What `celery inspect ping` does, without a subprocess."""
        from celery import Celery
        from kombu.exceptions import OperationalError

        app = Celery(broker=self.broker_url)
        try:
            replies = app.control.ping(timeout=timeout)
        except OperationalError:  # the broker does not answer: neither does any worker
            return set()
        finally:
            app.close()
        return {node.partition("@")[2] for reply in replies for node in reply}

    def _wait(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        while time.monotonic() < deadline:
            for name in self.parts:
                if not procs.alive(name, self.folder):
                    raise StackError(f"{name} exited; last lines of {procs.log_path(name, self.folder)}:\n"
                                     + procs.log_tail(name, self.folder, 30))  # fmt: skip
            try:
                if check():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(1)
        tails = "\n".join(f"--- {n}:\n{procs.log_tail(n, self.folder, 10)}" for n in self.parts)
        raise StackError(f"Airflow not ready ({what}) in time; last log lines:\n{tails}")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
            return json.loads(response.read())

    def healthy(self) -> bool:
        health = self.health()
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        healthy = all((health.get(p) or {}).get("status") == "healthy" for p in parts)
        if healthy and self.executor == "celery":
            return self.workers_answering() >= set(WORKERS)
        return healthy

    def credentials(self, user: str = "admin") -> tuple[str, str]:
        """(username, password) of a user the simple auth manager generated at start-up: `admin`
        (role admin) or `auditor` (role viewer)."""
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return user, json.loads(path.read_text())[user]

    def down(self, progress: Progress = print, remove: bool = False) -> int:
        """Stop every part; returns how many processes outlived their part and had to be killed."""
        # Every part this folder ever had, whatever the executor is now: workers first (a warm
        # shutdown lets their running tasks end), the broker after the scheduler.
        for name in (*reversed(WORKERS), *reversed(COMPONENTS), REDIS):
            if procs.stop(name, self.folder, timeout=30):
                progress(f"stopped {name}")
        self.postgres.down(remove=remove)
        left = procs.pids_mentioning(self.home)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            progress(f"stopped {len(left)} leftover process(es) of {self.home}")
        return len(left)

    def status_rows(self) -> list[dict[str, str]]:
        try:
            health = self.health()
        except (OSError, ValueError):
            health = {}
        names = {"apiserver": "metadatabase", "dag-processor": "dag_processor"}
        rows = [{"part": "postgres", "running": str(self.postgres.running()), "health": "-"}]
        answering: set[str] = set()
        if self.executor == "celery":
            with contextlib.suppress(Exception):  # the broker is down: no worker answers
                answering = self.workers_answering()
        for name in self.parts:
            reported = "-"
            if name == REDIS:
                with contextlib.suppress(OSError):
                    reported = "healthy" if self._redis_ping() else "unhealthy"
            elif name in WORKERS:
                reported = "healthy" if name in answering else "-"
            else:
                reported = (health.get(names.get(name, name)) or {}).get("status", "-")
            rows.append({"part": name, "running": str(procs.alive(name, self.folder)), "health": reported})
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.airflow_stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", type=Path, default=Path("include/fleets/local.yaml"), help="fleet file")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help=f"stack folder (default {DEFAULT_FOLDER})")
    parser.add_argument("--port", type=int, default=None, help=f"api-server port (default {DEFAULT_API_PORT})")
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--remove", action="store_true", help="with down: also delete the database")
    parser.add_argument(
        "--executor",
        choices=sorted(EXECUTORS),
        default=None,
        help="with up: LocalExecutor, or CeleryExecutor with Redis and two workers (default: as before; new: local)",
    )
    args = parser.parse_args(argv)
    try:
        executor = args.executor if args.command == "up" else None
        stack = AirflowStack(args.folder, args.fleet, args.port, executor=executor)
        if args.command == "up":
            stack.up()
            user, _ = stack.credentials()
            print(f"UI and REST API: {stack.url}  user {user}, password in {stack.home}/"
                  "simple_auth_manager_passwords.json.generated")  # fmt: skip
            print("trigger a release: eval $(python -m localfleet.airflow_stack env) && "
                  "python -m fanout trigger --app <app> --git-sha <sha> --wait")  # fmt: skip
            print(f"the Fanout page: {stack.url}/fanout/ (signed in; in the UI: Browse → Fanout)")
        elif args.command == "down":
            stack.down(remove=args.remove)
        elif args.command == "status":
            for row in stack.status_rows():
                print(f"{row['part']:<14} running={row['running']:<6} health={row['health']}")
        else:
            user, password = stack.credentials()
            print(f"export FANOUT_AIRFLOW_URL={stack.url} FANOUT_AIRFLOW_USERNAME={user} "
                  f"FANOUT_AIRFLOW_PASSWORD={password}")  # fmt: skip
    except (StackError, OSError, urllib.error.URLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
