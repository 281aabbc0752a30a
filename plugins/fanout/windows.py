"""Deploy windows: when a region may be changed, in the region's own time zone.

A window is a list of weekly ranges ("Mon-Fri 09:00-17:00", "Sat 10:00-12:00", "Sun 00:00-24:00")
and one-off blackout dates on which nothing may change all day. A release whose next region is
outside its window waits (deferred) until it opens; a change that started inside a window
finishes even if the window closes meanwhile (stopping mid-change is worse than finishing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_RANGE = re.compile(r"^(?P<days>[A-Za-z,-]+) (?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)$")
# How far ahead opens_at looks: a window closed for longer than this (a year of blackouts) never opens.
HORIZON_DAYS = 400


@dataclass(frozen=True)
class WeeklyRange:
    weekdays: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, after start; 1440 is the end of the day

    def bounds(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
        midnight = datetime.combine(day, time(), zone)
        return midnight + timedelta(minutes=self.start), midnight + timedelta(minutes=self.end)


def _minutes(text: str, what: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{what} {text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _weekdays(text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{part!r} is not a day or a day range of {', '.join(DAYS)}")
        a, b = DAYS.index(first), DAYS.index(last or first)
        found.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(found)


def parse_range(text: str) -> WeeklyRange:
    """ "Mon-Fri 09:00-17:00" → WeeklyRange; raises ValueError saying what is wrong."""
    match = _RANGE.match(text.strip())
    if not match:
        raise ValueError(f'{text!r} is not "<days> HH:MM-HH:MM" (e.g. "Mon-Fri 09:00-17:00")')
    start, end = _minutes(match["start"], "start"), _minutes(match["end"], "end")
    if end <= start:
        raise ValueError(f"{text!r} ends before it starts (split a range across midnight in two)")
    return WeeklyRange(_weekdays(match["days"]), start, end)


@dataclass(frozen=True)
class DeployWindow:
    timezone: str
    allow: tuple[WeeklyRange, ...]
    blackout: frozenset[date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def opens_at(self, now: datetime) -> datetime | None:
        """None when changes are allowed at `now` (an aware datetime), else when they next are.
        Raises ValueError when the window does not open within HORIZON_DAYS."""
        local = now.astimezone(self.zone)
        for offset in range(HORIZON_DAYS):
            day = local.date() + timedelta(days=offset)
            if day in self.blackout:
                continue
            starts = []
            for weekly in self.allow:
                if day.weekday() in weekly.weekdays:
                    start, end = weekly.bounds(day, self.zone)
                    if local < end:
                        starts.append(max(start, local))
            if starts:
                first = min(starts)
                return None if first <= local else first
        raise ValueError(f"the deploy window does not open within {HORIZON_DAYS} days")

    def describe(self) -> str:
        return f"{self.timezone}: {', '.join(_describe(r) for r in self.allow)}" + (
            f"; blackout {', '.join(str(d) for d in sorted(self.blackout))}" if self.blackout else ""
        )


def _describe(weekly: WeeklyRange) -> str:
    runs: list[list[int]] = []
    for day in sorted(weekly.weekdays):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    days = ",".join(DAYS[r[0]] if len(r) == 1 else f"{DAYS[r[0]]}-{DAYS[r[-1]]}" for r in runs)
    return f"{days} {weekly.start // 60:02d}:{weekly.start % 60:02d}-{weekly.end // 60:02d}:{weekly.end % 60:02d}"


def make_window(timezone: str, allow: list[str], blackout: list[date]) -> DeployWindow:
    """A DeployWindow from the fleet file's fields; ValueError naming what is wrong."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {timezone!r} is not an IANA time zone (e.g. Europe/Amsterdam)") from None
    if not allow:
        raise ValueError("allow: name at least one range; a region that may never change cannot be released")
    ranges = []
    for index, text in enumerate(allow):
        try:
            ranges.append(parse_range(text))
        except ValueError as err:
            raise ValueError(f"allow[{index}]: {err}") from None
    return DeployWindow(timezone, tuple(ranges), frozenset(blackout))


def explain_windows(windows: Mapping[str, DeployWindow], waves: Sequence[Sequence[str]], now: datetime) -> str:
    """Per wave, the deploy windows of its regions and, for a window closed at `now`, when it opens:
    what `fanout plan` shows of the waits a release would meet. Empty when no region has a window."""
    lines = []
    for number, wave in enumerate(waves, 1):
        for region in wave:
            if (window := windows.get(region)) is None:
                continue
            try:
                opens = window.opens_at(now)
                when = "open now" if opens is None else f"closed now; opens {opens.isoformat(timespec='minutes')}"
            except ValueError as err:
                when = str(err)
            lines.append(f"  wave {number}: {region}: {window.describe()} — {when}")
    if not lines:
        return ""
    return "Deploy windows (a region's drain waits, deferred, until its window is open):\n" + "\n".join(lines)
