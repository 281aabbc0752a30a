"""fanout.routing: where a drained region's users go, per routing method (property-tested)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fanout.fleet import parse_fleet
from fanout.routing import RoutingError, check_wave, explain_waves, settle_seconds, traffic_shares

REPO = Path(__file__).resolve().parents[2]
REGIONS = ["eastus", "westus", "northeurope", "westeurope"]


def fleet(method="Weighted", regions=None, **rollout):
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["traffic_manager"]["routing_method"] = method
    data["rollout"].update(rollout)
    for region in data["regions"]:
        change = dict((regions or {}).get(region["name"], {}))
        region["endpoint"].update(change.pop("endpoint", {}))
        region.update(change)
    return parse_fleet(data, REPO / "include/fleets/local.yaml")


PRIORITY = {r: {"endpoint": {"priority": n}} for n, r in enumerate(REGIONS, start=1)}
drained_sets = st.sets(st.sampled_from(REGIONS), max_size=3)


@pytest.mark.parametrize("method", ["Weighted", "Priority", "Performance"])
@given(out=drained_sets)
def test_every_user_lands_on_a_serving_region_and_none_on_a_drained_one(method, out):
    f = fleet(method, PRIORITY if method == "Priority" else None)
    shares = traffic_shares(f, out)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(shares[r] == 0 for r in out)


@given(out=drained_sets)
def test_a_warm_standby_carries_no_users_whatever_is_drained(out):
    f = fleet("Weighted", {"westeurope": {"standby": "warm"}})
    assert traffic_shares(f, out)["westeurope"] == 0


def test_priority_draining_the_active_endpoint_moves_everything_to_the_next_and_checks_its_capacity():
    f = fleet("Priority", PRIORITY)
    assert traffic_shares(f)["eastus"] == 1.0
    assert traffic_shares(f, ["eastus"])["westus"] == 1.0
    # westus can carry 0.25 / (1 - 0.5) = 50 % of users, not all of them.
    with pytest.raises(RoutingError, match=r"westus would take 100% of users \(Priority routing\), more than the 50%"):
        check_wave(f, ["eastus"])
    roomy = fleet("Priority", {**PRIORITY, "eastus": {**PRIORITY["eastus"], "capacity_share": 0.5},
                               "westus": {**PRIORITY["westus"], "capacity_share": 0.5},
                               "northeurope": {"capacity_share": None, **PRIORITY["northeurope"]},
                               "westeurope": {"capacity_share": None, **PRIORITY["westeurope"]}})  # fmt: skip
    check_wave(roomy, ["eastus"])


def test_performance_moves_each_location_to_its_next_closest_region():
    f = fleet("Performance", {r: {"capacity_share": None} for r in REGIONS})
    assert traffic_shares(f)["westeurope"] == 0.5 and traffic_shares(f)["eastus"] == 0.5
    assert traffic_shares(f, ["westeurope"])["northeurope"] == 0.5


def test_geographic_refuses_to_drain_a_geographys_only_answer_naming_it():
    codes = {"eastus": ["GEO-NA"], "westus": ["US", "CA"], "northeurope": ["GEO-EU"], "westeurope": ["WORLD"]}
    geo = {r: {"endpoint": {"geo_mapping": c}} for r, c in codes.items()}
    f = fleet("Geographic", geo)
    with pytest.raises(RoutingError, match="leaves geographies CA, US with no answer"):
        check_wave(f, ["westus"])
    assert "no answer for GEO-EU" in explain_waves(f, [["northeurope"]])


def test_the_wait_is_the_live_ttl_never_below_the_fleet_floor():
    assert settle_seconds(60, 10) == 60
    assert settle_seconds(5, 10) == 10
    assert settle_seconds(None, 10) == 10


# -- Geographic with nested profiles: a geography answers through a child profile with fallbacks --

NESTED = [
    {"endpoint": "america", "profile": "hello-america", "regions": ["eastus", "westus"], "geo_mapping": ["GEO-NA"]},
    {"endpoint": "europe", "profile": "hello-europe", "regions": ["westeurope", "northeurope"],
     "geo_mapping": ["GEO-EU", "WORLD"]},
]  # fmt: skip


def nested_fleet(nested=None, capacity=True, **rollout):
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    for region in data["regions"]:
        region["capacity_share"] = region["capacity_share"] if capacity else None
    tm = data["traffic_manager"]
    tm["routing_method"], tm["nested"] = "Geographic", nested or NESTED
    data["rollout"].update(rollout)
    return parse_fleet(data, REPO / "include/fleets/local.yaml")


@given(out=drained_sets)
def test_nested_geographies_fall_back_to_the_next_region_or_the_wave_is_refused(out):
    f = nested_fleet()
    shares = traffic_shares(f, out)
    lost = {"eastus", "westus"} <= out or {"westeurope", "northeurope"} <= out
    if lost:
        with pytest.raises(RoutingError, match="with no answer"):
            check_wave(f, out)
        return
    assert sum(shares.values()) == pytest.approx(1.0) and all(shares[r] == 0 for r in out)
    assert shares["westus" if "eastus" in out else "eastus"] == 0.5
    assert shares["northeurope" if "westeurope" in out else "westeurope"] == 0.5
    check_wave(f, out)  # each takes 50 %, what capacity_share 25 % with 50 % headroom carries


def test_a_nested_primary_drained_is_answered_by_its_fallback_in_the_plan():
    f = nested_fleet()
    check_wave(f, ["eastus", "westeurope"])  # was refused without a nested endpoint
    text = explain_waves(f, [["eastus"], ["westeurope", "westus"]])
    assert "wave 1: westus 50%, westeurope 50%" in text
    assert "GEO-NA via nested 'america' answered by fallback westus" in text
    assert "wave 2: eastus 50%, northeurope 50%" in text and "no answer" not in text


def test_a_fallback_drained_in_the_same_wave_is_refused_naming_the_nested_endpoint():
    with pytest.raises(RoutingError) as err:
        check_wave(nested_fleet(), ["eastus", "westus"])
    assert "leaves geography GEO-NA with no answer" in str(err.value)
    assert "traffic_manager.nested 'america' keeps 0 of min_child_endpoints 1 (none not drained)" in str(err.value)


def test_below_min_child_endpoints_the_nested_endpoint_has_no_answer():
    three = [{**NESTED[0], "regions": ["eastus", "westus", "northeurope"], "min_child_endpoints": 2},
             {**NESTED[1], "regions": ["westeurope"]}]  # fmt: skip
    f = nested_fleet(three, capacity=False)  # capacity is not what this test is about
    check_wave(f, ["eastus"])
    with pytest.raises(RoutingError, match=r"'america' keeps 1 of min_child_endpoints 2 \(northeurope not drained\)"):
        check_wave(f, ["eastus", "westus"])
    assert traffic_shares(f, ["eastus", "westus"])["northeurope"] == 0  # Degraded: Geographic does not fail over


def test_a_drain_is_refused_when_the_live_profile_already_has_the_fallback_disabled():
    from fanout.policy import EndpointState, PolicyError, check_drain

    f = nested_fleet(max_drain_share=0.75)
    live = {r: EndpointState(r, "ExternalEndpoints", r != "westus", 100, "Online") for r in REGIONS}
    check_drain(f, live, "westeurope")
    with pytest.raises(PolicyError, match="eastus would leave geography GEO-NA with no answer while westus is"):
        check_drain(f, live, "eastus")


def test_nested_profiles_in_the_fleet_file_are_checked_naming_the_field():
    from fanout.fleet import FleetError

    bad = [{**NESTED[0], "regions": ["eastus", "mars"], "min_child_endpoints": 3},
           {**NESTED[1], "profile": "hello", "geo_mapping": ["GEO-NA"]}]  # fmt: skip
    with pytest.raises(FleetError) as err:
        nested_fleet(bad)
    text = str(err.value)
    assert "local.yaml: traffic_manager.nested[0].regions[1]: 'mars' is not a region of this fleet" in text
    assert "traffic_manager.nested[0].min_child_endpoints: 3 is more than its 2 region(s)" in text
    assert "traffic_manager.nested[1].profile: 'hello' is the parent's or another nested entry's profile" in text
    assert "traffic_manager.nested[1].geo_mapping: 'GEO-NA' is already mapped to traffic_manager.nested[0]" in text
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["traffic_manager"]["nested"] = NESTED
    with pytest.raises(FleetError, match=r"traffic_manager\.nested: only for routing_method Geographic"):
        parse_fleet(data, "f.yaml")


def test_validate_names_each_difference_between_the_live_nested_structure_and_the_file():
    from fanout.routing import LiveEndpoint, LiveProfile, nested_mismatches

    f = nested_fleet()
    base = "/subscriptions/s/resourceGroups/fanout-local/providers/Microsoft.Network/trafficManagerProfiles/"

    def child(*order, method="Priority"):
        return LiveProfile(method, {r: LiveEndpoint("ExternalEndpoints", n) for n, r in enumerate(order, start=1)})

    parent = {
        "america": LiveEndpoint("NestedEndpoints", None, ("GEO-NA",), base + "hello-america", 1),
        "europe": LiveEndpoint("NestedEndpoints", None, ("WORLD", "GEO-EU"), base + "hello-europe", None),
    }
    good = {"hello-america": child("eastus", "westus"), "hello-europe": child("westeurope", "northeurope")}
    assert nested_mismatches(f, parent, good) == []
    parent["america"] = LiveEndpoint("NestedEndpoints", None, ("GEO-NA", "US"), base + "other", 2)
    wrong = {"hello-america": child("westus", "eastus", method="Weighted"), "hello-europe": None}
    assert nested_mismatches(f, parent, wrong) == [
        "traffic_manager.nested[0].profile: the file says hello-america, nested endpoint 'america' targets "
        + base
        + "other",
        "traffic_manager.nested[0].min_child_endpoints: the file says 1, 'america' has 2",
        "traffic_manager.nested[0].geo_mapping: the file says GEO-NA, 'america' maps GEO-NA, US",
        "traffic_manager.nested[0].profile: 'hello-america' routes Weighted; a child profile routes Priority "
        "(regions in the file's order)",
        "traffic_manager.nested[0].regions: the file lists eastus, westus, 'hello-america' prioritises westus, eastus",
        "traffic_manager.nested[1].profile: there is no profile 'hello-europe' in resource group 'fanout-local'",
    ]
