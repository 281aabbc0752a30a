"""What Fanout tells people, as plain functions over plain data: one Message per event of a release
(started, succeeded, failed, waiting for approval, rolled back) and of the consistency check (drift
found, repair started). fanout.airflow.notify gathers the facts from a task's context and sends
what these return; nothing here knows Airflow or the service a message goes to.

A message names the app, the run and what a person needs to act: for a failure the region, the
gate and the cause; for an approval the link that approves. Causes come from task errors and are
scrubbed of anything credential-like before they leave.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fanout.drift import IN_SYNC, NO_RELEASE, PRECEDENCE, short
from fanout.records import StepFailure
from fanout.redact import scrub

# Apprise's notify types: how a chat service colours the message.
INFO, SUCCESS, FAILURE, WARNING = "info", "success", "failure", "warning"
CAUSE_LIMIT = 500


@dataclass(frozen=True)
class Message:
    event: str  # one of fanout.fleet.NOTIFY_EVENTS
    title: str
    body: str
    level: str = INFO


def run_link(ui_url: str | None, dag_id: str, run_id: str) -> str | None:
    """The run's page in Airflow's UI, or None when no UI address is known."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def approval_link(ui_url: str | None, dag_id: str, run_id: str, task_id: str) -> str | None:
    """The task's "required actions" page, where a person approves or rejects (Airflow's HITL UI)."""
    run = run_link(ui_url, dag_id, run_id)
    return None if run is None else f"{run}/tasks/{quote(task_id, safe='')}/required_actions"


def _where(run_id: str, link: str | None) -> str:
    return f"run {run_id}" + (f"\n{link}" if link else "")


def _git(git_sha: str | None, source_ref: str | None = None) -> str:
    if not git_sha:
        return "git ?"
    return f"git {git_sha[:12]}" + (f" ({source_ref})" if source_ref else "")


def release_started(
    app: str,
    run_id: str,
    git_sha: str | None,
    source_ref: str | None,
    waves: Iterable[Iterable[str]],
    link: str | None,
) -> Message:
    plan = " | ".join(", ".join(w) for w in waves) or "no region"
    return Message(
        "started",
        f"{app}: release started",
        f"Release of {app} at {_git(git_sha, source_ref)} started.\nWaves: {plan}\n{_where(run_id, link)}",
    )


def release_succeeded(
    app: str,
    run_id: str,
    digest: str | None,
    git_sha: str | None,
    regions: Iterable[str],
    held_back: Mapping[str, str] | None,
    link: str | None,
) -> Message:
    held = dict(held_back or {})
    lines = [f"Release of {app} at {_git(git_sha)} succeeded: {short(digest)} in {', '.join(regions)}."]
    for region, why in sorted(held.items()):
        lines.append(f"Held back: {region}: {scrub(why, limit=CAUSE_LIMIT)}")
    lines.append(_where(run_id, link))
    title = f"{app}: release succeeded" + (f" ({len(held)} region(s) held back)" if held else "")
    return Message("succeeded", title, "\n".join(lines), WARNING if held else SUCCESS)


def release_failed(app: str, run_id: str, failures: Iterable[StepFailure], link: str | None) -> Message:
    """One message per failed run, naming every region / gate / cause that failed it."""
    found = list(failures) or [StepFailure(None, "unknown", "the run failed without saying why; see its tasks")]
    first = found[0]
    title = f"{app}: release failed — {first.region or 'release'} / {first.gate}"
    lines = [f"Release of {app} failed."]
    for failure in found:
        cause = scrub(failure.cause, limit=CAUSE_LIMIT)
        lines.append(f"region: {failure.region or '(whole release)'}  gate: {failure.gate}  cause: {cause}")
    lines.append(_where(run_id, link))
    return Message("failed", title, "\n".join(lines), FAILURE)


def waiting_for_approval(app: str, run_id: str, subject: str, link: str | None, timeout_minutes: int) -> Message:
    where = f"Approve or reject: {link}" if link else "Approve or reject it in Airflow (Required Actions)"
    return Message(
        "approval",
        f"{app}: release waiting for approval",
        f"{subject}\n{where}\nIt is rejected by itself after {timeout_minutes} min.\nrun {run_id}",
        WARNING,
    )


def rolled_back(app: str, run_id: str, outcome: Mapping[str, Any], link: str | None) -> Message:
    """A region's rollback (a RollbackOutcome as its task returns it)."""
    region = outcome.get("region") or "?"
    to = outcome.get("rolled_back_to")
    done = f"rolled back to Helm revision {to}" if to else "not rolled back (nothing older to return to)"
    cause = scrub(str(outcome.get("cause") or "?"), limit=CAUSE_LIMIT)
    body = (
        f"{region}: {outcome.get('gate') or '?'} failed: {cause}\n"
        f"{region} {done}; traffic {outcome.get('traffic') or '?'}; serving {short(outcome.get('serving'))}.\n"
        f"{_where(run_id, link)}"
    )
    return Message("rolled-back", f"{app}: {region} rolled back", body, WARNING)


def rolled_back_all(app: str, run_id: str, rolled: Mapping[str, Mapping[str, Any]], link: str | None) -> Message:
    """failure_policy rollback-all: every region the run upgraded, back where it was."""
    parts = [
        f"{r} to Helm revision {o['rolled_back_to']}" if o.get("rolled_back_to") else f"{r} ({o.get('note')})"
        for r, o in rolled.items()
    ]
    body = f"rollback-all after a failed release: {', '.join(parts) or 'nothing to roll back'}.\n{_where(run_id, link)}"
    return Message("rolled-back", f"{app}: release rolled back everywhere", body, WARNING)


def drift_found(app: str, report: Mapping[str, Any], run_id: str, link: str | None) -> Message | None:
    """The consistency report's regions that went out of sync at this check (their class was first
    seen now); None when there are none, so a region that stays stale is told once, not every check."""
    checked = report.get("checked_at")
    new = {
        region: r
        for region, r in (report.get("regions") or {}).items()
        if r.get("state") not in (IN_SYNC, NO_RELEASE) and r.get("since") == checked
    }
    if not new:
        return None
    desired = report.get("desired") or {}
    lines = [f"{app}: {len(new)} region(s) no longer match the release {short(desired.get('digest'))}:"]
    for region, r in sorted(new.items(), key=lambda kv: (_rank(kv[1].get("state")), kv[0])):
        lines.append(f"{region}: {r.get('state')}: {scrub(str(r.get('detail') or ''), limit=CAUSE_LIMIT)}")
    lines.append(f"Consistency mode: {report.get('mode') or '?'}; {report.get('message') or ''}".rstrip("; "))
    lines.append(_where(run_id, link))
    states = sorted({r.get("state") for r in new.values()}, key=_rank)
    return Message("drift", f"{app}: drift found ({', '.join(map(str, states))})", "\n".join(lines), WARNING)


def repair_started(app: str, outcome: Mapping[str, Any], run_id: str, link: str | None) -> Message | None:
    """The repair task's outcome; None unless it triggered a release run."""
    if outcome.get("action") != "triggered":
        return None
    regions = outcome.get("release") or []
    lines = [f"Repair of {app}: release run {outcome.get('run_id')} for {', '.join(regions)}."]
    for rb in outcome.get("rollback") or []:
        lines.append(f"{rb.get('region')} is stuck: rolled back to Helm revision {rb.get('revision')} first.")
    for region, why in (outcome.get("skipped") or {}).items():
        lines.append(f"Not repaired: {region}: {scrub(str(why), limit=CAUSE_LIMIT)}")
    lines.append(f"Triggered by the consistency check, {_where(run_id, link)}")
    return Message("repair", f"{app}: repair started ({', '.join(regions)})", "\n".join(lines), INFO)


def _rank(state: Any) -> int:
    return PRECEDENCE.index(state) if state in PRECEDENCE else len(PRECEDENCE)
