"""Fanout the way teams run it: a real Airflow on PostgreSQL, releases triggered from "CI"
(`python -m fanout trigger`) through the REST API, a burst of merges, one region re-run by
clearing its tasks, and the consistency check on its schedule. All against the local fleet.

Scaled out: under CeleryExecutor (Redis, two workers with their own temporary folders), where a
wave's regions run on different workers and each worker's kubeconfigs and values files stay in
its own folder and are gone when its tasks end. The same tests under LocalExecutor are a matrix
variant (test_freeze_on_airflow keeps LocalExecutor in `make test`).

The tests run in file order and build on each other's fleet state, as days of a real fleet do."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from airflow_checks import CONSISTENCY_SCHEDULE, Rest, WorkerTmpWatch, fanout_trigger, region_tasks, task_log
from fanout_page import FanoutPage, StepWatch
from release_checks import TrafficWatch, new_commit, snapshot, timed, traffic

from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.git_source import GitRepository
from fanout.cache import cache_dir
from fanout.planner import plan_waves
from fanout.provenance import build_labels
from fanout.trigger import TriggerError
from localfleet.airflow_stack import WORKERS
from localfleet.slots import SlotSampler, is_wait, summarize
from localfleet.testing import wait_until

pytestmark = [pytest.mark.localfleet, pytest.mark.e2e]

DAG = "release_hello"
CHECK_DAG = "fleet_consistency_hello"
SLOW, HELD = "northeurope", 15  # this region's replica is held back this long once its wait has deferred
REGION_TASKS = ("drain", "dns_settle", "helm_deploy", "gates", "restore", "rollback")


@pytest.fixture(scope="module", params=["celery", pytest.param("local", marks=pytest.mark.matrix)])
def airflow_executor(request) -> str:
    """This module's stack: CeleryExecutor in `make test`, LocalExecutor in `make test-matrix`."""
    return request.param


def test_a_merge_trigger_releases_every_region(local_fleet, airflow_stack, rest, faults, fanout_page):
    started = time.monotonic()
    fleet = local_fleet.fleet
    faults(replica_stuck=[SLOW])
    sha = new_commit(fleet, "e2e-merge")
    run_id = f"merge__{sha[:12]}__e2e"
    wait = f"wait_replication_{SLOW}"
    fanout_page.open()  # someone watches the Fanout page in Airflow's UI while the release runs
    # The replica comes HELD seconds after its wait deferred, not after a fixed lag: on a loaded machine
    # a task's start can outlast any lag, and the wait would find the replica without deferring.
    unstick = threading.Thread(target=release_when_deferred, args=(Rest(airflow_stack), run_id, wait, faults))
    with (
        TrafficWatch(fleet) as watch,
        SlotSampler(rest, DAG, run_id) as sampler,
        StepWatch(fanout_page) as steps,
        WorkerTmpWatch(airflow_stack) as tmp,
    ):
        unstick.start()
        done = fanout_trigger(
            airflow_stack, "--app", "hello", "--git-sha", sha, "--ref", "main", "--run-id", run_id, "--wait"
        )
    unstick.join(timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout == f"{run_id}\n"
    # Progress shows on the way (one line per task state change), ending with the run's state.
    assert "deploy_eastus.helm_deploy" in done.stderr and f"{run_id}  success" in done.stderr

    run = rest.get_run(DAG, run_id)
    assert run["conf"] == {"git_sha": sha, "source_ref": "main"}
    digest = rest.xcom(DAG, run_id, "build", "return_value")["digest"]
    state = snapshot(fleet)
    assert {s.digest for s in state.values()} == {digest}, state
    assert all(s.enabled for s in state.values()), state
    assert watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    page_started = time.monotonic()
    the_page_followed_the_release(fanout_page, steps, run_id)
    the_page_shows_the_fleet_as_it_is(fanout_page, fleet, run_id)
    the_page_wants_a_signed_in_user(airflow_stack.url, rest)
    the_page_shows_a_fault_within_one_refresh(fanout_page, fleet, faults, region="eastus")
    timed("e2e: the Fanout page in a browser", page_started)
    # The lagging replica's wait went to the triggerer (holding no worker slot) and came back.
    tis = rest.tasks(DAG, run_id)
    assert tis[wait]["state"] == "success"
    assert "Pausing task as DEFERRED" in task_log(rest, DAG, run_id, wait, tis[wait]["try_number"])
    if airflow_stack.executor == "celery":
        the_waves_ran_on_both_workers(fleet, tis)
        secrets_stayed_on_their_worker(tmp, tis)
    figures = summarize(sampler.samples, is_wait, airflow_stack.settings["parallelism"])
    print(
        f"\n[slots] { ({k: v for k, v in figures.items() if k != 'waits'}) }\n[slots] {wait}: {figures['waits'][wait]}"
    )
    assert figures["waits"][wait]["deferred_s"] >= HELD - 2, figures["waits"][wait]
    timed("e2e: merge trigger → release through the scheduler", started)


def the_waves_ran_on_both_workers(fleet, tis: dict[str, dict]) -> None:
    """Every task ran on one of the two workers (its TI's hostname), and the regions of each wave
    of more than one region were spread over both."""
    hosts = {t: ti["hostname"] for t, ti in tis.items() if ti["state"] == "success"}
    assert set(hosts.values()) == set(WORKERS), hosts
    waves = [list(w.regions) for w in plan_waves(fleet).waves if len(w.regions) > 1]
    assert waves, "the fleet's plan has no wave of several regions"
    for regions in waves:
        ran = {t: hosts[t] for t in region_tasks(tis, regions) if t in hosts}
        assert set(ran.values()) == set(WORKERS), (regions, ran)


def secrets_stayed_on_their_worker(tmp: WorkerTmpWatch, tis: dict[str, dict]) -> None:
    """Each worker that deployed a region held that region's kubeconfig in its own TMPDIR while its
    task ran, and neither worker's TMPDIR keeps a kubeconfig or values file after the release."""
    deployed_on = {ti["hostname"] for t, ti in tis.items() if t.endswith(".helm_deploy") and ti["state"] == "success"}
    for worker in deployed_on:
        assert any(f.startswith("fanout-kube-") for f in tmp.seen[worker]), (worker, tmp.seen)
    assert tmp.left() == {}, f"left behind in the workers' TMPDIRs: {tmp.left()}"


def the_page_followed_the_release(page: FanoutPage, steps: StepWatch, run_id: str) -> None:
    """Without a reload, the release section showed the run, wave after wave, and each region's step change."""
    assert steps.shot is not None, f"no region was ever seen deploying or gating: {steps.seen}"
    assert any(run_id in line for line, _ in steps.seen), steps.seen
    waves = {word for line, _ in steps.seen for word in line.split(" — ") if word.startswith("wave ")}
    assert len(waves) >= 2, f"the wave never changed on the page: {waves}"
    for region in ("westus", SLOW):
        seen = steps.steps_of(region)
        assert len(seen) >= 3 and seen[-1] == "restored", (region, seen)
    assert "waiting for its replica" in steps.steps_of(SLOW)  # its lagging replica, deferred for HELD seconds


def the_page_shows_the_fleet_as_it_is(page: FanoutPage, fleet, run_id: str) -> None:
    """After the release, each row says what the fleet says when asked directly (the edge for the
    digest served, Helm for the revision, Traffic Manager for the endpoint)."""
    truth = snapshot(fleet)

    def matches(shown: dict) -> bool:
        rows = shown["matrix"]
        return shown["run_state"] == "success" and all(
            rows[r]["running"]["value"] == s.digest
            and rows[r]["helm"]["value"] == str(s.revision)
            and rows[r]["endpoint"]["text"] == ("Enabled" if s.enabled else "Disabled")
            and rows[r]["weight"]["text"] == str(s.weight)
            and run_id in rows[r]["last_run"]["text"]
            for r, s in truth.items()
        )

    shown = page.wait(matches, 30, f"the page does not show the fleet as it is: {truth}")
    assert {r: cells["step"]["text"] for r, cells in shown["steps"].items()} == dict.fromkeys(truth, "restored")
    page.shot("after-release")
    # The same page inside Airflow's UI, as its menu (Browse → Fanout) opens it.
    assert page.open_in_airflow().endswith("/fanout/")
    page.shot("in-airflow")
    page.open()


def the_page_wants_a_signed_in_user(url: str, rest: Rest) -> None:
    for path in ("/fanout/hello/data", "/fanout/hello", "/fanout/"):
        anonymous = httpx.get(f"{url}{path}", timeout=30)
        assert anonymous.status_code == 401, (path, anonymous.text)
    signed_in = httpx.get(f"{url}/fanout/hello/data", headers=rest._client.headers, timeout=30)
    assert signed_in.status_code == 200 and signed_in.json()["app"] == "hello", signed_in.text


def the_page_shows_a_fault_within_one_refresh(page: FanoutPage, fleet, faults, region: str) -> None:
    """Once Traffic Manager sees an unhealthy edge, the page's next refresh shows it (two: the refresh
    under way may have read before)."""

    def monitor() -> str:
        return traffic(fleet)[fleet.region(region).endpoint.name].monitor_status

    faults(edge_unhealthy=[region])
    deadline = time.monotonic() + 30
    while monitor() != "Degraded":
        assert time.monotonic() < deadline, "Traffic Manager never saw the unhealthy edge"
        time.sleep(0.5)
    shown = page.refreshes(2)
    assert shown["matrix"][region]["monitor"]["text"] == "Degraded", shown["matrix"][region]
    page.shot("edge-unhealthy")
    faults(edge_unhealthy=None)
    while monitor() != "Online":  # the next test starts from a healthy fleet
        assert time.monotonic() < deadline + 30, "the edge did not recover"
        time.sleep(0.5)


def build_variants(fleet, count: int) -> list[tuple[str, str]]:
    """What CI does for `count` merges: commit, build that commit with its revision label, push.
    Returns (full sha, digest) per merge."""
    registry, source = fleet.registry, fleet.app.source.git
    builder = BuildahBuilder(cache_dir() / "buildah", insecure=registry.insecure)
    built = []
    for n in range(count):
        sha = new_commit(fleet, f"burst-{n}")
        commit = GitRepository(source.url).resolve(sha, "main")
        destination = f"{registry.pull_host(registry.home)}/{registry.repository}:ci-{sha}"
        with GitRepository(source.url).export(commit, source.context_path) as context:
            built.append((sha, builder.build_and_push(context, destination, build_labels(sha, source.url))))
    return built


def release_when_deferred(rest: Rest, run_id: str, wait: str, faults: Callable[..., Any]) -> None:
    """Let the stuck replica sync HELD seconds after its wait deferred (or at once if it never does,
    so the release ends and the test says why)."""

    def deferred() -> bool:
        try:
            return rest.tasks(DAG, run_id).get(wait, {}).get("state") == "deferred"
        except TriggerError:  # the run is not there yet
            return False

    try:
        wait_until(deferred, 600, interval=0.5, what=f"{wait} deferred")
        time.sleep(HELD)
    finally:
        faults(replica_stuck=[])


def test_a_burst_of_merges_ends_with_every_region_on_the_newest(local_fleet, airflow_stack, rest):
    started = time.monotonic()
    fleet = local_fleet.fleet
    (sha1, first), (sha2, middle), (sha3, newest) = build_variants(fleet, 3)
    shas = [sha1, sha2, sha3]

    def trigger(sha: str, image: str) -> str:
        done = fanout_trigger(airflow_stack, "--app", "hello", "--git-sha", sha, "--image", image)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # A release is under way when two more merges land behind it.
    m1 = trigger(shas[0], first)
    deadline = time.monotonic() + 120
    while rest.tasks(DAG, m1)["check_superseded"]["state"] != "success":
        assert time.monotonic() < deadline, "the first release never started"
        time.sleep(1)
    m2, m3 = trigger(shas[1], middle), trigger(shas[2], newest)

    # CI's job for the middle merge follows its run, sees it superseded, and follows the newest.
    done = fanout_trigger(airflow_stack, "--app", "hello", "--follow", m2, "--wait", "--timeout", "900")
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"superseded by {m3}" in done.stderr, done.stderr[-4000:]
    assert rest.wait_run(DAG, m1, timeout=60) == "success"

    runs = {run_id: rest.get_run(DAG, run_id) for run_id in (m1, m2, m3)}
    assert {r["state"] for r in runs.values()} == {"success"}
    # The middle one did nothing: every task but the check skipped, with the newest run named.
    middle_tis = rest.tasks(DAG, m2)
    assert middle_tis["check_superseded"]["state"] == "success"
    assert {t: ti["state"] for t, ti in middle_tis.items() if t != "check_superseded"} == dict.fromkeys(
        set(middle_tis) - {"check_superseded"}, "skipped"
    )
    superseded = rest.xcom(DAG, m2, "check_superseded", "superseded")
    assert superseded["by"] == m3 and superseded["git_sha"] == shas[2]
    # Releases never interleaved: each began after the one before it ended.
    spans = sorted((r["start_date"], r["end_date"]) for r in runs.values())
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert end <= next_start, spans
    # Both releases that ran recorded themselves; the newest is what every region serves.
    assert rest.tasks(DAG, m1)["record"]["state"] == "success"
    assert rest.tasks(DAG, m3)["record"]["state"] == "success"
    state = snapshot(fleet)
    assert {s.digest for s in state.values()} == {newest}, state
    assert all(s.enabled for s in state.values()), state
    timed("e2e: burst of three merges", started)


def test_clearing_one_region_redeploys_only_it_and_converges(local_fleet, airflow_stack, rest):
    """Promise 6 on a running Airflow: the documented clearTaskInstances call re-runs one region."""
    started = time.monotonic()
    fleet, region = local_fleet.fleet, "eastus"
    runs = rest.call("GET", f"/api/v2/dags/{DAG}/dagRuns?order_by=-start_date&limit=20&state=success")["dag_runs"]
    run_id = next(r["dag_run_id"] for r in runs if rest.tasks(DAG, r["dag_run_id"])["record"]["state"] == "success")
    first = rest.tasks(DAG, run_id)
    released = snapshot(fleet)
    group = [f"deploy_{region}.{step}" for step in REGION_TASKS]
    with TrafficWatch(fleet) as watch:
        rest.call(
            "POST",
            f"/api/v2/dags/{DAG}/clearTaskInstances",
            # Both default to true, and then nothing would be cleared.
            {"dry_run": False, "only_failed": False, "dag_run_id": run_id, "task_ids": group},
        )
        assert rest.wait_run(DAG, run_id, timeout=300) == "success"
    second = rest.tasks(DAG, run_id)
    # Only the region's own tasks ran again, each one more try; everything else kept its try.
    for task_id, ti in second.items():
        ran_again = task_id in group and task_id != f"deploy_{region}.rollback"
        assert ti["try_number"] == first[task_id]["try_number"] + (1 if ran_again else 0), (task_id, ti)
    for step in REGION_TASKS[:-1]:
        assert second[f"deploy_{region}.{step}"]["state"] == "success", step
    assert second[f"deploy_{region}.rollback"]["state"] == "skipped"
    assert region in watch.ever_drained(), watch.report()
    assert watch.fewest_enabled >= fleet.min_serving_regions, watch.report()
    # Same end state: the digest was live, so Helm was not upgraded again.
    attempt = second[f"deploy_{region}.helm_deploy"]["try_number"]
    assert "no upgrade" in task_log(rest, DAG, run_id, f"deploy_{region}.helm_deploy", attempt)
    assert snapshot(fleet) == released
    assert WorkerTmpWatch(airflow_stack).left() == {}  # Celery mode: the re-run left no kubeconfig behind
    timed("e2e: clear one region and re-run it", started)


def finished_scheduled_checks(rest: Rest, started_after: str) -> list[dict]:
    found = rest.call("GET", f"/api/v2/dags/{CHECK_DAG}/dagRuns?run_type=scheduled&limit=100")["dag_runs"]
    return [r for r in found if r["state"] in ("success", "failed") and r["start_date"] > started_after]


def test_the_consistency_check_runs_on_its_schedule(local_fleet, rest):
    """Nobody triggers it: the scheduler starts a run at each tick of the fleet's schedule. The
    first one after the last release finds every region in sync."""
    started = time.monotonic()
    assert CONSISTENCY_SCHEDULE == "*/2 * * * *"
    releases = rest.call("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]
    assert releases and all(r["end_date"] for r in releases), "a release is still going"
    last_release_end = max(r["end_date"] for r in releases)
    deadline = time.monotonic() + 300  # the next tick is ≤ 120 s away, then the check itself
    while not (done := finished_scheduled_checks(rest, last_release_end)):
        assert time.monotonic() < deadline, "no scheduled consistency run finished within 5 minutes"
        time.sleep(5)
    check = min(done, key=lambda r: r["start_date"])
    assert check["state"] == "success", check
    assert check["triggered_by"] == "timetable"
    report = rest.xcom(CHECK_DAG, check["dag_run_id"], "classify", "return_value")
    assert set(report["regions"]) == set(local_fleet.fleet.region_names)
    assert report["desired"] is not None
    states = {region: r["state"] for region, r in report["regions"].items()}
    assert set(states.values()) == {"in-sync"}, states
    timed("e2e: waited for a scheduled consistency run", started)
