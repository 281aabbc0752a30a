"""localfleet.traffic.answer: Traffic Manager's choice of endpoint, over plain data."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from localfleet.traffic.answer import Where, choose

MONITOR = st.sampled_from(["Online", "Degraded", "CheckingEndpoint"])
STATUS = st.sampled_from(["Enabled", "Disabled"])


def view(method, endpoints):
    return {"name": "hello", "routing_method": method, "ttl": 5, "endpoints": endpoints}


def ep(name, status="Enabled", monitor="Online", **props):
    return {
        "name": name,
        "target": name,
        "endpointStatus": status,
        "monitor": monitor,
        "endpointLocation": name,
        **props,
    }


@given(
    method=st.sampled_from(["Weighted", "Priority", "Performance"]),
    states=st.lists(st.tuples(STATUS, MONITOR), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
)
def test_only_enabled_endpoints_are_answered_and_online_ones_first(method, states, seed):
    eps = [ep(f"r{i}", s, m, weight=i + 1, priority=i + 1) for i, (s, m) in enumerate(states)]
    where = Where("x", ("WORLD",), {f"r{i}": 10 * (5 - i) for i in range(len(states))})
    got = choose(view(method, eps), where, random.Random(seed))
    enabled = [e for e in eps if e["endpointStatus"] == "Enabled"]
    if not enabled:
        assert got is None  # NXDOMAIN
        return
    assert len(got) == 1 and got[0]["endpointStatus"] == "Enabled"
    if any(e["monitor"] == "Online" for e in enabled):
        assert got[0]["monitor"] == "Online"


def test_when_no_enabled_endpoint_is_online_traffic_manager_fails_open():
    eps = [ep("a", monitor="Degraded"), ep("b", "Disabled")]
    assert choose(view("Weighted", eps), Where())[0]["name"] == "a"


def nested(name, child_endpoints, geo, status="Enabled", monitor="Online"):
    child = view("Priority", child_endpoints)
    return ep(name, status, monitor, kind="NestedEndpoints", geoMapping=geo, child=child)


@given(
    child=st.lists(st.tuples(STATUS, MONITOR), min_size=1, max_size=4),
    parent_monitor=st.sampled_from(["Online", "CheckingEndpoint", "Degraded"]),
)
def test_a_nested_endpoint_answers_with_its_child_profiles_choice_or_nodata_when_degraded(child, parent_monitor):
    eps = [ep(f"c{i}", s, m, priority=i + 1) for i, (s, m) in enumerate(child)]
    parent = view("Geographic", [nested("europe", eps, ["GEO-EU"], monitor=parent_monitor)])
    got = choose(parent, Where("eu", ("WORLD", "GEO-EU")))
    expected = choose(view("Priority", eps), Where())
    if parent_monitor == "Degraded" or expected is None:
        assert got == []  # Geographic does not fail over: NODATA, never NXDOMAIN for the parent
    else:
        assert got == expected and got[0]["name"].startswith("c")
