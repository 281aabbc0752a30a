"""The Fanout page's document: what the Airflow UI's Fanout page shows for one fleet, from plain data.

Three parts beside the fleet matrix (fanout.status builds that, the same rows `fanout status`
prints): the newest release run step by step (which wave, and per region which step and for how
long), each region's release history, and the approvals a run waits for with what they decide on.

Inputs are what Airflow's REST API returns (runs, task instances, Asset events, Human-in-the-loop
details) as dicts; fanout.airflow.page_app reads them. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fanout import names, status

ACTIVE = ("running", "deferred", "queued", "scheduled", "up_for_retry", "up_for_reschedule", "restarting")
# A region's steps in the order a release takes them, with what the page calls each while it runs.
STEPS = (
    (names.WAIT_REPLICATION, "waiting for its replica"),
    (names.DRAIN, "draining"),
    (names.DNS_SETTLE, "waiting for DNS"),
    (names.HELM_DEPLOY, "deploying"),
    (names.GATES, "gates: rollout, http, soak"),
    (names.RESTORE, "restoring"),
    (names.GATE_METRICS, "gate: metrics"),
    (names.ROLLBACK, "rolling back"),
)
# Deferred, these steps wait for something else than their work: a drain only for a hold (a freeze,
# a pause or its deploy window), a restore for Traffic Manager to see the region Online.
DEFERRED = {names.DRAIN: "held back", names.RESTORE: "restored, waiting for DNS"}
GATE_STEPS = (names.GATES, names.GATE_METRICS)
HISTORY_LENGTH = 10


def ui_run(dag_id: str, run_id: str) -> str:
    """The run's page in Airflow's UI (a path on the api-server)."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def ui_approve(dag_id: str, run_id: str, task_id: str) -> str:
    """Where Airflow's UI answers a Human-in-the-loop task."""
    return f"{ui_run(dag_id, run_id)}/tasks/{quote(task_id, safe='')}/required_actions"


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _seconds(start: str | None, end: str | None, now: datetime) -> int | None:
    began = _when(start)
    if began is None:
        return None
    return max(0, int(((_when(end) or now) - began).total_seconds()))


def _task_id(region: str, step: str) -> str:
    return names.wait_replication(region) if step == names.WAIT_REPLICATION else names.region_task(region, step)


def region_step(region: str, tis: Mapping[str, Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """Where one region is in a run: {"step", "state", "since", "elapsed_s"}. `tis` maps task id to
    task instance. `elapsed_s` counts the running step; once the region is done, the whole region."""
    own = [(step, label, tis.get(_task_id(region, step))) for step, label in STEPS]
    own = [(step, label, ti) for step, label, ti in own if ti is not None]
    started = [ti for _, _, ti in own if ti.get("start_date")]
    first = min((ti["start_date"] for ti in started), default=None)
    last = max((ti.get("end_date") or "" for ti in started), default=None) or None

    def done(step: str, state: str) -> dict[str, Any]:
        return {"step": step, "state": state, "since": last, "elapsed_s": _seconds(first, last, now)}

    states = {step: (ti.get("state") or "none") for step, _, ti in own}
    if states.get(names.ROLLBACK) == "success":
        return done("rolled back", "failed")
    active = [(step, label, ti) for step, label, ti in own if ti.get("state") in ACTIVE]
    if active:
        step, label, ti = active[-1]
        if ti["state"] == "deferred":
            label = DEFERRED.get(step, label)
        since = ti.get("start_date")
        return {"step": label, "state": ti["state"], "since": since, "elapsed_s": _seconds(since, None, now)}
    failed = [
        step for step, state in states.items() if state in ("failed", "upstream_failed") and step != names.ROLLBACK
    ]
    if failed:
        return done(f"failed at {failed[0]}", "failed")
    if states.get(names.RESTORE) == "success":  # the later steps are done too, or would be active
        return done("restored", "success")
    if own and all(state in ("skipped", "removed") for step, state in states.items() if step != names.ROLLBACK):
        return done("not in this run", "skipped")
    return {"step": "waiting", "state": "none", "since": None, "elapsed_s": None}


def current_release(
    run: Mapping[str, Any] | None,
    task_instances: Sequence[Mapping[str, Any]],
    waves: Sequence[Sequence[str]],
    now: datetime,
) -> dict[str, Any] | None:
    """The newest release run as the page shows it: its wave (the furthest one a region of it has
    started), each region's step, and the run-wide tasks under way (build, bake, approvals)."""
    if run is None:
        return None
    tis = {ti["task_id"]: ti for ti in task_instances if ti.get("map_index", -1) == -1}
    regions = {r: region_step(r, tis, now) for wave in waves for r in wave}
    wave = None
    for number, members in enumerate(waves, 1):
        if any(regions[r]["state"] not in ("none", "skipped") for r in members):
            wave = number
    regional = {_task_id(r, step) for r in regions for step, _ in STEPS}
    under_way = sorted(t for t, ti in tis.items() if t not in regional and ti.get("state") in ACTIVE)
    run_id = run.get("dag_run_id") or run.get("run_id")
    return {
        "run_id": run_id,
        "state": run.get("state"),
        "conf": {k: v for k, v in (run.get("conf") or {}).items() if k in ("git_sha", "source_ref", "image", "regions",
                                                                          "hotfix", "hotfix_reason")},
        "started": run.get("start_date"),
        "elapsed_s": _seconds(run.get("start_date"), run.get("end_date"), now),
        "wave": wave,
        "waves": len(waves),
        "regions": regions,
        "under_way": under_way,
        "link": ui_run(str(run.get("dag_id") or ""), str(run_id)),
    }  # fmt: skip


def history(
    app: str,
    regions: Sequence[str],
    events: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    now: datetime,
    length: int = HISTORY_LENGTH,
) -> dict[str, list[dict[str, Any]]]:
    """Each region's releases, newest first: every release Asset event that named it (commit,
    digest, run, outcome, duration), and the runs for it that failed before recording one."""
    dag_id = names.release_dag(app)
    by_run = {str(r.get("dag_run_id") or r.get("run_id")): r for r in runs}
    recorded = [e for e in events if status.is_release_event(app, e)]
    recorded_runs = {str((e.get("extra") or {}).get("run_id")) for e in recorded}
    found: dict[str, list[dict[str, Any]]] = {r: [] for r in regions}
    for event in recorded:
        extra = event["extra"]
        run_id = str(extra.get("run_id"))
        run = by_run.get(run_id) or {}
        held = extra.get("held_back") or {}
        serving = extra.get("outcome") or {}
        for region in extra.get("regions") or regions:
            if region not in found:
                continue
            if region in held:
                outcome = f"held back: {held[region]}"
            elif (serving.get(region) or {}).get("serving") not in (None, extra.get("digest")):
                outcome = "not serving it"
            else:
                outcome = "released"
            found[region].append({
                "at": event.get("timestamp"), "run_id": run_id, "link": ui_run(dag_id, run_id),
                "commit": extra.get("git_sha"), "digest": extra.get("digest"), "outcome": outcome,
                "duration_s": _seconds(run.get("start_date"), run.get("end_date"), now) if run else None,
            })  # fmt: skip
    for run in runs:
        run_id = str(run.get("dag_run_id") or run.get("run_id"))
        if run.get("state") != "failed" or run_id in recorded_runs:
            continue
        for region in found:
            if status.targets(run, region):
                found[region].append({
                    "at": run.get("start_date"), "run_id": run_id, "link": ui_run(dag_id, run_id),
                    "commit": (run.get("conf") or {}).get("git_sha"), "digest": None, "outcome": "failed",
                    "duration_s": _seconds(run.get("start_date"), run.get("end_date"), now),
                })  # fmt: skip
    for rows in found.values():
        rows.sort(key=lambda row: row["at"] or "", reverse=True)
        del rows[length:]
    return found


def approvals(
    app: str,
    run_id: str | None,
    pending: Sequence[Mapping[str, Any]],
    task_instances: Sequence[Mapping[str, Any]],
    canary: Sequence[str],
    conf: Mapping[str, Any] | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The approvals the run waits for (Human-in-the-loop details not yet answered), each with what
    its approver decides on: after the canary, the canary regions' gates; for a hotfix, its reason."""
    dag_id = names.release_dag(app)
    tis = {ti["task_id"]: ti for ti in task_instances if ti.get("map_index", -1) == -1}
    found = []
    for detail in pending:
        ti = detail.get("task_instance") or {}
        task_id = str(ti.get("task_id") or "")
        if detail.get("response_received") or not run_id:
            continue
        item: dict[str, Any] = {
            "task_id": task_id,
            "subject": detail.get("subject"),
            "options": list(detail.get("options") or []),
            "waiting_s": _seconds(detail.get("created_at"), None, now),
            "link": ui_approve(dag_id, run_id, task_id),
            "gates": {},
        }
        if task_id == names.APPROVE_AFTER_CANARY:
            for region in canary:
                gates = {gate: tis.get(names.region_task(region, gate)) for gate in GATE_STEPS}
                item["gates"][region] = {
                    gate: {"state": t.get("state"), "duration_s": _seconds(t.get("start_date"), t.get("end_date"), now)}
                    for gate, t in gates.items() if t is not None
                }  # fmt: skip
        elif task_id == names.APPROVE_HOTFIX:
            item["hotfix"] = {k: (conf or {}).get(k) for k in ("git_sha", "image", "hotfix_reason")}
        found.append(item)
    return found


def document(
    app: str,
    regions: Sequence[tuple[str, str | None]],
    waves: Sequence[Sequence[str]],
    canary: Sequence[str],
    recorded: Mapping[str, Any],
    live: Mapping[str, Mapping[str, Any]] | None,
    problems: Sequence[str],
    now: datetime,
) -> dict[str, Any]:
    """Everything the page shows, as JSON. `recorded` is what fanout.airflow.page_app read from
    Airflow: events, runs (newest first), report, task_instances and pending (of the newest run)."""
    dag_id = names.release_dag(app)
    events, runs, report = recorded.get("events") or [], recorded.get("runs") or [], recorded.get("report")
    region_names = [name for name, _ in regions]
    rows = status.status_rows(regions, waves, live, report, status.last_runs(region_names, runs))
    for row in rows:
        if row["last_run"]:
            row["last_run"]["link"] = ui_run(dag_id, str(row["last_run"]["run_id"]))
    newest = {"dag_id": dag_id, **runs[0]} if runs else None
    tis = recorded.get("task_instances") or []
    current = current_release(newest, tis, waves, now)
    waiting = approvals(
        app,
        current and current["run_id"],
        recorded.get("pending") or [],
        tis,
        canary,
        newest and newest.get("conf"),
        now,
    )
    return {
        "app": app,
        "dag_id": dag_id,
        "read_at": now.isoformat(),
        "release": next(iter(status.releases(app, events)), None),
        "consistency": {k: report.get(k) for k in ("checked_at", "message", "mode")} if report else None,
        "regions": rows,
        "live": live is not None,  # False: the live columns were not read (unknown, not empty)
        "current": current,
        "approvals": waiting,
        "history": history(app, region_names, events, runs, now),
        "problems": list(problems),
    }
