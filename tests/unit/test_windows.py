"""Deploy windows (fanout.windows) and what holds a region back (fanout.controls.hold)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fanout.controls import Freeze, Pause, hold, parse_pause
from fanout.fleet import FleetError, parse_fleet
from fanout.windows import DeployWindow, WeeklyRange, explain_windows, make_window, parse_range

NY = ZoneInfo("America/New_York")
OFFICE = make_window("America/New_York", ["Mon-Fri 09:00-17:00"], [date(2026, 12, 24)])


def at(*args: int, zone: ZoneInfo = NY) -> datetime:
    return datetime(*args, tzinfo=zone)


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        (at(2026, 12, 1, 10, 0), None),  # a Tuesday, 10:00 in New York: open
        (at(2026, 12, 1, 8, 30), at(2026, 12, 1, 9, 0)),  # before the day's range
        (at(2026, 12, 1, 17, 0), at(2026, 12, 2, 9, 0)),  # the end is not inside
        (at(2026, 12, 4, 18, 0), at(2026, 12, 7, 9, 0)),  # Friday evening → Monday
        (at(2026, 12, 23, 18, 0), at(2026, 12, 25, 9, 0)),  # the 24th is a blackout day
        (datetime(2026, 12, 1, 13, 59, tzinfo=UTC), at(2026, 12, 1, 9, 0)),  # 08:59 in New York
    ],
)
def test_a_window_says_when_it_opens_in_the_regions_own_time_zone(now, opens):
    assert OFFICE.opens_at(now) == opens


def test_a_range_across_a_daylight_saving_change_keeps_local_wall_time():
    # New York leaves daylight saving time on 2026-11-01: 09:00 local is 13:00 UTC before, 14:00 after.
    window = make_window("America/New_York", ["Sun-Mon 09:00-10:00"], [])
    assert window.opens_at(datetime(2026, 10, 31, 20, 0, tzinfo=UTC)) == at(2026, 11, 1, 9, 0)
    assert window.opens_at(datetime(2026, 10, 31, 20, 0, tzinfo=UTC)).astimezone(UTC).hour == 14


def test_a_window_describes_itself_as_written():
    window = make_window("UTC", ["Mon,Tue,Wed 08:00-09:30", "Sat 10:00-24:00", "Mon,Wed,Fri 00:00-01:00"], [])
    assert window.describe() == "UTC: Mon-Wed 08:00-09:30, Sat 10:00-24:00, Mon,Wed,Fri 00:00-01:00"


def test_day_ranges_may_wrap_the_week_and_be_listed():
    assert parse_range("Fri-Mon 00:00-24:00").weekdays == {4, 5, 6, 0}
    assert parse_range("Mon,Wed 08:00-09:30").weekdays == {0, 2}
    assert parse_range("Sun 22:00-24:00").end == 24 * 60


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Mon-Fry 09:00-17:00", "'Mon-Fry' is not a day"),
        ("weekdays", 'is not "<days> HH:MM-HH:MM"'),
        ("Mon 09:60-10:00", "start '09:60' is not a time of day"),
        ("Mon 17:00-09:00", "ends before it starts"),
        ("Mon 24:30-24:45", "start '24:30' is not a time of day"),
    ],
)
def test_a_bad_range_says_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_range(text)


def test_a_window_that_never_opens_says_so():
    every_day = [date(2026, 12, 1) + timedelta(days=n) for n in range(500)]
    window = make_window("UTC", ["Mon-Sun 00:00-24:00"], every_day)
    with pytest.raises(ValueError, match="does not open within 400 days"):
        window.opens_at(datetime(2026, 12, 1, tzinfo=UTC))


@given(
    start=st.integers(0, 23 * 60),
    length=st.integers(1, 60),
    days=st.sets(st.integers(0, 6), min_size=1),
    minute=st.integers(0, 14 * 24 * 60),
)
def test_opens_at_is_never_in_the_past_and_is_inside_the_window(start, length, days, minute):
    window = DeployWindow("Europe/Amsterdam", (WeeklyRange(frozenset(days), start, start + length),))
    now = datetime(2026, 3, 23, tzinfo=UTC) + timedelta(minutes=minute)
    opens = window.opens_at(now)
    if opens is None:
        local = now.astimezone(window.zone)
        assert local.weekday() in days and start <= local.hour * 60 + local.minute < start + length
    else:
        assert opens > now and window.opens_at(opens) is None
        assert opens - now <= timedelta(days=8)


EXAMPLE = Path(__file__).parents[2] / "include/fleets/azure-example.yaml"


def test_the_fleet_file_names_a_bad_window_field():
    data = yaml.safe_load(EXAMPLE.read_text())
    cases = {
        "Mars/Base": "regions[0].deploy_window: timezone 'Mars/Base' is not an IANA time zone",
        "Mon-Fry 09:00-17:00": "regions[0].deploy_window: allow[0]: 'Mon-Fry' is not a day",
    }
    for bad, says in cases.items():
        window = {"timezone": "UTC", "allow": ["Mon 09:00-17:00"]}
        window["timezone" if "/" in bad else "allow"] = bad if "/" in bad else [bad]
        data["regions"][0]["deploy_window"] = window
        with pytest.raises(FleetError) as err:
            parse_fleet(data, "fleet.yaml")
        assert f"fleet.yaml: {says}" in str(err.value)


def test_the_fleet_file_reads_a_window_with_yaml_dates():
    data = yaml.safe_load(EXAMPLE.read_text())
    name = data["regions"][0]["name"]
    data["regions"][0]["deploy_window"] = {"timezone": "Europe/Amsterdam", "allow": ["Mon-Fri 09:00-17:00"]}
    text = yaml.safe_dump(data).replace("allow:", "blackout: [2026-12-24, 2026-12-31]\n    allow:", 1)
    window = parse_fleet(yaml.safe_load(text), "fleet.yaml").region(name).deploy_window.window
    assert window.blackout == {date(2026, 12, 24), date(2026, 12, 31)}
    explained = explain_windows({name: window}, [[name], ["other"]], at(2026, 12, 1, 3, 0))
    assert f"wave 1: {name}: Europe/Amsterdam: Mon-Fri 09:00-17:00" in explained
    assert "open now" in explained


FREEZE = Freeze("incident 42", "alice", "2026-12-01T10:00:00+00:00", ("eastus",))
PAUSE = Pause("watching wave 1", "bob", "2026-12-01T10:05:00+00:00")
NOW = at(2026, 12, 1, 20, 0)  # outside OFFICE


def test_a_freeze_holds_before_a_pause_before_a_window():
    assert "frozen (eastus) by alice" in hold("eastus", NOW, freeze=FREEZE, pause=PAUSE, window=OFFICE).line
    assert "releases paused by bob" in hold("westus", NOW, freeze=FREEZE, pause=PAUSE, window=OFFICE).line
    held = hold("westus", NOW, freeze=FREEZE, pause=None, window=OFFICE)
    assert "outside its deploy window" in held.line and "opens 2026-12-02T09:00:00-05:00" in held.line
    assert hold("westus", at(2026, 12, 1, 10, 0), freeze=FREEZE, pause=None, window=OFFICE) is None


def test_a_freeze_refuses_only_under_on_freeze_fail():
    assert not hold("eastus", NOW, freeze=FREEZE, pause=None, window=None).refuse
    assert hold("eastus", NOW, freeze=FREEZE, pause=None, window=None, on_freeze="fail").refuse
    assert not hold("westus", NOW, freeze=None, pause=PAUSE, window=None, on_freeze="fail").refuse


def test_a_pause_round_trips_and_an_unreadable_one_still_pauses():
    assert parse_pause(PAUSE.to_json()) == PAUSE
    assert parse_pause(Pause("done", "bob", "x", resumed=True).to_json()) is None
    assert parse_pause(None) is None
    assert "cannot be read" in parse_pause("{not json").line()
