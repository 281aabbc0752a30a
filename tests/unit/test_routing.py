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
