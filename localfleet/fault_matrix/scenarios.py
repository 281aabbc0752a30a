"""The scenarios: when to break what (watching the run's task states), how it is put right, and what
the run should come to. Waves of the test fleet: westus (canary), then eastus + northeurope, then
westeurope."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fanout import names
from localfleet import cli, faults, registry
from localfleet.fault_matrix.harness import Matrix, Run, say
from localfleet.fault_matrix.promises import Check

CANARY, WAVE2, LAST = "westus", ("eastus", "northeurope"), "westeurope"
STORM = 5  # errors in a row: what the ARM clients retry (azure_credentials.client_options retry_total)


@dataclass
class Injected:
    what: str  # what was broken and when (seconds into the run)
    at: float | None  # monotonic time of the fault; None: it could not be injected
    follow: Run | None = None  # a later run the scenario is judged by (a burst's newest)
    notes: list[str] = field(default_factory=list)


def when(run: Run, at: float) -> str:
    return f"at {at - run.started:.0f} s"


@dataclass
class Scenario:
    name: str
    inject: Callable[[Matrix, Run], Injected]
    prepare: Callable[[Matrix], None] = lambda m: None
    undo: Callable[[Matrix], list[str]] = lambda m: []  # after the faulted run: what still is broken
    fails: bool = False  # the faulted run must fail (then a repair release follows)
    words: tuple[str, ...] = ()  # what its failure message must name
    verify: Callable[[Matrix, Run], list[Check]] = lambda m, run: []


# -- helm upgrade killed -----------------------------------------------------------------------------


def _pending_upgrade(m: Matrix, region: str) -> bool:
    from kubernetes import client, config

    api = config.new_client_from_config(str(cli.admin_kubeconfig_path(m.fleet)), region)
    try:
        selector = f"owner=helm,name={m.fleet.app.name},status=pending-upgrade"
        return bool(client.CoreV1Api(api).list_namespaced_secret(m.fleet.app.namespace, label_selector=selector).items)
    finally:
        api.close()


def _helm_upgrades(m: Matrix) -> list[tuple[int, int]]:
    """(pid, parent pid) of this stack's `helm upgrade` processes: a quick scan of command lines first
    (it must catch a process that lives a second), then the stack's folder in its environment."""
    found, home = [], str(m.stack.home).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            proc = Path("/proc", entry.name)
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"/helm") and b"upgrade" in argv and home in (proc / "environ").read_bytes():
                found.append((int(entry.name), int((proc / "stat").read_text().rpartition(")")[2].split()[1])))
    return found


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _catch_pending(m: Matrix, run: Run, region: str) -> tuple[int, int] | None:
    """Hold the region's `helm upgrade` (SIGSTOP), letting it on 3 ms at a time, until Helm has
    recorded the release pending-upgrade; (helm, task process) then, None if it got away."""
    task = names.region_task(region, names.HELM_DEPLOY)
    m.wait_task(run, task, ("running",))
    deadline = time.monotonic() + 120
    while not (found := _helm_upgrades(m)):
        if time.monotonic() > deadline or run.proc.poll() is not None:
            say(f"{region}: no helm upgrade process seen")
            return None
        time.sleep(0.002)
    helm, task_pid = found[0]
    steps = 0
    while _signal(helm, signal.SIGSTOP) and not _pending_upgrade(m, region):
        steps += 1
        if not _signal(helm, signal.SIGCONT):
            break
        time.sleep(0.003)
    else:
        if _signal(helm, 0):
            return helm, task_pid
    say(f"{region}: helm {helm} ended after {steps} steps before its release was pending-upgrade")
    return None


def kill_helm(m: Matrix, run: Run) -> Injected:
    """Catch a region's `helm upgrade` once Helm has recorded the release as pending-upgrade, and
    SIGKILL it and the task process that runs it (the canary's, or the next region's if the canary's
    finished too fast to catch)."""
    for region in (CANARY, *WAVE2, LAST):
        caught = _catch_pending(m, run, region)
        if caught is None:
            say(f"{region}'s helm upgrade finished before it could be caught; trying the next region")
            continue
        at = time.monotonic()
        for pid in caught[::-1]:
            _signal(pid, signal.SIGKILL)
        _signal(caught[0], signal.SIGCONT)
        m.scratch["helm_region"] = region
        task = names.region_task(region, names.HELM_DEPLOY)
        say(f"killed helm {caught[0]} and its task process {caught[1]}; {region}'s release is pending-upgrade")
        return Injected(f"SIGKILL {task}'s task process + helm, release pending-upgrade, {when(run, at)}", at)
    return Injected("no helm upgrade could be caught pending", None)


def helm_retried(m: Matrix, run: Run) -> list[Check]:
    task = names.region_task(m.scratch.get("helm_region", CANARY), names.HELM_DEPLOY)
    tis = {ti["task_id"]: ti for ti in m.call(lambda api: api.task_instances(m.dag_id, run.run_id)) or []}
    ti = tis.get(task, {})
    ok = ti.get("state") == "success" and (ti.get("try_number") or 0) >= 2
    return [Check("its retry ran", ok, f"{task} {ti.get('state')} on try {ti.get('try_number')}")]


# -- Airflow's own parts -------------------------------------------------------------------------------


def _running(states: dict[str, str | None], regions: tuple[str, ...]) -> list[str]:
    return [t for t, s in states.items() if s == "running" and any(t.startswith(f"deploy_{r}.") for r in regions)]


def kill_scheduler(m: Matrix, run: Run) -> Injected:
    at = m.wait_until(run, lambda s: bool(_running(s, WAVE2)), "a task of wave 2 running")
    busy = _running(m.states(run.run_id), WAVE2)
    m.kill_part("scheduler")
    say(f"scheduler killed (group) while {busy} ran; restarting it in 5 s")
    time.sleep(5)
    m.stack.start_part("scheduler")
    return Injected(f"SIGKILL scheduler + its workers mid wave 2 ({', '.join(busy) or '-'} running) {when(run, at)}; "
                    "restarted 5 s later", at)  # fmt: skip


def lag_last_and_hold_canary(m: Matrix) -> None:
    """The last region's replica lags (its wait defers) and the canary's new pods stay unready (its
    rollout wait defers) until the triggerer is down."""
    faults.update_faults(m.state, replica_lag={LAST: 25})
    cli.apply_fault(m.fleet, m.state, "rollout-unhealthy", CANARY, None, clear=False)


def kill_triggerer(m: Matrix, run: Run) -> Injected:
    replication, rollout = names.wait_replication(LAST), names.region_task(CANARY, names.GATES)

    def both(s: dict[str, str | None]) -> bool:
        return s.get(replication) == "deferred" and s.get(rollout) == "deferred"

    at = m.wait_until(run, both, f"{replication} and {rollout} deferred", timeout=300)
    deferred = sorted(t for t, s in m.states(run.run_id).items() if s == "deferred")
    m.kill_part("triggerer")
    cli.apply_fault(m.fleet, m.state, "rollout-unhealthy", CANARY, None, clear=True)
    say(f"triggerer killed while {deferred} were deferred; {CANARY}'s pods may become ready; restart in 5 s")
    time.sleep(5)
    m.stack.start_part("triggerer")
    return Injected(f"SIGKILL triggerer with {', '.join(deferred)} deferred {when(run, at)}; restarted 5 s later", at)


def restart_postgres(m: Matrix, run: Run) -> Injected:
    gates = names.region_task(CANARY, names.GATES)

    def mid_change(s: dict[str, str | None]) -> bool:
        return bool(_running(s, (CANARY,))) or s.get(gates) == "deferred"

    at = m.wait_until(run, mid_change, "the canary mid-change")
    m.stack.postgres.down()
    say("postgres stopped; starting it again in 3 s")
    time.sleep(3)
    m.stack.postgres.up()
    time.sleep(10)  # what dies of a lost database dies within seconds
    restarted = m.heal_stack()
    notes = [f"{', '.join(restarted)} exited with the database and were restarted"] if restarted else []
    return Injected(f"PostgreSQL stopped with the canary mid-change {when(run, at)}, up 3 s later", at, notes=notes)


# -- Traffic Manager throttling and errors ---------------------------------------------------------------


def tm_storms(m: Matrix, run: Run) -> Injected:
    """429s (Retry-After: 1) and 500s, STORM in a row each (as many as the ARM clients retry), as the
    canary drains, as it is restored, and as the run rebalances."""
    plan = [
        (names.region_task(CANARY, names.DRAIN), 429),
        (names.region_task(CANARY, names.RESTORE), 500),
        (names.REBALANCE, 429),
    ]
    first, parts = None, []
    for task, status in plan:
        at = m.wait_task(run, task, ("queued", "running"))
        faults.update_faults(m.state, tm_errors={"status": status, "remaining": STORM})
        first = first or at
        parts.append(f"{status}x{STORM} at {task.rsplit('.', 1)[-1]} ({at - run.started:.0f} s)")
    return Injected("Traffic Manager " + ", ".join(parts), first)


# -- the fleet's own parts ---------------------------------------------------------------------------


def home_registry_down(m: Matrix, run: Run) -> Injected:
    at = m.wait_task(run, names.BUILD, ("running",))
    registry.stop_registry(m.fleet, m.fleet.registry.home, m.state)
    return Injected(f"home registry ({m.fleet.registry.home}) stopped as the build ran {when(run, at)}", at)


def home_registry_up(m: Matrix) -> list[str]:
    registry.start_registry(m.fleet, m.fleet.registry.home, m.state)
    return ["home registry started again"]


GATED = WAVE2[0]


def apiserver_down(m: Matrix, run: Run) -> Injected:
    gates = names.region_task(GATED, names.GATES)
    at = m.wait_until(run, lambda s: s.get(gates) in ("running", "deferred"), f"{GATED}'s gates under way")
    cli.region_down(m.fleet, GATED, m.state, down=True)
    return Injected(f"{GATED}'s control plane stopped during its gates {when(run, at)}", at)


def apiserver_up(m: Matrix) -> list[str]:
    return [cli.region_down(m.fleet, GATED, m.state, down=False)]


def stuck_last(m: Matrix) -> None:
    m.scratch["revisions"] = {r: m.helm_revision(r) for r in m.fleet.region_names}
    faults.set_region_flag(m.state, "replica_stuck", LAST, True)


def replica_never_syncs(m: Matrix, run: Run) -> Injected:
    return Injected(f"{LAST}'s replica never syncs (stuck from the merge on)", run.started)


def unstick(m: Matrix) -> list[str]:
    faults.set_region_flag(m.state, "replica_stuck", LAST, False)
    return []


def never_deployed(m: Matrix, run: Run) -> list[Check]:
    """Promise 2: the region whose replica never had the digest was not changed by the failed run."""
    before = m.scratch["revisions"][LAST]
    after = m.helm_revision(LAST)
    return [Check("no deploy before its replica", after == before, f"{LAST} helm revision {before} -> {after}")]


# -- a burst of merges ------------------------------------------------------------------------------------


def ten_merges(m: Matrix, run: Run) -> Injected:
    at = m.wait_task(run, names.CHECK_SUPERSEDED, ("success",))
    shas = [m.commit(f"burst-{n}") for n in range(10)]
    later = []
    for sha in shas:
        started = m.trigger(sha, wait=False, what="burst")
        started.finish(120)
        if started.code != 0:
            return Injected(f"merge {len(later) + 1} of 10 could not be triggered: {started.err[-300:]}", None)
        later.append(started.out.strip())
    say(f"10 merges triggered behind {run.run_id}: {later[0]} … {later[-1]}")
    follow = m.follow(later[-1])
    m.scratch["burst"] = [run.run_id, *later]
    return Injected(f"10 merges triggered {when(run, at)}–{time.monotonic() - run.started:.0f} s", at, follow=follow)


def burst_outcome(m: Matrix, run: Run) -> list[Check]:
    """Only the first and the newest release ran, one after the other; the eight between skipped."""
    burst: list[str] = m.scratch["burst"]
    runs = {r: m.call(lambda api, r=r: api.get_run(m.dag_id, r)) or {} for r in burst}
    ran = [r for r in burst if (m.states(r).get(names.BUILD) or "skipped") != "skipped"]
    spans = sorted((runs[r].get("start_date") or "", runs[r].get("end_date") or "") for r in burst)
    interleaved = any(end > nxt for (_, end), (nxt, _) in itertools.pairwise(spans) if end and nxt)
    ok = all(runs[r].get("state") == "success" for r in burst) and ran == [burst[0], burst[-1]] and not interleaved
    detail = f"{len(burst)} runs, built in {len(ran)}: {', '.join(r.split('__')[1][:7] for r in ran)}"
    return [Check("superseded merges skipped", ok, detail + (", interleaved" if interleaved else ""))]


SCENARIOS = [
    Scenario("helm-sigkill", kill_helm, verify=helm_retried),
    Scenario("scheduler-kill", kill_scheduler),
    Scenario("triggerer-kill", kill_triggerer, prepare=lag_last_and_hold_canary),
    Scenario("postgres-restart", restart_postgres),
    Scenario("tm-429-500", tm_storms),
    Scenario("registry-down", home_registry_down, undo=home_registry_up, fails=True, words=("build",)),
    Scenario("apiserver-down", apiserver_down, undo=apiserver_up, fails=True, words=(GATED, "gate")),
    Scenario(
        "replica-stuck",
        replica_never_syncs,
        prepare=stuck_last,
        undo=unstick,
        fails=True,
        words=(LAST, "wait_replication", "replica"),
        verify=never_deployed,
    ),
    Scenario("ten-merges", ten_merges, verify=burst_outcome),
]
