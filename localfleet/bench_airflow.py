"""`python -m localfleet.bench_airflow`: worker slots a release holds while it waits, on a real Airflow.

Brings up a private local fleet and a private Airflow (PostgreSQL, api-server, scheduler with
LocalExecutor, dag-processor, triggerer) in a temp folder on free ports, makes one region's
registry replica lag behind, triggers one release, samples its task states until it ends and
prints the slot figures of localfleet.slots. Then it tears everything down and checks that no
process is left. The fleet is new, so the digest the release builds is new to every replica:
the lag is a real wait.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from fanout.trigger import AirflowApi, TriggerError
from localfleet import cli, procs
from localfleet.airflow_stack import AirflowStack, StackError
from localfleet.faults import update_faults
from localfleet.git import repo as git_repo
from localfleet.slots import INLINE_SECONDS, SlotSampler, is_wait, summarize
from localfleet.testing import write_test_fleet

DAG_ID = "release_hello"
T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {line}", flush=True)


@contextlib.contextmanager
def timed(what: str) -> Iterator[dict[str, float]]:
    took: dict[str, float] = {}
    started = time.monotonic()
    say(f"{what} …")
    yield took
    took["s"] = time.monotonic() - started
    say(f"{what}: {took['s']:.1f} s")


def wait_for_dag(api: AirflowApi, dag_id: str = DAG_ID, timeout: float = 600) -> None:
    """Until the dag-processor has parsed the release DAG (and it is unpaused)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            dag = api.get_dag(dag_id)
        except TriggerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
            continue
        if dag.get("is_paused"):
            api.unpause(dag_id)
        return


def wait_for_run(api: AirflowApi, run_id: str, timeout: float) -> dict[str, Any]:
    deadline, state = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        run = api.get_run(DAG_ID, run_id) or {}
        if run.get("state") != state:
            state = run.get("state")
            say(f"run {run_id}: {state}")
        if state in ("success", "failed"):
            return run
        time.sleep(2)
    raise TimeoutError(f"run {run_id} still {state} after {timeout:.0f} s")


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def print_figures(f: dict[str, Any], startup_s: float, release_s: float | None, errors: int, interval: float) -> None:
    rows = [
        ("Airflow stack start-up", f"{startup_s:.1f} s"),
        ("release duration (run start → end)", "?" if release_s is None else f"{release_s:.1f} s"),
        ("sampled", f"{f['duration_s']:.1f} s, {f['samples']} samples every {interval} s, {errors} API errors"),
        ("worker slots (parallelism)", f"{f['parallelism']}"),
        ("busy worker slots (running), peak / mean", f"{f['peak_running']} / {f['mean_running']:.2f}"),
        ("deferred tasks, peak / mean", f"{f['peak_deferred']} / {f['mean_deferred']:.2f}"),
        ("wait slot-seconds: running / deferred", f"{f['wait_running_s']:.1f} / {f['wait_deferred_s']:.1f}"),
        (
            f"  beyond the {INLINE_SECONDS:.0f} s inline phase: running / deferred",
            f"{f['wait_running_beyond_inline_s']:.1f} / {f['wait_deferred_beyond_inline_s']:.1f}   (goal: running 0)",
        ),
        ("peak running waits while a wait was deferred", f"{f['peak_running_waits_while_deferred']}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"\n  {'wait task':<34} {'running s':>9} {'deferred s':>10} {'running beyond inline s':>24}")
    for task, w in sorted(f["waits"].items()):
        print(f"  {task:<34} {w['running_s']:9.1f} {w['deferred_s']:10.1f} {w['running_beyond_inline_s']:24.1f}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.bench_airflow", description=__doc__.split("\n")[0])
    parser.add_argument("--lag", type=int, default=30, help="replication lag of the slow replica, seconds (30)")
    parser.add_argument("--region", default="northeurope", help="the region whose replica lags (northeurope)")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval, seconds (0.5)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up on the release after this (1800 s)")
    parser.add_argument("--samples", type=Path, help="also write the samples to this JSON file")
    parser.add_argument("--keep", action="store_true", help="leave the fleet and Airflow running afterwards")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-airflow-"))
    say(f"private fleet and Airflow in {folder}")
    fleet = write_test_fleet(folder / "fleet")
    state = cli.state_dir(fleet, folder / "cache")  # `python -m localfleet` with FANOUT_CACHE=<folder>/cache
    stack = AirflowStack(folder / "airflow", fleet.source_path, procs.free_port())
    ok = False
    try:
        with timed("local fleet up"):
            ports = (procs.free_port(), procs.free_port())
            cli.up(fleet, state, progress=lambda line: say(f"  fleet: {line}"), etcd_ports=ports)
        with timed("Airflow stack up") as startup:
            stack.up(progress=lambda line: say(f"  airflow: {line}"))
        user, password = stack.credentials()
        api, sampling_api = (AirflowApi(stack.url, username=user, password=password) for _ in range(2))
        api.login()
        sampling_api.login()  # its own connection: the sampler thread never shares a client
        with timed(f"DAG {DAG_ID} parsed"):
            wait_for_dag(api)

        update_faults(state, replica_lag={args.region: args.lag})
        say(f"replica lag: {args.region} serves a new digest {args.lag} s after the home registry")
        sha = git_repo.commit_app(fleet.app.source.git, f"bench-{uuid.uuid4().hex}")  # a new digest to build
        run_id = f"bench__{sha[:12]}"
        body = {"logical_date": None, "conf": {"git_sha": sha}, "dag_run_id": run_id}
        api.trigger(DAG_ID, body)
        say(f"triggered {DAG_ID} run {run_id} (git_sha {sha}: the image is built and pushed by the run)")
        # Sampling starts once the run exists (before, every call is a 404); it sits queued for seconds first.
        with SlotSampler(sampling_api, DAG_ID, run_id, interval=args.interval) as sampler:
            run = wait_for_run(api, run_id, args.timeout)
        if args.samples:
            args.samples.write_text(json.dumps(sampler.samples))
            say(f"samples written to {args.samples}")
        ok = run.get("state") == "success"
        if sampler.errors:
            say(f"sampler: {sampler.errors} API errors, last: {sampler.last_error}")
        for ti in api.task_instances(DAG_ID, run_id):
            if ti.get("state") not in ("success", "skipped"):
                say(f"  task {ti['task_id']}: {ti.get('state')}")
        figures = summarize(sampler.samples, is_wait, stack.settings["parallelism"])
        release_s = seconds_between(run.get("start_date"), run.get("end_date"))
        print_figures(figures, startup["s"], release_s, sampler.errors, args.interval)
        api.close()
        sampling_api.close()
    except (StackError, TriggerError, TimeoutError, OSError) as err:
        say(f"error: {err}")
    finally:
        if args.keep:
            say(f"kept: Airflow at {stack.url} (password in {stack.home}); stop both with:")
            print(f"  python -m localfleet.airflow_stack down --remove --folder {stack.folder}")
            print(f"  FANOUT_CACHE={folder / 'cache'} python -m localfleet --fleet {fleet.source_path} down")
        else:
            teardown(fleet, state, stack, folder)
    say("release " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


def teardown(fleet: Any, state: Path, stack: AirflowStack, folder: Path) -> None:
    with timed("Airflow stack down"):
        swept = stack.down(progress=lambda line: say(f"  airflow: {line}"), remove=True)
    say(f"leftover Airflow processes the stack's sweep found and killed: {swept}")
    with timed("local fleet down"):
        cli.down(fleet, state, progress=lambda line: say(f"  fleet: {line}"))
    left = procs.pids_mentioning(folder)
    say(f"processes still naming {folder} after down: {len(left)}" + (f" {left}" if left else ""))
    if not left:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
