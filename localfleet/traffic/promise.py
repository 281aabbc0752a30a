"""Did users see the release's promise kept? Pure: over the users' records and the stand-in's
endpoint change log (`tm-changes.jsonl`), both with wall-clock times.

The promise (DESIGN.md, 11): no failed user request; no request served by a region between its
drain plus the TTL and its restore; after the last restore plus one TTL, every request is served
the release digest. A request is also mid-change when, inside a region's drained window, it was
served by a Deployment other than the one the region ran when drained (its generation or digest
changed): that catches a release that changes a region before resolvers have let it go.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A user's cache check happens a moment before the request it times: that moment is not a breach.
SLACK_SECONDS = 0.3


def read_changes(state_dir: str | Path) -> list[dict[str, Any]]:
    from localfleet.tm_store import CHANGES_FILE

    path = Path(state_dir) / CHANGES_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def drained_windows(
    changes: Iterable[Mapping[str, Any]], endpoint_region: Mapping[str, str], since: float, until: float
) -> dict[str, list[tuple[float, float]]]:
    """Per region, the [disabled, enabled) intervals within the release (open ones end at `until`)."""
    windows: dict[str, list[tuple[float, float]]] = {}
    open_at: dict[str, float] = {}
    for change in sorted(changes, key=lambda c: c["at"]):
        region = endpoint_region.get(change["endpoint"])
        if region is None or not since <= change["at"] <= until:
            continue
        if change["status"] == "Disabled":
            open_at.setdefault(region, change["at"])
        elif region in open_at:
            windows.setdefault(region, []).append((open_at.pop(region), change["at"]))
    for region, start in open_at.items():
        windows.setdefault(region, []).append((start, until))
    return windows


@dataclass
class Summary:
    requests: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    mid_change: list[dict[str, Any]] = field(default_factory=list)
    stale_after: list[dict[str, Any]] = field(default_factory=list)
    per_region_phase: Counter[tuple[str, str]] = field(default_factory=Counter)
    settled_at: float | None = None

    @property
    def kept(self) -> bool:
        return self.requests > 0 and not (self.failed or self.mid_change or self.stale_after)

    def lines(self) -> list[str]:
        out = [f"user requests: {self.requests}"]
        regions = sorted({r for r, _ in self.per_region_phase})
        for region in regions:
            counts = ", ".join(f"{p} {self.per_region_phase[(region, p)]}" for p in ("before", "during", "after"))
            out.append(f"  {region:<14} {counts}")
        out.append(f"failed requests: {len(self.failed)}")
        out.append(f"requests served by a region between its drain + TTL and its restore: {len(self.mid_change)}")
        out.append(f"requests served an older digest after the last restore + TTL: {len(self.stale_after)}")
        for what, rows in (("failed", self.failed), ("mid-change", self.mid_change), ("stale", self.stale_after)):
            out.extend(f"  {what}: {_row(r)}" for r in rows[:5])
        out.append("promise kept" if self.kept else "PROMISE BROKEN")
        return out


def _row(r: Mapping[str, Any]) -> str:
    digest = str(r.get("digest"))[:19]
    return f"t={r['t']:.2f} user {r['user']} -> {r.get('region')} status {r.get('status')} digest {digest}"


def summarize(
    records: Iterable[Mapping[str, Any]],
    changes: Iterable[Mapping[str, Any]],
    endpoint_region: Mapping[str, str],
    *,
    ttl: float,
    digest: str,
    since: float,
    until: float,
) -> Summary:
    """Judge the records of the release that ran from `since` to `until` (epoch seconds)."""
    records = sorted(records, key=lambda r: r["t"])
    windows = drained_windows(changes, endpoint_region, since, until)
    # What each region served just before each drain: the baseline a change is seen against.
    baseline: dict[tuple[str, float], tuple[Any, Any]] = {}
    for r in records:
        for start, _ in windows.get(r.get("region") or "", []):
            if r["t"] < start and r.get("status") == 200:
                baseline[(r["region"], start)] = (r.get("digest"), r.get("generation"))
    starts = [w[0] for ws in windows.values() for w in ws]
    restores = [w[1] for ws in windows.values() for w in ws]
    first_drain = min(starts, default=until)
    settled = max(restores, default=since) + ttl
    summary = Summary(settled_at=settled)
    for r in records:
        if not since <= r["t"] <= until + 10 * ttl + 60:
            continue
        summary.requests += 1
        phase = "before" if r["t"] < first_drain else "after" if r["t"] >= settled else "during"
        summary.per_region_phase[(r.get("region") or "-", phase)] += 1
        if r.get("status") != 200:
            summary.failed.append(dict(r))
            continue
        for start, end in windows.get(r.get("region") or "", []):
            before = baseline.get((r["region"], start))
            changed = before is not None and before != (r.get("digest"), r.get("generation"))
            if start + ttl + SLACK_SECONDS < r["t"] < end or (start <= r["t"] < end and changed):
                summary.mid_change.append(dict(r))
                break
        if r["t"] >= settled and r.get("digest") != digest:
            summary.stale_after.append(dict(r))
    return summary
