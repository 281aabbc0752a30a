"""`airflow dags test` for a test session without paying Airflow's start-up on every run.

A session makes dozens of `airflow dags test` runs. A new interpreter spends about 4 s of CPU
importing Airflow's CLI, its in-process execution API and the clients Fanout's tasks use before
the first task starts. This server (one per Airflow environment) imports them once and forks one
child per run. The child takes the run's environment, writes its output to a file and runs
Airflow's own CLI, exactly as `python -m airflow dags test …` would; the DAG file is parsed in
the child, so each run sees its own fleet file.

Everything that decides how Airflow is configured (AIRFLOW_*, PYTHONPATH) is read once, at import,
so the client starts another server when those differ (`server_key`).

Protocol, one JSON line each way per run: {"argv", "env", "output"} → {"pid"}, then {"exit"}.
The server exits when its stdin closes, so it never outlives the test session.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import Any

# What a `dags test` run imports before its first task starts, measured with -X importtime.
PRELOAD = (
    "airflow.cli.cli_parser",
    "airflow.cli.commands.dag_command",
    "airflow.api_fastapi.execution_api.app",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.serialization.serialized_objects",
    "kubernetes.client",
    "azure.identity",
    "azure.mgmt.trafficmanager",
    "azure.containerregistry",
    "httpx",
)


def server_key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The part of a run's environment the server fixed at import."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("AIRFLOW") or k == "PYTHONPATH"))


def _quick_polls() -> None:
    """`Dag.test()` sleeps 1 s whenever no task is ready, which happens once per layer of tasks a
    failure marks upstream_failed: about 9 s of every failed run. Polling at 0.1 s changes only
    how soon it looks again (the scheduler it stands in for does not wait either)."""
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        caller = sys._getframe(1).f_code
        if seconds == 1 and caller.co_name == "test" and caller.co_filename.endswith("sdk/definitions/dag.py"):
            seconds = 0.1
        real_sleep(seconds)

    time.sleep = sleep


def _run_child(request: dict[str, Any], replies: int) -> None:
    """In the forked child: become the run, then exit with its exit code."""
    os.setsid()  # the client ends a run that outlives its timeout by killing this process group
    os.environ.clear()
    os.environ.update(request["env"])
    out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    nothing = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((0, nothing), (1, out), (2, out)):
        os.dup2(target, fd)
    os.close(out)
    os.close(nothing)
    os.close(replies)
    sys.argv = ["airflow", *request["argv"]]
    _quick_polls()
    code: int = 1
    try:
        from airflow.__main__ import main

        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import importlib

    # Replies get their own descriptor; whatever an import prints goes to stderr, not into them.
    replies = os.dup(1)
    os.dup2(2, 1)
    for name in PRELOAD:
        importlib.import_module(name)

    def reply(**message: int) -> None:
        os.write(replies, (json.dumps(message) + "\n").encode())

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request, replies)
        reply(pid=pid)
        _, status = os.waitpid(pid, 0)
        reply(exit=os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    serve()
