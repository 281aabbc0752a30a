"""DESIGN.md's promises, checked over what the fleet shows (a FleetView) — pure, so hand-made
fleet states test the checker itself.

A scenario is judged twice when its release fails on purpose: right after the failure (each region
on the previous release or on the new one, nothing pending, no enabled region on anything else, a
message naming what broke), and after the repair that follows (every region on the release). A
release that ends well is judged once, against its own digest.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DIGEST_REF = re.compile(r"@(sha256:[0-9a-f]{64})\Z")


@dataclass(frozen=True)
class RegionView:
    """One region as its cluster, Helm's storage, its edge and Traffic Manager show it."""

    name: str
    helm_status: str | None  # the latest revision's status; None: never installed
    helm_revision: int
    images: tuple[str, ...]  # the app Deployment's container images and every pod's
    rolled_out: bool  # every replica updated and ready, the controller caught up
    serving: str | None  # the digest the edge says users get
    enabled: bool  # its Traffic Manager endpoint


@dataclass(frozen=True)
class FleetView:
    regions: Mapping[str, RegionView]
    fewest_enabled: int  # the fewest endpoints enabled at any moment of the scenario
    min_serving: int  # the fleet file's min_serving_regions


@dataclass(frozen=True)
class Check:
    promise: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'ok' if self.ok else 'BROKEN'}: {self.promise}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class UsersView:
    """What the simulated users saw (localfleet.traffic.promise.Summary, reduced)."""

    requests: int
    failed: int
    mid_change: int
    stale_after: int
    examples: tuple[str, ...] = field(default_factory=tuple)


def digests_of(images: Iterable[str]) -> set[str | None]:
    """The digest each image is pinned to; None for an image named by a tag."""
    return {m.group(1) if (m := DIGEST_REF.search(i)) else None for i in images}


def check_fleet(view: FleetView, release: str, allowed: Collection[str] | None = None) -> list[Check]:
    """Promises 1, 4, 7 and 8 over the fleet. `allowed`: the digests a region may run (default the
    release alone; after a failed release also the one before it)."""
    allowed = set(allowed or {release})
    one, half, stale = [], [], []
    for name, r in sorted(view.regions.items()):
        pinned = digests_of(r.images)
        if None in pinned or len(pinned) != 1:
            one.append(f"{name} runs {sorted(str(d)[:19] for d in pinned)}")
        elif not pinned <= allowed:
            one.append(f"{name} runs {next(iter(pinned))[:19]}, not the release")
        if r.helm_status != "deployed":
            half.append(f"{name} helm {r.helm_status} (rev {r.helm_revision})")
        elif not r.rolled_out:
            half.append(f"{name} rollout unfinished")
        elif pinned != {r.serving}:
            half.append(f"{name} edge serves {str(r.serving)[:19]}, cluster runs {sorted(str(d)[:19] for d in pinned)}")
        if r.enabled and r.serving not in allowed:
            stale.append(f"{name} enabled on {str(r.serving)[:19]}")
    floor = max(view.min_serving, 1)
    return [
        Check("one digest", not one, "; ".join(one) or f"{release[:19]}"),
        Check("nothing half-applied", not half, "; ".join(half)),
        Check(
            "never all endpoints disabled",
            view.fewest_enabled >= floor,
            f"fewest enabled {view.fewest_enabled}, floor {floor}",
        ),
        Check("no stale region with traffic", not stale, "; ".join(stale)),
    ]


def failure_report(stderr: str) -> str:
    """What `fanout trigger --wait` says of a failed run after its progress lines: each failed task
    and, indented, its region, step and cause."""
    lines = stderr.splitlines()
    end = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].rstrip().endswith(": failed")), None)
    return "\n".join(lines[end + 1 :]) if end is not None else stderr


def check_message(state: str, message: str, expect_failure: bool, words: Iterable[str]) -> Check:
    """Promise 5's message: a run expected to fail failed with a report (`failure_report`) that names
    `words` (the region, the step, the cause); one expected to pass passed."""
    if not expect_failure:
        detail = "" if state == "success" else f"run {state}: {failure_report(message)[-300:]}"
        return Check("clear message", state == "success", detail)
    if state != "failed":
        return Check("clear message", False, f"expected a failed run, got {state}")
    report = failure_report(message)
    causes = [ln.strip() for ln in report.splitlines() if ln.startswith("    ")]
    missing = [w for w in words if not any(w.lower() in c.lower() for c in causes)]
    detail = f"missing {missing} in: {report[-400:]}" if missing else (causes[0][:200] if causes else "")
    return Check("clear message", bool(causes) and not missing, detail)


def check_users(users: UsersView | None) -> Check:
    """Promise 11: no user request failed, none reached a region mid-change or stale code after."""
    if users is None:
        return Check("users unharmed", False, "no record of the users")
    ok = users.requests > 0 and not (users.failed or users.mid_change or users.stale_after)
    detail = f"{users.requests} requests, {users.failed} failed, {users.mid_change} mid-change, "
    detail += f"{users.stale_after} stale" + ("; " + "; ".join(users.examples[:3]) if users.examples else "")
    return Check("users unharmed", ok, detail)


def fewest_enabled(initial: Mapping[str, bool], changes: Iterable[Mapping[str, Any]], since: float) -> int:
    """Replay Traffic Manager's change log ({at, endpoint, status}) from `since` over the endpoints'
    states at `since`: the fewest enabled at any moment."""
    state = dict(initial)
    fewest = sum(state.values())
    for change in sorted(changes, key=lambda c: c["at"]):
        if change["at"] < since or change["endpoint"] not in state:
            continue
        state[change["endpoint"]] = change["status"] == "Enabled"
        fewest = min(fewest, sum(state.values()))
    return fewest
