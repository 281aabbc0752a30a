"""`make bench-release`: Fanout's release against a plain script doing the same work, on a real Airflow.

On a private local fleet and a private Airflow (PostgreSQL, LocalExecutor; see bench_airflow),
each round releases a fresh digest twice: once through Fanout (`python -m fanout trigger --wait`,
the real merge trigger) and once with localfleet.plain_release, which uses none of Fanout's
code but does the same steps in the same waves. Then a one-region repair both ways (the region
is first set back to an older digest with Helm, so both have real work). It prints wall times
(min / median over --repeat rounds), their ratio, and for Fanout's median run where the time
goes along the critical path: per task the gap after its upstream ended (scheduling), its
process start and DAG parse, and its own work. `--regions 12` does the same on a generated
12-region fleet. Figures, not assertions: the machine may be shared and loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from fanout.fleet import load_fleet
from fanout.planner import plan_waves
from fanout.trigger import AirflowApi, TriggerError
from localfleet import binaries, cli, procs
from localfleet.airflow_stack import AirflowStack, StackError
from localfleet.bench_airflow import say, teardown, timed, wait_for_dag
from localfleet.git import repo as git_repo
from localfleet.plain_release import Plain
from localfleet.testing import REPO, write_test_fleet

# ---- pure: where a run's time went --------------------------------------------------------------


def _t(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def critical_path(tis: list[dict[str, Any]], upstream: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The chain of tasks that ended the run: from the last task to end, back through the upstream
    that ended last, each time. Task instances as the REST API gives them; oldest first."""
    by_id = {ti["task_id"]: ti for ti in tis if _t(ti.get("end_date")) is not None}
    if not by_id:
        return []
    current = max(by_id.values(), key=lambda ti: _t(ti["end_date"]) or 0.0)
    path = [current]
    while ups := [by_id[u] for u in upstream.get(current["task_id"], []) if u in by_id]:
        current = max(ups, key=lambda ti: _t(ti["end_date"]) or 0.0)
        path.append(current)
    return path[::-1]


def breakdown(
    path: list[dict[str, Any]], run_start: float, startup: dict[str, tuple[float, float]]
) -> list[dict[str, Any]]:
    """Per task of the path: gap (upstream end → start: scheduling and queueing), process start
    and DAG parse (from `startup`: task id → (start-up, of which parse)), and own work (the rest
    of start → end, deferred time included). Seconds."""
    rows, previous_end = [], run_start
    for ti in path:
        end = _t(ti["end_date"]) or previous_end
        start = _t(ti.get("start_date")) or end
        boot, parse = startup.get(ti["task_id"], (0.0, 0.0))
        boot = min(boot, end - start)
        parse = min(parse, boot)
        rows.append({"task": ti["task_id"], "state": ti.get("state"), "gap": max(0.0, start - previous_end),
                     "process": boot - parse, "parse": parse, "work": end - start - boot})  # fmt: skip
        previous_end = end
    return rows


def task_startup(log_file: Path, start: float | None) -> tuple[float, float]:
    """(start-up, of which DAG parse) seconds a task spent before its own code ran, summed over
    every start of its process (a deferred task starts again to resume). A start runs from the
    process start (the task's start_date for the first, its first log line for later ones) to
    Airflow's "Worker startup parse complete" line, which also tells the parse time."""
    startup = parse = 0.0
    segment = start
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        at = _t(entry.get("timestamp"))
        if at is None:
            continue
        if entry.get("event") == PRE_EXECUTE and segment is None:
            segment = at  # a later start of the process (resuming after a deferral)
        elif entry.get("event") == PARSED and segment is not None:
            startup += max(0.0, at - segment)
            parse += float(entry.get("dag_file_parse_ms") or 0) / 1000
            segment = None
    return startup, parse


# Airflow 3.3's task runner (airflow.sdk.execution_time.task_runner) logs these at INFO.
PARSED, PRE_EXECUTE = "Worker startup parse complete", "::group::Pre Execute"


def summary(seconds: list[float]) -> str:
    return f"min {min(seconds):6.1f} s  median {statistics.median(seconds):6.1f} s  (n={len(seconds)})"


COLUMNS = (("gap", "sched gap"), ("process", "proc start"), ("parse", "DAG parse"), ("work", "own work"))


def print_breakdown(rows: list[dict[str, Any]]) -> None:
    print(f"    {'task on the critical path':<36}" + "".join(f" {title:>10}" for _, title in COLUMNS))
    for r in rows:
        print(f"    {r['task']:<36}" + "".join(f" {r[key]:10.1f}" for key, _ in COLUMNS))
    label = f"sum ({len(rows)} tasks)"
    print(f"    {label:<36}" + "".join(f" {sum(r[key] for r in rows):10.1f}" for key, _ in COLUMNS))


# ---- the fleet ---------------------------------------------------------------------------------------


def scaled_fleet(folder: Path, regions: int, app_dir: Path) -> Path:
    """The local test fleet grown to `regions` regions in pairs, one canary, waves of up to 4."""
    base = write_test_fleet(folder)
    data = yaml.safe_load(base.source_path.read_text())
    if regions == len(data["regions"]):
        return base.source_path
    template = data["regions"][0]
    names = [f"region{i:02d}" for i in range(regions)]
    data["regions"] = []
    for i, name in enumerate(names):
        region = json.loads(json.dumps(template))
        region.update(name=name, pair=names[i ^ 1] if (i ^ 1) < regions else None, capacity_share=round(1 / regions, 3))
        region["endpoint"] = {"name": name, "weight": 100}
        region["edge_url"] = f"http://127.0.0.1:{procs.free_port()}"
        region["cluster"]["kubeconfig"]["context"] = name
        region["local"] = {"apiserver_port": procs.free_port(), "replication_lag_seconds": i % 4 * 2}
        data["regions"].append(region)
    data["registry"]["home"] = names[0]
    data["registry"]["endpoints"] = {n: f"127.0.0.1:{procs.free_port()}" for n in names}
    data["rollout"].update(canary=[names[1]], max_regions_per_wave=4, max_drain_share=0.34)
    data["min_serving_regions"] = regions // 2
    base.source_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return base.source_path


def fresh_source(app_dir: Path, sha: str) -> None:
    """A new VERSION, so the image built next has a digest no replica has seen."""
    (app_dir / "VERSION").write_text(f"{sha}\n")


# ---- one release each way ------------------------------------------------------------------------------


class Bench:
    def __init__(self, fleet_path: Path, stack: AirflowStack, app_dir: Path, helm: str):
        self.fleet = load_fleet(fleet_path)
        self.stack, self.app_dir, self.helm = stack, app_dir, helm
        self.dag_id = f"release_{self.fleet.app.name}"
        self.plain = Plain(fleet_path, helm)
        user, password = stack.credentials()
        self.env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}", "FANOUT_AIRFLOW_URL": stack.url,
                    "FANOUT_AIRFLOW_USERNAME": user, "FANOUT_AIRFLOW_PASSWORD": password}  # fmt: skip
        self.api = AirflowApi(stack.url, username=user, password=password)
        self.api.login()
        self.digest = ""

    def fanout(self, sha: str, regions: list[str] | None) -> tuple[float, list[dict[str, Any]]]:
        argv = [sys.executable, "-m", "fanout", "trigger", "--app", self.fleet.app.name, "--git-sha", sha,
                "--wait", "--poll", "1", "--timeout", "1800"]  # fmt: skip
        if regions:
            argv += ["--regions", ",".join(regions), "--image", self.digest]
        started = time.monotonic()
        done = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=2000)
        wall = time.monotonic() - started
        run_id = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if done.returncode != 0:
            if run_id:  # where did it go wrong: the critical path of the failed run
                print_breakdown(self.analyse(run_id))
            raise RuntimeError(f"fanout trigger exited {done.returncode}: {done.stderr[-1500:]}")
        if not regions:
            built = self.api.xcom(self.dag_id, run_id, "build", "return_value") or {}
            self.digest = built.get("digest", self.digest)
        return wall, self.analyse(run_id)

    def analyse(self, run_id: str) -> list[dict[str, Any]]:
        tis = self.api.task_instances(self.dag_id, run_id)
        run = self.api.get_run(self.dag_id, run_id) or {}
        with httpx.Client(base_url=self.stack.url, headers=self.api._client.headers, timeout=30) as client:
            tasks = client.get(f"/api/v2/dags/{self.dag_id}/tasks").raise_for_status().json()["tasks"]
        upstream: dict[str, list[str]] = {}
        for task in tasks:
            for down in task.get("downstream_task_ids") or []:
                upstream.setdefault(down, []).append(task["task_id"])
        logs = self.stack.home / "logs" / f"dag_id={self.dag_id}" / f"run_id={run_id}"
        startup = {}
        for ti in tis:
            files = sorted((logs / f"task_id={ti['task_id']}").glob("attempt=*.log"))
            found = [task_startup(f, _t(ti.get("start_date"))) for f in files]
            startup[ti["task_id"]] = (sum(s for s, _ in found), sum(p for _, p in found))
        return breakdown(critical_path(tis, upstream), _t(run.get("start_date")) or 0.0, startup)

    def plain_release(self, sha: str, waves: list[list[str]], image: str | None) -> tuple[float, str]:
        argv = [sys.executable, "-m", "localfleet.plain_release", "--fleet", str(self.fleet.source_path),
                "--helm", self.helm, "--waves", json.dumps(waves), "--git-sha", sha,
                "--context", str(self.app_dir)]  # fmt: skip
        if image:
            argv += ["--image", image]
        # No plugins/ on its path: the plain script could not import Fanout if it tried.
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=2000)
        if done.returncode != 0:
            raise RuntimeError(f"plain release exited {done.returncode}: {done.stderr[-2000:]}")
        return time.monotonic() - started, json.loads(done.stdout.strip().splitlines()[-1])["digest"]

    def drift(self, region: str, older: str) -> None:
        self.plain.helm_upgrade(region, older, "drift")


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    app_dir = folder / "app"
    shutil.copytree(REPO / "include/app", app_dir)
    fleet_path = scaled_fleet(folder / "fleet", args.regions, app_dir)
    fleet = load_fleet(fleet_path)
    state = cli.state_dir(fleet, folder / "cache")
    stack = AirflowStack(folder / "airflow", fleet_path, procs.free_port(), tuned=not args.airflow_defaults)
    results: dict[str, Any] = {"fanout": [], "plain": [], "repair_fanout": [], "repair_plain": [], "paths": {}}
    try:
        with timed(f"local fleet of {len(fleet.regions)} regions up"):
            cli.up(
                fleet,
                state,
                progress=lambda line: say(f"  fleet: {line}"),
                etcd_ports=(procs.free_port(), procs.free_port()),
            )
        with timed("Airflow stack up"):
            stack.up(progress=lambda line: say(f"  airflow: {line}"))
        bench = Bench(fleet_path, stack, app_dir, _helm())
        with timed("release DAG parsed"):
            wait_for_dag(bench.api, bench.dag_id)
        waves = [list(w.regions) for w in plan_waves(fleet).waves]
        say(f"waves: {waves}")
        repair_region = waves[-1][-1]
        git = bench.fleet.app.source.git
        for i in range(args.repeat):
            sha = git_repo.commit_app(git, f"bench-{uuid.uuid4().hex}")  # a merge: a new digest to build
            wall, path = bench.fanout(sha, None)
            results["fanout"].append(wall)
            results["paths"][f"release {i}"] = (wall, path)
            say(f"round {i + 1}: Fanout released {bench.digest[:19]}… in {wall:.1f} s")
            older, plain_sha = bench.digest, uuid.uuid4().hex
            fresh_source(app_dir, plain_sha)
            wall, plain_digest = bench.plain_release(plain_sha, waves, None)
            results["plain"].append(wall)
            say(f"round {i + 1}: plain script released a fresh digest in {wall:.1f} s")
        bench.digest = plain_digest  # what every region runs now; the repair restores it
        for i in range(args.repeat):
            bench.drift(repair_region, older)
            wall, path = bench.fanout(sha, [repair_region])  # the last merge's commit, its digest pinned
            results["repair_fanout"].append(wall)
            results["paths"][f"repair {i}"] = (wall, path)
            bench.drift(repair_region, older)
            results["repair_plain"].append(bench.plain_release(uuid.uuid4().hex, [[repair_region]], plain_digest)[0])
            say(f"round {i + 1}: repair of {repair_region}: Fanout {results['repair_fanout'][-1]:.1f} s,"
                f" plain {results['repair_plain'][-1]:.1f} s")  # fmt: skip
        results["ok"] = True
    except (StackError, TriggerError, TimeoutError, OSError, RuntimeError, subprocess.SubprocessError) as err:
        say(f"error: {err}")
        results["ok"] = False
    finally:
        if not results.get("ok") and (stack.home / "logs").exists():
            kept = Path(tempfile.mkdtemp(prefix="fanout-bench-release-logs-"))
            shutil.copytree(stack.home / "logs", kept, dirs_exist_ok=True)
            say(f"the Airflow task logs are kept in {kept}")
        if args.keep:
            say(f"kept everything in {folder}")
        else:
            teardown(fleet, state, stack, folder)
    return results


def _helm(wait: float = 900) -> str:
    """The Helm the local fleet built (`make binaries`); waits while a build is still under way."""
    deadline = time.monotonic() + wait
    while not (found := sorted(binaries.bin_dir().glob("helm-v4*/helm"))):
        if time.monotonic() > deadline:
            raise RuntimeError("no Helm built: run `make binaries`")
        time.sleep(5)
    return str(found[-1])


def report(results: dict[str, Any], regions: int) -> None:
    print(f"\n=== bench-release: {regions}-region local fleet (shared, loaded machine: compare within a run) ===")
    for name, fanout, plain in (("release", "fanout", "plain"), ("one-region repair", "repair_fanout", "repair_plain")):
        if results[fanout] and results[plain]:
            ratio = statistics.median(results[fanout]) / statistics.median(results[plain])
            print(f"  {name}:")
            print(f"    Fanout (fanout trigger --wait)  {summary(results[fanout])}")
            print(f"    plain script                    {summary(results[plain])}")
            print(f"    ratio of medians                {ratio:.2f}x")
    for name, (wall, rows) in results["paths"].items():
        print(f"\n  critical path of Fanout's {name} (wall {wall:.1f} s):")
        print_breakdown(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.bench_release", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds per side (2)")
    parser.add_argument("--regions", type=int, default=4, help="4: the local fleet; more: a generated fleet")
    parser.add_argument("--airflow-defaults", action="store_true", help="Airflow's default scheduler settings")
    parser.add_argument("--keep", action="store_true", help="leave the fleet and Airflow running afterwards")
    args = parser.parse_args(argv)
    # A background job ignores Ctrl-C; stopping it with SIGTERM must still tear everything down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-release-"))
    say(f"private fleet and Airflow in {folder}")
    results = run(args, folder)
    report(results, args.regions)
    return 0 if results.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
