"""Where a release run's time went, from its task instances (as Airflow's REST API gives them) and
task logs: the critical path, each task's scheduling gap / process start / DAG parse / own work,
and the part of the run no orchestrator could avoid. Pure; used by bench_release and bench_growth.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from fanout import names

# Airflow 3.3's task runner (airflow.sdk.execution_time.task_runner) logs these at INFO, and the
# triggerer these into the task's `attempt=N.log.trigger.<id>.log`.
PARSED, PRE_EXECUTE = "Worker startup parse complete", "::group::Pre Execute"
DEFERRED, TRIGGER_STARTING, TRIGGER_FIRED = "Pausing task as DEFERRED. ", "trigger starting", "Trigger fired event"
# The standard provider's DateTimeTrigger / TimeDeltaTrigger (a pause: DNS TTL, soak, bake).
TIME_REACHED = "Sensor time condition reached"


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


def _events(path: Path) -> list[tuple[str, float]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        at = _t(entry.get("timestamp"))
        if at is not None and isinstance(entry.get("event"), str):
            found.append((entry["event"], at))
    return found


def deferral(task_dir: Path, end: float | None) -> tuple[float, float] | None:
    """For a task that deferred: (trigger pickup: deferral → its trigger starting in the triggerer,
    trigger fired → task ended), seconds summed over its deferrals; None when it never deferred.
    A time trigger's moment is fixed when the task defers, so its pickup delays nothing: 0."""
    deferred = [at for f in sorted(task_dir.glob("attempt=*.log")) for e, at in _events(f) if e == DEFERRED]
    if not deferred:
        return None
    triggers = [_events(f) for f in sorted(task_dir.glob("attempt=*.log.trigger.*.log"))]
    starts = sorted(at for events in triggers for e, at in events if e == TRIGGER_STARTING)
    fired = sorted(at for events in triggers for e, at in events if e == TRIGGER_FIRED)
    timed = any(e.startswith(TIME_REACHED) for events in triggers for e, _ in events)
    pickup = 0.0 if timed else sum(max(0.0, s - d) for d, s in zip(sorted(deferred), starts, strict=False))
    to_end = max(0.0, end - fired[-1]) if fired and end is not None else 0.0
    return pickup, to_end


def own_work(ti: dict[str, Any], startup: dict[str, tuple[float, float]]) -> float:
    """A task's start → end less its process starts and parses: what it did (and waited) itself.
    A deferred wait's own work still holds the time from its trigger firing to its end."""
    start, end = _t(ti.get("start_date")), _t(ti.get("end_date"))
    if start is None or end is None:
        return 0.0
    return max(0.0, end - start - startup.get(ti["task_id"], (0.0, 0.0))[0])


def unavoidable(
    tis: list[dict[str, Any]],
    startup: dict[str, tuple[float, float]],
    waves: list[list[str]],
    latency: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The part of a release any orchestrator pays, from the task timings: the build, the slowest
    replica wait (a plain script waits for every replica before the first wave too), and per wave
    the slowest region's steps (drain, DNS waits, Helm/rollout, gates, soak, restore, wait for
    Online) plus the wave's bake — each task's own work less its `latency` (a deferred wait's
    trigger pickup and fired → ended: the triggerer's, not the wait's). Seconds."""
    latency = latency or {}
    work = {ti["task_id"]: max(0.0, own_work(ti, startup) - latency.get(ti["task_id"], 0.0)) for ti in tis}
    replicas = [w for task, w in work.items() if task.startswith(names.WAIT_REPLICATION + "_")]
    per_wave = []
    for number, wave in enumerate(waves, start=1):
        chains = {
            region: sum(w for task, w in work.items()
                        if task.startswith(names.deploy_group(region) + ".") and not task.endswith(names.ROLLBACK))
            for region in wave
        }  # fmt: skip
        slowest = max(chains, key=lambda r: chains[r])
        per_wave.append({"slowest": slowest, "region": chains[slowest],
                         "bake": work.get(names.bake_after_wave(number), 0.0)})  # fmt: skip
    total = work.get(names.BUILD, 0.0) + max(replicas, default=0.0)
    total += sum(w["region"] + w["bake"] for w in per_wave)
    return {"build": work.get(names.BUILD, 0.0), "replica": max(replicas, default=0.0), "waves": per_wave,
            "total": total}  # fmt: skip


def summary(seconds: list[float]) -> str:
    return f"min {min(seconds):6.1f} s  median {statistics.median(seconds):6.1f} s  (n={len(seconds)})"


# "trig lat." is part of own work: a deferred wait's trigger pickup plus trigger fired → task ended.
COLUMNS = (("gap", "sched gap"), ("process", "proc start"), ("parse", "DAG parse"), ("work", "own work"),
           ("latency", "trig lat."))  # fmt: skip


def print_breakdown(rows: list[dict[str, Any]]) -> None:
    print(f"    {'task on the critical path':<36}" + "".join(f" {title:>10}" for _, title in COLUMNS))
    for r in rows:
        print(f"    {r['task']:<36}" + "".join(f" {r.get(key, 0.0):10.1f}" for key, _ in COLUMNS))
    label = f"sum ({len(rows)} tasks)"
    print(f"    {label:<36}" + "".join(f" {sum(r.get(key, 0.0) for r in rows):10.1f}" for key, _ in COLUMNS))
    waits = sum(1 for r in rows if r.get("deferred"))
    print(f"    ({waits} of them deferred; trig lat. = trigger pickup + trigger fired → task end, within own work)")
