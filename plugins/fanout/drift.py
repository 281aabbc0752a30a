"""Fleet consistency as plain functions over plain data: classify what each region runs
against the last release, remember since when, and decide what a repair may do.

The observe tasks gather facts (JSON dicts, one per region); these functions judge them.
No I/O, no Airflow: everything here is tested with literal dicts.

An observation (what ObserveRegionOperator returns) looks like::

    {"region": "westus", "reachable": True, "error": None,
     "deployment": {"image": "…@sha256:…", "digest": "sha256:…", "git_sha": "<40 hex>" | None,
                    "source_ref": "main" | None, "replicas": 2, "updated": 2,
                    "available": 2, "generation": 3, "observed_generation": 3} | None,
     "pods": ["sha256:…", …] | None,
     "helm": {"revision": 4, "status": "deployed", "digest": "sha256:…", "rollback_to": 4} | None,
     "replica_has_digest": True | False | None,
     "endpoint": {"name": "westus", "enabled": True, "weight": 100, "monitor_status": "Online"} | None,
     "traffic_error": None | "…"}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from fanout.redact import scrub

# Worst first: a region's state is the first class that applies. Each later class is only
# judged when the earlier ones do not hold, because their facts cannot be trusted then
# (an unreachable cluster says nothing; a locked Helm release pins nothing yet).
UNREACHABLE, STUCK, STALE, HELD_BACK, DRIFTED, TRAFFIC, IN_SYNC = (
    "unreachable", "stuck", "stale", "held-back", "drifted", "traffic-mismatch", "in-sync",
)  # fmt: skip
# held-back: not on the release because the release itself rolled it back and went on without it
# (rollout.wave_quorum); repairing it would release the build its gates just refused.
PRECEDENCE = (UNREACHABLE, STUCK, STALE, HELD_BACK, DRIFTED, TRAFFIC, IN_SYNC)
NO_RELEASE = "no-release"


def redact(text: str | None, limit: int = 300) -> str | None:
    """Error text is shown in logs and XCom: drop anything credential-like and keep it short."""
    return None if text is None else scrub(text, limit=limit)


def short(digest: str | None) -> str:
    if not digest:
        return "nothing"
    return digest[:19] if digest.startswith("sha256:") else digest


def content_state(desired: str, obs: Mapping[str, Any] | None) -> tuple[str, str]:
    """(class, why) from what the cluster and Helm say; traffic is judged separately."""
    if obs is None:
        return UNREACHABLE, "not observed: the observe task failed (see its log)"
    if not obs.get("reachable"):
        return UNREACHABLE, obs.get("error") or "the cluster did not answer"
    helm, dep = obs.get("helm"), obs.get("deployment")
    if helm and str(helm.get("status", "")).startswith("pending-"):
        return STUCK, f"Helm revision {helm['revision']} is {helm['status']}: a Helm command died mid-way"
    if dep is None:
        return STALE, "the Deployment does not exist" + ("" if helm else " and Helm has no release")
    running = dep.get("digest") or dep.get("image") or "no image"
    if helm is None:
        return STALE, f"no Helm release; the Deployment runs {short(running)}"
    if helm.get("digest") != desired:
        why = f"Helm revision {helm['revision']} pins {short(helm.get('digest'))}, not the release {short(desired)}"
        if dep.get("digest") != helm.get("digest"):
            why += f"; the Deployment runs {short(running)}"
        return STALE, why
    if helm.get("status") != "deployed":
        return STALE, f"Helm revision {helm['revision']} of the release is {helm.get('status')}"
    if dep.get("digest") != desired:
        return (
            DRIFTED,
            f"the Deployment runs {short(running)} but Helm revision {helm['revision']} pins {short(desired)}",
        )
    want = dep.get("replicas", 0)
    if dep.get("observed_generation", 0) < dep.get("generation", 0) or dep.get("updated", 0) < want:
        return STALE, f"rollout unfinished: {dep.get('updated', 0)}/{want} replicas on the release"
    others = sorted({p for p in obs.get("pods") or [] if p != desired})
    if others:
        # The rollout is finished, so every pod belongs to the current ReplicaSet: a pod on
        # another image was edited directly.
        return DRIFTED, f"pods run {', '.join(short(p) for p in others)} besides the release"
    if dep.get("available", 0) < want:
        return STALE, f"only {dep.get('available', 0)}/{want} replicas available on the release"
    return IN_SYNC, f"runs {short(desired)} (Helm revision {helm['revision']})"


def traffic_problem(
    content: str, endpoint: Mapping[str, Any] | None, weight: int, tolerate: bool, standby: bool = False
) -> str | None:
    """What is wrong with the region's Traffic Manager endpoint given its content class, if anything.

    `tolerate` is True when too few regions serve the release to meet min_serving_regions:
    the release policy then keeps stale regions enabled (old code beats NXDOMAIN). A warm
    `standby` on the release is in sync whatever its endpoint: the profile decides when it serves.
    """
    if endpoint is None or content in (UNREACHABLE, HELD_BACK) or (standby and content == IN_SYNC):
        return None
    enabled, have = bool(endpoint.get("enabled")), endpoint.get("weight")
    if content == IN_SYNC:
        if not enabled:
            return "endpoint disabled although the region serves the release"
        if have != weight:
            return f"endpoint weight {have}, the fleet file says {weight}"
        return None
    if enabled and not tolerate:
        return "endpoint enabled although the region does not serve the release"
    return None


def classify_fleet(
    desired: Mapping[str, Any] | None,
    observations: Mapping[str, Mapping[str, Any] | None],
    weights: Mapping[str, int],
    min_serving: int,
    previous: Mapping[str, Mapping[str, str]],
    now: datetime,
    releases: Mapping[str, str] | None = None,
    standby: Collection[str] = (),
) -> dict[str, Any]:
    """The report: one entry per region of `weights` (the fleet's regions, in order).

    `previous` is the last report's first-seen times, {region: {class: iso}}; a class that
    still holds keeps its time, so `since` says how long the region has been so.
    `releases` maps older release digests to their git sha, to name what a stale region runs.
    """
    checked_at = now.isoformat()
    digest, held_back = (desired or {}).get("digest"), (desired or {}).get("held_back") or {}
    contents = {r: content_state(digest, observations.get(r)) if digest else _unjudged(observations.get(r))
                for r in weights}  # fmt: skip
    for region, cause in held_back.items():
        if contents.get(region, (None,))[0] == STALE:
            contents[region] = (HELD_BACK, f"held back by the release: {cause}; {contents[region][1]}")
    serving = sum(1 for c, _ in contents.values() if c == IN_SYNC)
    tolerate = serving < min_serving
    regions: dict[str, Any] = {}
    for region, weight in weights.items():
        obs = observations.get(region) or {}
        content, why = contents[region]
        endpoint = obs.get("endpoint")
        traffic = traffic_problem(content, endpoint, weight, tolerate, region in standby) if digest else None
        classes = [content] if content != IN_SYNC or not traffic else []
        if traffic:
            classes.append(TRAFFIC)
        seen = previous.get(region, {})
        since = {c: seen.get(c, checked_at) for c in classes}
        state = min(classes, key=PRECEDENCE.index) if digest else content
        running = (obs.get("deployment") or {}).get("digest")
        regions[region] = {
            "commit": (obs.get("deployment") or {}).get("git_sha"),
            "source_ref": (obs.get("deployment") or {}).get("source_ref"),
            "state": state,
            "since": since[state],
            "classes": since,
            "detail": why + (f"; {traffic}" if traffic else ""),
            "running": running,
            "running_release": (releases or {}).get(running) if running and running != digest else None,
            "helm": _helm_brief(obs.get("helm")),
            "endpoint": _endpoint_brief(endpoint, obs.get("traffic_error")),
            "replica_has_digest": obs.get("replica_has_digest"),
        }
    counts: dict[str, int] = {}
    for r in regions.values():
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    if digest is None:
        message = "no release recorded yet: nothing to compare against, nothing to repair"
    elif counts.get(IN_SYNC) == len(regions):
        message = f"every region runs {short(digest)}"
    else:
        message = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: PRECEDENCE.index(kv[0])))
    if digest and tolerate:
        message += f"; only {serving} region(s) serve the release, below min_serving_regions {min_serving}"
    return {
        "checked_at": checked_at,
        "desired": dict(desired) if desired else None,
        "message": message,
        "counts": counts,
        "regions": regions,
    }


def _unjudged(obs: Mapping[str, Any] | None) -> tuple[str, str]:
    content, why = content_state("", obs)
    return (content, why) if content in (UNREACHABLE, STUCK) else (NO_RELEASE, "no release recorded yet")


def _helm_brief(helm: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not helm:
        return None
    return {k: helm.get(k) for k in ("revision", "status", "digest", "rollback_to")}


def _endpoint_brief(endpoint: Mapping[str, Any] | None, error: str | None) -> dict[str, Any] | None:
    if endpoint is None:
        return {"error": redact(error)} if error else None
    return {k: endpoint.get(k) for k in ("enabled", "weight", "monitor_status")}


def first_seen(report: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """What to keep for the next check: {region: {class: first seen}}."""
    return {region: dict(r["classes"]) for region, r in report["regions"].items()}


def repair_plan(report: Mapping[str, Any], frozen: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Which stuck releases to roll back and which regions a targeted release run should take.

    A release run drains, deploys, gates and restores each region under the fleet's pair and
    wave rules, so it repairs stale, drifted and traffic-mismatched regions alike. Left out:
    unreachable regions (the run could not deploy them and would halt its later waves), and a
    stuck release first seen by this very check — it may be a Helm command someone is still
    running; if it is still pending at the next check it is rolled back. A region a freeze covers
    (`frozen`: region -> the freeze) is not touched at all.
    """
    rollback: list[dict[str, Any]] = []
    release: list[str] = []
    skipped: dict[str, str] = {}
    if not (report.get("desired") or {}).get("digest"):
        return {"rollback": rollback, "release": release, "skipped": skipped}
    for region, r in report["regions"].items():
        state = r["state"]
        if state == IN_SYNC:
            continue
        if frozen and region in frozen:
            skipped[region] = frozen[region]
            continue
        if state == UNREACHABLE:
            skipped[region] = "unreachable: nothing can be deployed there; the next check tries again"
            continue
        if state == HELD_BACK:
            skipped[region] = "held back by the release: a person releases it again once the cause is fixed"
            continue
        if state == STUCK:
            target = (r.get("helm") or {}).get("rollback_to")
            if target is None:
                skipped[region] = "stuck with no deployed revision to roll back to: needs a person"
                continue
            if r["since"] >= report["checked_at"]:
                skipped[region] = "stuck since this check: rolled back if still stuck at the next one"
                continue
            rollback.append({"region": region, "revision": target})
        release.append(region)
    return {"rollback": rollback, "release": release, "skipped": skipped}


def age(since: str, now: datetime) -> str:
    seconds = max(0, int((now - datetime.fromisoformat(since)).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table(report: Mapping[str, Any]) -> str:
    """The report as a fixed-width table for the task log."""
    now = datetime.fromisoformat(report["checked_at"])
    rows = [("region", "state", "for", "running", "commit", "helm", "endpoint", "detail")]
    for region, r in report["regions"].items():
        helm = r["helm"] or {}
        ep = r["endpoint"] or {}
        endpoint = "?" if "enabled" not in ep else f"{'on' if ep['enabled'] else 'off'}/{ep.get('weight')}"
        running = short(r["running"]) + (f" (git {r['running_release'][:7]})" if r.get("running_release") else "")
        helm_text = f"{helm.get('revision')} {helm.get('status')}" if helm else "-"
        commit = (r.get("commit") or "-")[:12] + (f" ({r['source_ref']})" if r.get("source_ref") else "")
        rows.append((region, r["state"], age(r["since"], now), running, commit, helm_text, endpoint, r["detail"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
    desired = report.get("desired") or {}
    head = f"desired: {short(desired.get('digest'))}" + (
        f" (git {str(desired.get('git_sha'))[:12]} {desired.get('source_ref') or ''}, run {desired.get('run_id')})"
        if desired
        else ""
    )
    return "\n".join([head, *lines, report["message"]])
