"""The fleet matrix `fanout status` prints: one row per region, assembled from plain data.

Two kinds of facts meet here. Recorded ones come from what Fanout already keeps in Airflow: the
consistency check's last report (each region's class and since when) and the release runs (the
last one that touched each region). Live ones are read now, one read per region per system: the
Deployment (running digest, its commit, ready replicas), the Helm release (revision, status), and
one Traffic Manager read for every endpoint. Either kind may be missing (Airflow unreachable, a
cluster down): the row then says what could not be read instead of guessing.

No I/O here: fanout.status_cli reads, these functions assemble and print.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from fanout import names
from fanout.drift import age, short
from fanout.policy import DIGEST

COLUMNS = (
    ("region", "region"), ("pair", "pair"), ("wave", "wave"), ("running", "running"), ("commit", "commit"),
    ("helm", "helm"), ("ready", "ready"), ("endpoint", "endpoint"), ("weight", "weight"), ("monitor", "monitor"),
    ("state", "state"), ("since", "for"), ("last_run", "last release run"),
)  # fmt: skip


def live_region(
    deployment: Mapping[str, Any] | None = None,
    helm: tuple[int, str] | None = None,
    endpoint: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One region's live facts: deployment_facts(), the current Helm (revision, status), the endpoint
    (enabled, weight, monitor_status), and {system: why} for each read that failed."""
    return {
        "deployment": dict(deployment) if deployment else None,
        "helm": {"revision": helm[0], "status": helm[1]} if helm else None,
        "endpoint": dict(endpoint) if endpoint else None,
        "errors": dict(errors or {}),
    }


def last_runs(regions: Iterable[str], runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """For each region, the newest release run (runs newest first, as Airflow's API lists them)
    that targeted it: conf `regions` absent (every region) or naming it. Dry runs change nothing."""
    found: dict[str, dict[str, Any] | None] = {}
    for region in regions:
        found[region] = None
        for run in runs:
            if targets(run, region):
                found[region] = {
                    "run_id": run.get("dag_run_id") or run.get("run_id"),
                    "state": run.get("state"),
                    "at": run.get("start_date") or run.get("run_after") or run.get("logical_date"),
                }
                break
    return found


def targets(run: Mapping[str, Any], region: str) -> bool:
    """Whether a release run (as the API lists it) was to change `region`: conf `regions` absent
    (every region) or naming it. Dry runs change nothing."""
    conf = run.get("conf") or {}
    return not conf.get("dry_run") and (not conf.get("regions") or region in conf["regions"])


def status_rows(
    regions: Sequence[tuple[str, str | None]],
    waves: Sequence[Sequence[str]],
    live: Mapping[str, Mapping[str, Any]] | None,
    report: Mapping[str, Any] | None,
    runs: Mapping[str, Mapping[str, Any] | None] | None,
) -> list[dict[str, Any]]:
    """The matrix, one dict per region in fleet order (what `--json` prints as `regions`).

    `regions` is [(name, pair)], `waves` the plan's waves, `live` {region: live_region()} (None:
    not read), `report` the consistency check's last report, `runs` last_runs()."""
    wave_of = {r: n for n, wave in enumerate(waves, 1) for r in wave}
    checked = (report or {}).get("regions") or {}
    rows = []
    for name, pair in regions:
        facts = (live or {}).get(name) or {}
        dep, helm, ep = facts.get("deployment"), facts.get("helm"), facts.get("endpoint")
        judged = checked.get(name) or {}
        rows.append(
            {
                "region": name,
                "pair": pair,
                "wave": wave_of.get(name),
                "running": dep.get("digest") if dep else None,
                "commit": dep.get("git_sha") if dep else None,
                "source_ref": dep.get("source_ref") if dep else None,
                "helm": helm,
                "ready": {"ready": dep.get("available", 0), "desired": dep.get("replicas", 0)} if dep else None,
                "endpoint": _endpoint(ep),
                "state": judged.get("state"),
                "since": judged.get("since"),
                "detail": judged.get("detail"),
                "last_run": (runs or {}).get(name),
                "errors": dict(facts.get("errors") or {}),
            }
        )
    return rows


def _endpoint(ep: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not ep:
        return None
    return {"status": "Enabled" if ep.get("enabled") else "Disabled", "weight": ep.get("weight"),
            "monitor": ep.get("monitor_status")}  # fmt: skip


def _cells(row: Mapping[str, Any], live: bool, now: datetime | None) -> dict[str, str]:
    errors = row["errors"]

    def unread(system: str) -> str:
        return "?" if system in errors or not live else "-"

    helm, ready, ep, run = row["helm"], row["ready"], row["endpoint"], row["last_run"]
    return {
        "region": row["region"],
        "pair": row["pair"] or "-",
        "wave": str(row["wave"] or "-"),
        "running": short(row["running"]) if row["running"] else unread("cluster"),
        "commit": (row["commit"] or "-")[:12] if row["running"] else unread("cluster"),
        "helm": f"rev {helm['revision']} {helm['status']}" if helm else unread("helm"),
        "ready": f"{ready['ready']}/{ready['desired']}" if ready else unread("cluster"),
        "endpoint": ep["status"] if ep else unread("traffic"),
        "weight": str(ep["weight"]) if ep and ep["weight"] is not None else ("-" if ep else unread("traffic")),
        "monitor": (ep["monitor"] or "-") if ep else unread("traffic"),
        "state": row["state"] or "?",
        "since": age(row["since"], now) if row["since"] and now else "-",
        "last_run": f"{run['run_id']} {run['state']}" if run else "-",
    }


def table(rows: Sequence[Mapping[str, Any]], live: bool = True, now: datetime | None = None) -> str:
    """The matrix as fixed-width text; a read that failed shows `?` and is explained below."""
    head = [title for _, title in COLUMNS]
    body = [[_cells(row, live, now)[key] for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    for row in rows:
        for system, why in sorted(row["errors"].items()):
            lines.append(f"{row['region']}: {system}: {why}")
    return "\n".join(lines)


def releases(app: str, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The releases recorded in these Asset events (as the API lists them, newest first): each
    release's record, with the time it was recorded. Only events the release DAG's `record` task
    emitted for `app` count: not events anyone could POST over the REST API, nor another app's."""
    found = []
    for event in events:
        extra = event.get("extra") or {}
        if is_release_event(app, event):
            keys = ("digest", "git_sha", "source_ref", "run_id", "regions", "held_back")
            found.append({**{k: extra.get(k) for k in keys}, "recorded_at": event.get("timestamp")})
    return found


def is_release_event(app: str, event: Mapping[str, Any]) -> bool:
    """Whether an Asset event is a release the release DAG's `record` task emitted for `app`."""
    extra = event.get("extra") or {}
    return (
        event.get("source_dag_id") == names.release_dag(app)
        and event.get("source_task_id") == names.RECORD
        and not extra.get("from_rest_api")
        and extra.get("app") == app
        and bool(DIGEST.match(str(extra.get("digest", ""))))
    )


def heading(
    app: str,
    fleet_path: str,
    release: Mapping[str, Any] | None,
    report: Mapping[str, Any] | None,
    now: datetime | None,
) -> list[str]:
    """What the matrix is measured against: the last release recorded, and the consistency report's age."""
    desired = release or (report or {}).get("desired")
    if desired:
        text = (f"last release {short(desired.get('digest'))} (git {str(desired.get('git_sha') or '?')[:12]}, "
                f"run {desired.get('run_id') or '?'})")  # fmt: skip
    else:
        text = "no release recorded (or Airflow not read)"
    lines = [f"{app} ({fleet_path}): {text}"]
    if report is None:
        lines.append("no consistency report read: the state column is unknown")
    else:
        checked = report.get("checked_at")
        when = f"{checked} ({age(checked, now)} ago)" if checked and now else str(checked or "?")
        lines.append(f"consistency checked {when}: {report.get('message') or ''}")
    return lines
