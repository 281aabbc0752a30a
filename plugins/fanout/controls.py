"""Freezes, pauses and quarantines: an operator stops every change to some regions (or all of
them) at once, holds a release before its next wave, or keeps one known-bad build from ever being
released again. `hold` decides whether a region may be changed now (freeze, pause, deploy window).

A freeze lives in one Airflow Variable per app (`names.freeze_variable`), so it is in Airflow's
database, not on one machine, and every change to it goes through Airflow's REST API: Airflow's
auth manager decides who may set it, and its event log records who did, when, and the summary the
Variable's description carries (`fanout audit` lists them). A quarantine is one Variable per
digest (`names.quarantine_variable`), so a run checks exactly its own digest and two quarantines
never overwrite each other. This module is the plain data: what a Variable's value means, and
whether it covers a region or digest now. Lifting writes a lifted value rather than deleting the
Variable, so the lift has a reason in the log too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from fanout.windows import DeployWindow


class _Recorded:
    """A stop as its Variable records it: the dataclass as JSON (a tuple of regions as a list)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Freeze(_Recorded):
    """A freeze as recorded: `regions` None means every region; `until` None means until lifted."""

    reason: str
    by: str
    at: str  # ISO 8601, UTC
    regions: tuple[str, ...] | None = None
    until: str | None = None
    lifted: bool = False

    def covers(self, region: str, now: datetime) -> bool:
        if self.lifted or (self.until is not None and now >= datetime.fromisoformat(self.until)):
            return False
        return self.regions is None or region in self.regions

    def scope(self) -> str:
        return "every region" if self.regions is None else ", ".join(self.regions)

    def line(self) -> str:
        until = f" until {self.until}" if self.until else ""
        return f"frozen ({self.scope()}) by {self.by} at {self.at}{until}: {self.reason}"

    def summary(self) -> str:
        """The Variable's description: what Airflow's event log keeps of the change (it masks values)."""
        if self.lifted:
            return f"unfreeze by {self.by}: {self.reason}"
        return f"freeze {self.scope()}{f' until {self.until}' if self.until else ''} by {self.by}: {self.reason}"


def parse_freeze(text: str | None) -> Freeze | None:
    """The freeze a Variable's value records, None for none. A value that cannot be read freezes
    every region: a freeze someone meant to set must never be ignored because of a typo."""
    if not text:
        return None
    try:
        data: dict[str, Any] = json.loads(text)
        regions = data.get("regions")
        freeze = Freeze(
            reason=str(data["reason"]), by=str(data["by"]), at=str(data["at"]),
            regions=None if regions is None else tuple(str(r) for r in regions),
            until=data.get("until"), lifted=bool(data.get("lifted", False)),
        )  # fmt: skip
        if freeze.until is not None:
            datetime.fromisoformat(freeze.until)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Freeze(reason=f"the freeze Variable cannot be read ({text[:80]!r}); fix or lift it", by="?", at="?")
    return None if freeze.lifted else freeze


def frozen_regions(freeze: Freeze | None, regions: Sequence[str], now: datetime) -> dict[str, str]:
    """region -> why, for each of `regions` the freeze covers now."""
    if freeze is None:
        return {}
    return {region: freeze.line() for region in regions if freeze.covers(region, now)}


def check_regions(regions: Collection[str] | None, known: Sequence[str]) -> list[str]:
    """The names in `regions` that are not regions of the fleet."""
    return sorted(set(regions or ()) - set(known))


@dataclass(frozen=True)
class Quarantine(_Recorded):
    """A digest no run may release, and why."""

    digest: str
    reason: str
    by: str
    at: str
    lifted: bool = False

    def line(self) -> str:
        return f"{self.digest} is quarantined by {self.by} at {self.at}: {self.reason}"

    def summary(self) -> str:
        verb = "lift quarantine of" if self.lifted else "quarantine"
        return f"{verb} {self.digest} by {self.by}: {self.reason}"


def parse_quarantine(text: str | None, digest: str) -> Quarantine | None:
    """The quarantine a Variable's value records for `digest`, None for none (or lifted). A value
    that cannot be read quarantines the digest: releasing a build someone meant to stop is worse."""
    if not text:
        return None
    try:
        data: dict[str, Any] = json.loads(text)
        found = Quarantine(digest, str(data["reason"]), str(data["by"]), str(data["at"]), bool(data.get("lifted")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Quarantine(digest, f"the quarantine Variable cannot be read ({text[:80]!r}); fix or lift it", "?", "?")
    return None if found.lifted else found


def rollback_target(
    releases: Sequence[Mapping[str, Any]], bad: str, quarantined: Callable[[str], bool]
) -> Mapping[str, Any] | None:
    """The release to roll a quarantined digest back to: the newest recorded release (newest
    first in `releases`) of another digest that is not quarantined itself. None when there is none."""
    for release in releases:
        digest = release.get("digest")
        if digest and digest != bad and release.get("git_sha") and not quarantined(digest):
            return release
    return None


@dataclass(frozen=True)
class Pause(_Recorded):
    """The app's releases paused before their next wave's drains (regions mid-change finish)."""

    reason: str
    by: str
    at: str
    resumed: bool = False

    def line(self) -> str:
        return f"releases paused by {self.by} at {self.at}: {self.reason}"

    def summary(self) -> str:
        return f"{'resume' if self.resumed else 'pause'} releases by {self.by}: {self.reason}"


def parse_pause(text: str | None) -> Pause | None:
    """The pause a Variable's value records, None for none (or resumed). A value that cannot be
    read pauses: as with a freeze, a pause someone meant must not be lost to a typo."""
    if not text:
        return None
    try:
        data: dict[str, Any] = json.loads(text)
        found = Pause(str(data["reason"]), str(data["by"]), str(data["at"]), bool(data.get("resumed")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Pause(f"the pause Variable cannot be read ({text[:80]!r}); fix it or `fanout resume`", "?", "?")
    return None if found.resumed else found


@dataclass(frozen=True)
class Hold:
    """Why a region may not be changed now. `refuse`: fail now rather than wait (a freeze under
    `rollout.on_freeze: fail`)."""

    line: str
    refuse: bool = False


def hold(
    region: str,
    now: datetime,
    *,
    freeze: Freeze | None,
    pause: Pause | None,
    window: DeployWindow | None,
    on_freeze: str = "wait",
) -> Hold | None:
    """What holds `region` back from its next change at `now`, None when nothing does."""
    if freeze is not None and freeze.covers(region, now):
        return Hold(freeze.line(), refuse=on_freeze == "fail")
    if pause is not None:
        return Hold(pause.line())
    if window is not None and (opens := window.opens_at(now)) is not None:
        return Hold(f"outside its deploy window ({window.describe()}); it opens {opens.isoformat()}")
    return None
