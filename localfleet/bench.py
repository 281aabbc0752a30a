"""`python -m localfleet.bench`: how long the local fleet takes and what it costs, printed.

Brings up a private copy of the local fleet (free ports, a temp folder), so it never
disturbs a fleet you are running, and measures: the binaries check, fleet up, a second
(idempotent) up, status, idle memory of every fleet process, and down. With
`--release` it also times one release through the release DAG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fanout import names
from localfleet import cli, kube, procs
from localfleet.binaries import ensure_binaries
from localfleet.git import repo as git_repo
from localfleet.testing import dags_test, write_test_fleet

T = TypeVar("T")


def _timed(what: str, fn: Callable[[], T], results: dict[str, float]) -> T:
    started = time.perf_counter()
    value = fn()
    results[what] = time.perf_counter() - started
    print(f"  {what:<28} {results[what]:7.2f} s", flush=True)
    return value


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _fleet_pids(state: Path) -> list[int]:
    # The control planes' pidfiles are under pids/ as well; a set counts each process once.
    pids = set(kube.all_pids(state).values())
    for pidfile in (state / "pids").glob("*.pid"):
        if (pid := procs.pid(pidfile.stem, state)) is not None:
            pids.add(pid)
    return sorted(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--release", action="store_true", help="also time one release (airflow dags test)")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    quiet = lambda _line: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        folder = Path(tmp)
        fleet = write_test_fleet(folder)
        state = folder / "state"
        ports = (procs.free_port(), procs.free_port())
        print(f"local fleet benchmark: {len(fleet.regions)} regions, state in {state}")
        _timed("binaries check (cached)", lambda: ensure_binaries(quiet), results)
        try:
            _timed("fleet up (cold state)", lambda: cli.up(fleet, state, quiet, ports), results)
            _timed("fleet up again (no-op)", lambda: cli.up(fleet, state, quiet, ports), results)
            rows = _timed("fleet status", lambda: cli.status_rows(fleet, state), results)
            healthy = sum(r["apiserver"] == "ready" and r["registry"] == "up" for r in rows)
            time.sleep(5)  # let start-up spikes settle before reading memory
            pids = _fleet_pids(state)
            print(f"  {'idle memory (RSS)':<28} {_rss_mb(pids):7.0f} MB in {len(pids)} processes")
            print(f"  {'healthy regions':<28} {healthy:7d} of {len(rows)}")
            if args.release:
                home = folder / "airflow"
                sha = git_repo.branch_tip(fleet.app.source.git.url, "main")  # include/app, seeded by `up`
                dag_id, conf = names.release_dag(fleet.app.name), {"git_sha": sha}
                assert fleet.source_path is not None
                done = _timed("release, 4 regions", lambda: dags_test(home, fleet.source_path, dag_id, conf), results)
                print(f"  {'release exit code':<28} {done.returncode:7d}")
        finally:
            _timed("fleet down", lambda: cli.down(fleet, state, quiet), results)
        left = _fleet_pids(state)
        print(f"  {'processes left after down':<28} {len(left):7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
