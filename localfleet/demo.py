"""`make demo`: release include/app across the local fleet with the real release DAG.

Brings the local fleet up if needed, commits include/app into the fleet's git server (a new
commit only when the folder changed), starts the simulated users (they reach the app through the
profile's DNS name), releases that commit's full sha through `airflow dags test release_<app>`
(no Airflow server needed), shows each step as it happens, then prints what every region serves,
the commit and digest released (built, or reused when an earlier run built that commit) and what
the users saw. Exits non-zero if the release failed or broke the promise to users (DESIGN.md, 11).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fanout import names
from fanout.adapters.helm import Helm, helm_binary
from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential
from fanout.fleet import Fleet, FleetError, load_fleet
from localfleet import cli
from localfleet.cli import print_table
from localfleet.git import repo as git_repo
from localfleet.testing import airflow_env, migrate
from localfleet.traffic import users
from localfleet.traffic.promise import read_changes, summarize

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
# Fanout's operators, and its triggers (which run in line under `airflow dags test`).
OUR_LOG = re.compile(r"\[(info|warning|error)\s*\] (.*?) \[(?:airflow\.task\.operators\.)?fanout\.")
FINISHED = re.compile(r"DagRun Finished: .*?state=(\w+)")
BUILT = re.compile(r"built and pushed \S+ as (sha256:[0-9a-f]{64})")
REUSED = re.compile(r"reusing (sha256:[0-9a-f]{64})")
# A metric gate's verdict, as fanout.metric_gates.Verdict.line() writes it.
VERDICT = re.compile(r"^\S+ \S+: (pass|fail|inconclusive|skipped): ")


def publish_app(fleet: Fleet) -> str:
    """Commit include/app into the local fleet's git server (a new commit only when it changed);
    returns the full sha of the commit that holds it."""
    source = git_repo.local_source(fleet)
    if source is None:
        raise SystemExit("demo: app.source.git.url is not the local fleet's git server; pass --git-sha")
    sha, created = git_repo.publish(source, git_repo.SAMPLE_APP, "demo: include/app as it is on disk")
    print(f"include/app is commit {sha} of {source.url}" + ("" if created else " (unchanged: no new commit)"))
    return sha


def run_release(fleet: Fleet, conf: dict, home: Path, started: float) -> str:
    """Run the release DAG, echoing progress; returns the run's final state."""
    env = airflow_env(home, fleet.source_path)
    if not (home / "airflow.db").exists():
        print("setting up Airflow's database (first run only)…", flush=True)
    migrate(env)
    argv = [
        sys.executable,
        "-m",
        "airflow",
        "dags",
        "test",
        names.release_dag(fleet.app.name),
        "--conf",
        json.dumps(conf),
    ]
    log = home / "logs" / "demo-last-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    state = "unknown"
    with (
        log.open("w") as out,
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        for line in proc.stdout:
            out.write(line)
            stamp = f"[{time.monotonic() - started:6.1f}s]"
            if m := STEP.search(line):
                print(f"{stamp} {m.group(1)}", flush=True)
            elif m := OUR_LOG.search(line):
                print(f"{' ' * len(stamp)}   {m.group(2)}", flush=True)
            elif m := FINISHED.search(line):
                state = m.group(1)
    print(f"full log: {log}")
    return state


def build_outcome(home: Path) -> str:
    """What the build task did, from the run's log: the digest it built, or the one it reused."""
    text = (home / "logs" / "demo-last-run.log").read_text(errors="replace")
    if m := BUILT.search(text):
        return f"built {m.group(1)}"
    if m := REUSED.search(text):
        return f"reused {m.group(1)} (built earlier from this commit: nothing was built)"
    return "no digest (see the log)"


def metric_verdicts(home: Path) -> list[str]:
    """Every metric gate verdict of the run, in the order they were reached, from its log."""
    text = (home / "logs" / "demo-last-run.log").read_text(errors="replace")
    lines = (m.group(2) for line in text.splitlines() if (m := OUR_LOG.search(line)))
    return list(dict.fromkeys(line for line in lines if VERDICT.match(line)))


def region_table(fleet: Fleet) -> list[dict[str, str]]:
    tm = fleet.traffic_manager
    with AzureTrafficManager(
        StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url, retry_total=1
    ) as client:
        endpoints = client.endpoints()
    rows = []
    for region in fleet.regions:
        try:
            with urllib.request.urlopen(region.edge_url + fleet.gates.http.version_path, timeout=5) as response:
                version = json.loads(response.read())
        except OSError:
            version = {}
        access = region.cluster.kubeconfig
        current = Helm(helm_binary(), str(fleet.resolve(access.path)), access.context).current(
            fleet.app.name, fleet.app.namespace
        )
        ep = endpoints.get(region.endpoint.name)
        rows.append(
            {
                "region": region.name,
                "serving digest": (version.get("digest") or "-")[:19],
                "ready": f"{version.get('ready_replicas', 0)}/{version.get('replicas', 0)}",
                "helm": f"rev {current.revision} {current.status}" if current else "-",
                "endpoint": ("Enabled" if ep.enabled else "Disabled") if ep else "?",
                "weight": str(ep.weight) if ep else "?",
                "monitor": (ep.monitor_status or "?") if ep else "?",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", type=Path, default=cli.DEFAULT_FLEET)
    parser.add_argument("--git-sha", help="release this commit of the git server (default: commit include/app)")
    parser.add_argument("--regions", help="comma-separated subset (default: all)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    # Airflow's logging config shows every Azure SDK request at info; the table needs none of them.
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        fleet = load_fleet(args.fleet)
    except FleetError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 2
    print(f"bringing the local fleet up ({', '.join(fleet.region_names)})…", flush=True)
    cli.up(fleet, progress=lambda line: print(f"  {line}", flush=True))
    conf: dict = {"git_sha": args.git_sha or publish_app(fleet), "dry_run": args.dry_run}
    if args.regions:
        conf["regions"] = [r.strip() for r in args.regions.split(",")]
    print(f"releasing {fleet.app.name} at {conf['git_sha'][:12]} through release_{fleet.app.name}", flush=True)
    home = Path(os.environ.get("AIRFLOW_HOME", REPO / ".airflow"))
    watching = bool(fleet.traffic_manager.dns_port) and not args.dry_run
    if watching and release_digest(fleet, every=True) is None:
        print("the fleet serves nothing yet, so users would only get errors: a first release without them", flush=True)
        if run_release(fleet, conf, home, started) != "success":
            return 1
    if watching:
        users.stop(cli.state_dir(fleet))
        users.start(fleet, cli.state_dir(fleet), users=8, rate=4, duration=3600)
        print("8 simulated users are sending 4 requests a second each through DNS", flush=True)
    since = time.time()
    state = run_release(fleet, conf, home, started)
    until = time.time()
    print()
    print_table(region_table(fleet))
    if fleet.gates.metrics is not None:
        print("\nmetric gates: what each region's users felt on the release (region check: verdict: values)")
        print("\n".join(f"  {line}" for line in metric_verdicts(home)) or "  no verdict reached (see the log)")
    print(f"\nreleased commit {conf['git_sha']}: {build_outcome(home)}")
    print(f"release {state} in {time.monotonic() - started:.0f} s")
    kept = True
    if watching:
        kept = report_users(fleet, since, until)
    return 0 if state == "success" and kept else 1


def report_users(fleet: Fleet, since: float, until: float) -> bool:
    """Let the users run one TTL past the release, stop them, and print what they saw."""
    ttl = fleet.traffic_manager.dns_ttl_seconds
    time.sleep(ttl + 2)
    users.stop(cli.state_dir(fleet))
    digest = release_digest(fleet)
    endpoint_region = {r.endpoint.name: r.name for r in fleet.regions}
    summary = summarize(
        users.read(cli.state_dir(fleet)), read_changes(cli.state_dir(fleet)), endpoint_region,
        ttl=ttl, digest=digest or "?", since=since, until=until,
    )  # fmt: skip
    print("\nwhat the users saw (requests per region: before the first drain / during / after the last restore + TTL)")
    print("\n".join(summary.lines()))
    return summary.kept


def release_digest(fleet: Fleet, every: bool = False) -> str | None:
    """The digest the serving regions run (the promise compares users to it); with `every`, None
    unless every serving region serves one."""
    found = None
    for region in fleet.regions:
        if region.standby is not None:
            continue
        try:
            with urllib.request.urlopen(region.edge_url + fleet.gates.http.version_path, timeout=5) as response:
                digest = json.loads(response.read()).get("digest")
        except (OSError, ValueError):
            digest = None
        if every and digest is None:
            return None
        found = found or digest
    return found


if __name__ == "__main__":
    sys.exit(main())
