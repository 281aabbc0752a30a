"""`make bench-growth`: how a release's cost grows with the fleet (issue 19, "How it grows").

For each size (default 4, 8, 12 regions) a private local fleet (bench_release.scaled_fleet) and
a private real Airflow (PostgreSQL, LocalExecutor scheduler, triggerer) come up, one merge is
released through `fanout trigger --wait`, and everything goes down again. Printed per size:

- release: the run's wall time;
- unavoidable: what any orchestrator pays, from the task timings (bench_timing.unavoidable):
  build + slowest replica wait + per wave (the slowest region's drain, DNS waits, Helm, gates,
  soak, restore, wait for Online) + bake — each task's own work, without its process start
  and DAG parse; a deferred wait's own work still holds its resume latency, so this is an upper
  bound and the overhead a lower bound;
- overhead = release − unavoidable, and per task on the critical path;
- CPU seconds during the release of the scheduler process, of LocalExecutor's workers with
  every task process (and the helm/buildah/git they run), and of the other Airflow parts;
  the peak memory of all Airflow processes, as RSS sum and PSS sum (sampled every 0.5 s;
  PostgreSQL apart; see localfleet.proc_usage for why both);
- with --plain, the plain script's release (with DNS waits) on the same fleet, for reference.

Figures, not assertions: one size at a time, on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fanout.fleet import load_fleet
from fanout.trigger import TriggerError
from localfleet import cli, procs
from localfleet.airflow_stack import COMPONENTS, AirflowStack, StackError
from localfleet.bench_airflow import say, teardown, timed
from localfleet.bench_release import Bench, keep_logs, scaled_fleet, start_bench
from localfleet.bench_timing import unavoidable
from localfleet.git import repo as git_repo
from localfleet.proc_usage import Sampler
from localfleet.testing import REPO

MIB = 1024 * 1024


def measure(bench: Bench, stack: AirflowStack, waves: list[list[str]], plain: bool) -> dict[str, Any]:
    git = bench.fleet.app.source.git
    sha = git_repo.commit_app(git, f"growth-{uuid.uuid4().hex}")
    roots = {name: procs.pid(name, stack.folder) for name in COMPONENTS}
    with Sampler(roots) as usage:
        wall, run_id = bench.fanout(sha)
    tis, _, startup = bench.timings(run_id)
    path = bench.analyse(run_id)
    parts = unavoidable(tis, startup, waves, bench.latencies(run_id, tis))
    row = {
        "regions": len(bench.fleet.regions),
        "waves": len(waves),
        "tasks": sum(1 for ti in tis if ti.get("state") == "success"),
        "path_tasks": len(path),
        "release": wall,
        "unavoidable": parts,
        "path": {key: sum(r[key] for r in path) for key in ("gap", "process", "parse", "work", "latency")},
        "cpu": usage.cpu,
        "peak_rss": usage.peak_rss,
        "peak_pss": usage.peak_pss,
    }
    if plain:
        row["plain"] = bench.plain_merge(waves, dns_waits=True)[0]
    return row


def one_size(regions: int, args: argparse.Namespace) -> dict[str, Any] | None:
    folder = Path(tempfile.mkdtemp(prefix=f"fanout-bench-growth-{regions}-"))
    say(f"--- {regions} regions: private fleet and Airflow in {folder}")
    app_dir = folder / "app"
    shutil.copytree(REPO / "include/app", app_dir)
    fleet_path = scaled_fleet(folder / "fleet", regions)
    fleet = load_fleet(fleet_path)
    state = cli.state_dir(fleet, folder / "cache")
    stack = AirflowStack(folder / "airflow", fleet_path, procs.free_port())
    status: dict[str, Any] = {}
    try:
        bench, waves = start_bench(fleet_path, state, stack, app_dir)
        with timed(f"release to {regions} regions"):
            row = measure(bench, stack, waves, args.plain)
        status["ok"] = True
        return row
    except (StackError, TriggerError, TimeoutError, OSError, RuntimeError, subprocess.SubprocessError) as err:
        say(f"error: {err}")
        return None
    finally:
        keep_logs(status, stack)
        if args.keep:
            say(f"kept everything in {folder}")
        else:
            teardown(fleet, state, stack, folder)


COLUMNS = (  # key, title, decimals
    ("regions", "regions", 0), ("waves", "waves", 0), ("tasks", "tasks", 0), ("path_tasks", "crit", 0),
    ("release", "release s", 1), ("unavoidable_s", "unavoid s", 1), ("overhead", "overhead s", 1),
    ("per_task", "ovh/crit task", 2), ("sched_cpu", "sched CPU s", 1), ("worker_cpu", "worker CPU s", 1),
    ("other_cpu", "other CPU s", 1), ("rss_mib", "peak RSS MiB", 0), ("pss_mib", "peak PSS MiB", 0),
)  # fmt: skip


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    cpu, unavoid = row["cpu"], row["unavoidable"]["total"]
    return {
        **row,
        "unavoidable_s": unavoid,
        "overhead": row["release"] - unavoid,
        "per_task": (row["release"] - unavoid) / max(row["path_tasks"], 1),
        "sched_cpu": cpu.get("scheduler", 0.0),
        "worker_cpu": cpu.get("workers", 0.0),
        "other_cpu": sum(v for k, v in cpu.items() if k not in ("scheduler", "workers")),
        "rss_mib": row["peak_rss"] / MIB,
        "pss_mib": row["peak_pss"] / MIB,
    }


def report(rows: list[dict[str, Any]]) -> None:
    print("\n=== bench-growth: one release per fleet size, real scheduler (LocalExecutor, PostgreSQL) ===")
    flat = [flatten(r) for r in rows]
    print("  " + " ".join(title for _, title, _ in COLUMNS))
    for f in flat:
        print("  " + " ".join(f"{f[key]:>{len(title)}.{places}f}" for key, title, places in COLUMNS))
    print("\n  unavoidable, by part (s): build, slowest replica, per wave slowest region's steps + bake")
    for r in rows:
        u = r["unavoidable"]
        waves = "  ".join(f"w{i}:{w['slowest']} {w['region']:.1f}+{w['bake']:.1f}" for i, w in enumerate(u["waves"], 1))
        print(f"    {r['regions']:>3} regions: build {u['build']:.1f}, replica {u['replica']:.1f}, {waves}")
    print("\n  critical path sums (s): scheduling gap, process start, DAG parse, own work (of which trigger"
          " latency); plain script with DNS waits")  # fmt: skip
    for r in rows:
        p = r["path"]
        plain = f"{r['plain']:.1f}" if "plain" in r else "-"
        print(f"    {r['regions']:>3} regions: gap {p['gap']:.1f}, process {p['process']:.1f},"
              f" parse {p['parse']:.1f}, work {p['work']:.1f} ({p['latency']:.1f}); plain script {plain}")  # fmt: skip
    if len(flat) >= 2:
        a, b = flat[0], flat[-1]
        added = b["regions"] - a["regions"]
        print(f"\n  per added region ({a['regions']} → {b['regions']}):"
              f" release {(b['release'] - a['release']) / added:+.2f} s,"
              f" overhead {(b['overhead'] - a['overhead']) / added:+.2f} s,"
              f" worker CPU {(b['worker_cpu'] - a['worker_cpu']) / added:+.2f} s,"
              f" scheduler CPU {(b['sched_cpu'] - a['sched_cpu']) / added:+.2f} s,"
              f" peak RSS {(b['rss_mib'] - a['rss_mib']) / added:+.0f} MiB,"
              f" peak PSS {(b['pss_mib'] - a['pss_mib']) / added:+.0f} MiB")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.bench_growth", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4,8,12", help="region counts, comma-separated (4,8,12)")
    parser.add_argument("--plain", action="store_true", help="also release with the plain script, for reference")
    parser.add_argument("--keep", action="store_true", help="leave each fleet and Airflow running afterwards")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = one_size(size, args)
        if row is None:
            say(f"{size} regions: no figures (see the error above)")
            continue
        rows.append(row)
        report(rows)  # so far: a later size that fails or times out leaves the earlier ones printed
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
