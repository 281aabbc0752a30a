"""localfleet.traffic.promise: the recorder's judgement catches each way the promise breaks."""

from __future__ import annotations

from localfleet.traffic.promise import drained_windows, summarize

NEW, OLD = "sha256:" + "b" * 64, "sha256:" + "a" * 64
CHANGES = [
    {"at": 100.0, "endpoint": "ep-w", "status": "Disabled"},
    {"at": 120.0, "endpoint": "ep-w", "status": "Enabled"},
]
NAMES = {"ep-w": "westus", "ep-e": "eastus"}


def req(t, region, status=200, digest=NEW):
    return {"t": t, "user": 1, "region": region, "status": status, "digest": digest}


def judge(records):
    return summarize(records, CHANGES, NAMES, ttl=5, digest=NEW, since=90, until=130)


def test_a_release_users_never_noticed_keeps_the_promise():
    s = judge([req(95, "westus", digest=OLD), req(104, "westus", digest=OLD), req(110, "eastus"), req(126, "westus")])
    assert s.kept and s.requests == 4
    assert s.per_region_phase[("westus", "before")] == 1 and s.per_region_phase[("westus", "during")] == 1


def test_a_request_served_by_a_region_after_drain_plus_ttl_is_caught():
    s = judge([req(95, "eastus"), req(106, "westus", digest=OLD)])
    assert not s.kept and [r["t"] for r in s.mid_change] == [106]


def test_failed_and_stale_requests_are_caught():
    s = judge([req(110, "eastus", status=503), req(126, "eastus", digest=OLD)])
    assert [r["t"] for r in s.failed] == [110] and [r["t"] for r in s.stale_after] == [126]
    assert "PROMISE BROKEN" in s.lines()


def test_a_drain_still_open_when_the_release_ends_counts_until_its_end():
    assert drained_windows(CHANGES[:1], NAMES, 90, 130) == {"westus": [(100.0, 130)]}


def test_a_request_served_by_a_region_that_changed_under_its_user_is_caught_even_within_the_ttl():
    old = {**req(99, "westus", digest=OLD), "generation": 3}
    new_code = {**req(103, "westus"), "generation": 4}  # 3 s after the drain, TTL 5: still mid-change
    s = judge([old, {**req(101, "westus", digest=OLD), "generation": 3}, new_code])
    assert [r["t"] for r in s.mid_change] == [103]
