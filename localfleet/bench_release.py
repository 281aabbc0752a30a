"""`make bench-release`: Fanout's release against a plain script doing the same work, on a real Airflow.

On a private local fleet and a private Airflow (PostgreSQL, LocalExecutor; see bench_airflow),
each round releases a fresh digest three times: once through Fanout (`python -m fanout trigger
--wait`, the real merge trigger) and twice with localfleet.plain_release, which uses none of
Fanout's code but does the same steps in the same waves — with the DNS waits Fanout does (the
honest baseline) and without them (the old one). Each plain release builds a real commit of the
fleet's git server, labelled with it, so the one-region repair that follows (both ways; the
region is first set back to an older digest with Helm) releases that image through Fanout's
provenance check. It prints wall times (min / median over --repeat rounds), the ratios, and for
each Fanout run where the time
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
from pathlib import Path
from typing import Any

import httpx
import yaml

from fanout.fleet import load_fleet
from fanout.planner import plan_waves
from fanout.provenance import build_labels
from fanout.trigger import AirflowApi, TriggerError
from localfleet import binaries, cli, procs
from localfleet.airflow_stack import AirflowStack, StackError
from localfleet.bench_airflow import say, teardown, timed, wait_for_dag
from localfleet.bench_timing import _t, breakdown, critical_path, deferral, print_breakdown, summary, task_startup
from localfleet.git import repo as git_repo
from localfleet.plain_release import Plain
from localfleet.testing import REPO, write_test_fleet

# ---- the fleet ---------------------------------------------------------------------------------------


def scaled_fleet(folder: Path, regions: int) -> Path:
    """The local test fleet grown to `regions` regions in pairs, one canary, waves of up to 4. Every
    edge on its own loopback address and one shared port, as the profile's DNS answers need."""
    base = write_test_fleet(folder)
    data = yaml.safe_load(base.source_path.read_text())
    if regions == len(data["regions"]):
        return base.source_path
    if regions > 254:
        raise ValueError("at most 254 regions: one loopback address 127.0.1.N per edge")
    template = data["regions"][0]
    edge_port = procs.free_port()
    names = [f"region{i:02d}" for i in range(regions)]
    data["regions"] = []
    for i, name in enumerate(names):
        region = json.loads(json.dumps(template))
        region.update(name=name, pair=names[i ^ 1] if (i ^ 1) < regions else None, capacity_share=round(1 / regions, 3))
        region["endpoint"] = {"name": name, "weight": 100}
        region["edge_url"] = f"http://127.0.1.{i + 1}:{edge_port}"
        region["cluster"]["kubeconfig"]["context"] = name
        region["local"] = {"apiserver_port": procs.free_port(), "replication_lag_seconds": i % 4 * 2}
        data["regions"].append(region)
    data["registry"]["home"] = names[0]
    data["registry"]["endpoints"] = {n: f"127.0.0.1:{procs.free_port()}" for n in names}
    # Users' locations name the base fleet's regions; the benchmark runs no users.
    data["traffic_manager"]["locations"] = {}
    # Up to 4 regions a wave whatever the size, so fleets of different sizes differ in regions, not rules.
    data["rollout"].update(canary=[names[1]], max_regions_per_wave=4, max_drain_share=round(4 / regions + 0.01, 3))
    data["min_serving_regions"] = regions // 2
    base.source_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return base.source_path


def fresh_source(app_dir: Path, version: str) -> None:
    """VERSION as commit_app writes it, so `app_dir` is the tree of that commit (a new digest)."""
    (app_dir / "VERSION").write_text(f"{version}\n")


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

    def fanout(self, sha: str, regions: list[str] | None = None, image: str | None = None) -> tuple[float, str]:
        """Wall time and run id of `fanout trigger --wait`: a merge, or with `regions` a repair."""
        argv = [sys.executable, "-m", "fanout", "trigger", "--app", self.fleet.app.name, "--git-sha", sha,
                "--wait", "--poll", "1", "--timeout", "1800"]  # fmt: skip
        if regions:
            argv += ["--regions", ",".join(regions)]
        if image:
            argv += ["--image", image]
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
        return wall, run_id

    def timings(self, run_id: str) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, tuple[float, float]]]:
        """The run's task instances, each task's upstream tasks, and each task's (start-up, parse)."""
        tis = self.api.task_instances(self.dag_id, run_id)
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
        return tis, upstream, startup

    def analyse(self, run_id: str) -> list[dict[str, Any]]:
        """The critical path's breakdown, each deferred task's trigger latency added."""
        tis, upstream, startup = self.timings(run_id)
        run = self.api.get_run(self.dag_id, run_id) or {}
        path = critical_path(tis, upstream)
        rows = breakdown(path, _t(run.get("start_date")) or 0.0, startup)
        latency = self.latencies(run_id, path)
        for ti, row in zip(path, rows, strict=True):
            row.update(deferred=ti["task_id"] in latency, latency=latency.get(ti["task_id"], 0.0))
        return rows

    def latencies(self, run_id: str, tis: list[dict[str, Any]]) -> dict[str, float]:
        """Task id → trigger latency (pickup + fired → ended) of each of `tis` that deferred."""
        logs = self.stack.home / "logs" / f"dag_id={self.dag_id}" / f"run_id={run_id}"
        found = {ti["task_id"]: deferral(logs / f"task_id={ti['task_id']}", _t(ti.get("end_date"))) for ti in tis}
        return {task: sum(pair) for task, pair in found.items() if pair is not None}

    def plain_release(
        self, sha: str, waves: list[list[str]], image: str | None, dns_waits: bool = True
    ) -> tuple[float, str]:
        """The plain script: builds the app folder as commit `sha`, labelled so (as CI would label
        it), unless `image` is given. Wall time and digest."""
        git = self.fleet.app.source.git
        argv = [sys.executable, "-m", "localfleet.plain_release", "--fleet", str(self.fleet.source_path),
                "--helm", self.helm, "--waves", json.dumps(waves), "--git-sha", sha,
                "--context", str(self.app_dir)]  # fmt: skip
        argv += [f"--label={k}={v}" for k, v in build_labels(sha, git.url if git else "").items()]
        if image:
            argv += ["--image", image]
        if not dns_waits:
            argv.append("--no-dns-waits")
        # No plugins/ on its path: the plain script could not import Fanout if it tried.
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=2000)
        if done.returncode != 0:
            raise RuntimeError(f"plain release exited {done.returncode}: {done.stderr[-2000:]}")
        return time.monotonic() - started, json.loads(done.stdout.strip().splitlines()[-1])["digest"]

    def plain_merge(self, waves: list[list[str]], dns_waits: bool) -> tuple[float, str, str]:
        """A merge released by the plain script: a real commit on the fleet's git server (so a
        later Fanout repair may release its image: issue 12's provenance check), built and
        released. Wall time, commit, digest."""
        git = self.fleet.app.source.git
        if git is None:
            raise RuntimeError("the fleet has no app.source.git: nothing to commit to")
        version = f"plain-{uuid.uuid4().hex}"
        sha = git_repo.commit_app(git, version)
        fresh_source(self.app_dir, version)
        wall, digest = self.plain_release(sha, waves, None, dns_waits)
        return wall, sha, digest

    def drift(self, region: str, older: str) -> None:
        self.plain.helm_upgrade(region, older, "drift")


def start_bench(fleet_path: Path, state: Path, stack: AirflowStack, app_dir: Path) -> tuple[Bench, list[list[str]]]:
    """The private fleet and Airflow up and the release DAG parsed: a Bench, and the plan's waves."""
    fleet = load_fleet(fleet_path)
    with timed(f"local fleet of {len(fleet.regions)} regions up"):
        ports = (procs.free_port(), procs.free_port())
        cli.up(fleet, state, progress=lambda line: say(f"  fleet: {line}"), etcd_ports=ports)
    with timed("Airflow stack up"):
        stack.up(progress=lambda line: say(f"  airflow: {line}"))
    bench = Bench(fleet_path, stack, app_dir, _helm())
    with timed("release DAG parsed"):
        wait_for_dag(bench.api, bench.dag_id)
    waves = [list(w.regions) for w in plan_waves(fleet).waves]
    say(f"waves: {waves}")
    return bench, waves


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    app_dir = folder / "app"
    shutil.copytree(REPO / "include/app", app_dir)
    fleet_path = scaled_fleet(folder / "fleet", args.regions)
    fleet = load_fleet(fleet_path)
    state = cli.state_dir(fleet, folder / "cache")
    stack = AirflowStack(folder / "airflow", fleet_path, procs.free_port(), tuned=not args.airflow_defaults)
    results: dict[str, Any] = {key: [] for key in SIDES} | {"paths": {}}
    try:
        bench, waves = start_bench(fleet_path, state, stack, app_dir)
        repair_region = waves[-1][-1]
        git = bench.fleet.app.source.git
        for i in range(args.repeat):
            sha = git_repo.commit_app(git, f"bench-{uuid.uuid4().hex}")  # a merge: a new digest to build
            wall, run_id = bench.fanout(sha)
            results["fanout"].append(wall)
            results["paths"][f"release {i}"] = (wall, bench.analyse(run_id))
            say(f"round {i + 1}: Fanout released {bench.digest[:19]}… in {wall:.1f} s")
            older = bench.digest
            for key, dns in (("plain", True), ("plain_nodns", False)):
                wall, current_sha, current = bench.plain_merge(waves, dns_waits=dns)
                results[key].append(wall)
                say(f"round {i + 1}: plain script ({'with' if dns else 'without'} DNS waits) released in {wall:.1f} s")
        # Every region runs `current` now, built by the plain script from the real commit `current_sha`
        # and labelled so: the repair restores it, through Fanout (a CI image) and through the script.
        for i in range(args.repeat):
            bench.drift(repair_region, older)
            wall, run_id = bench.fanout(current_sha, [repair_region], image=current)
            results["repair_fanout"].append(wall)
            results["paths"][f"repair {i}"] = (wall, bench.analyse(run_id))
            for key, dns in (("repair_plain", True), ("repair_plain_nodns", False)):
                bench.drift(repair_region, older)
                results[key].append(bench.plain_release(current_sha, [[repair_region]], current, dns)[0])
            last = {key: results[key][-1] for key in SIDES if key.startswith("repair")}
            say(f"round {i + 1}: repair of {repair_region}: Fanout {last['repair_fanout']:.1f} s, plain"
                f" {last['repair_plain']:.1f} s ({last['repair_plain_nodns']:.1f} s without DNS waits)")  # fmt: skip
        results["ok"] = True
    except (StackError, TriggerError, TimeoutError, OSError, RuntimeError, subprocess.SubprocessError) as err:
        say(f"error: {err}")
        results["ok"] = False
    finally:
        keep_logs(results, stack)
        if args.keep:
            say(f"kept everything in {folder}")
        else:
            teardown(fleet, state, stack, folder)
    return results


SIDES = ("fanout", "plain", "plain_nodns", "repair_fanout", "repair_plain", "repair_plain_nodns")


def keep_logs(results: dict[str, Any], stack: AirflowStack) -> None:
    if not results.get("ok") and (stack.home / "logs").exists():
        kept = Path(tempfile.mkdtemp(prefix="fanout-bench-release-logs-"))
        shutil.copytree(stack.home / "logs", kept, dirs_exist_ok=True)
        say(f"the Airflow task logs are kept in {kept}")


def _helm(wait: float = 900) -> str:
    """The Helm the local fleet built (`make binaries`); waits while a build is still under way."""
    deadline = time.monotonic() + wait
    while not (found := sorted(binaries.bin_dir().glob("helm-v4*/helm"))):
        if time.monotonic() > deadline:
            raise RuntimeError("no Helm built: run `make binaries`")
        time.sleep(5)
    return str(found[-1])


PLAIN_TITLES = (("plain", "plain script, DNS waits (honest)"), ("plain_nodns", "plain script, no DNS waits"))


def report(results: dict[str, Any], regions: int) -> None:
    print(f"\n=== bench-release: {regions}-region local fleet (shared, loaded machine: compare within a run) ===")
    for name, prefix in (("release", ""), ("one-region repair", "repair_")):
        fanout = results[f"{prefix}fanout"] if prefix else results["fanout"]
        if not fanout:
            continue
        print(f"  {name}:")
        print(f"    Fanout (fanout trigger --wait)           {summary(fanout)}")
        for key, title in PLAIN_TITLES:
            plain = results[f"{prefix}{key}"]
            if plain:
                ratio = statistics.median(fanout) / statistics.median(plain)
                print(f"    {title:<40} {summary(plain)}  Fanout/this {ratio:.2f}x")
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
