"""The wave planner: worked examples, then every rule checked over random fleets."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.fleet import load_fleet, parse_fleet
from fanout.planner import PlanError, plan_waves

REPO = Path(__file__).resolve().parents[2]
SUB = "00000000-0000-0000-0000-000000000000"


def fleet_data(weights, pairs=(), canary=(), per_wave=2, share=0.5, min_serving=1):
    """A minimal valid fleet: regions r0..rN with the given endpoint weights and pairs."""
    names = [f"r{i}" for i in range(len(weights))]
    partner = {}
    for a, b in pairs:
        partner[names[a]], partner[names[b]] = names[b], names[a]
    return {
        "app": {
            "name": "app",
            "namespace": "app",
            "source": {"directory": "."},
            "chart": {"path": "c", "version": "1"},
        },
        "registry": {"kind": "acr", "name": "registry1", "repository": "app", "home": names[0]},
        "regions": [
            {
                "name": n,
                "pair": partner.get(n),
                "cluster": {"aks": {"subscription": SUB, "resource_group": "g", "cluster": n}},
                "endpoint": {"name": n, "weight": w},
                "edge_url": f"https://{n}.example.com",
            }
            for n, w in zip(names, weights, strict=True)
        ],
        "traffic_manager": {"kind": "azure", "subscription": SUB, "resource_group": "g", "profile": "p"},
        "rollout": {
            "canary": [names[i] for i in canary],
            "max_regions_per_wave": per_wave,
            "max_drain_share": share,
        },
        "min_serving_regions": min_serving,
    }


def test_local_fleet_plan():
    plan = plan_waves(load_fleet(REPO / "include/fleets/local.yaml"))
    assert [w.regions for w in plan.waves] == [("westus",), ("eastus", "northeurope"), ("westeurope",)]
    assert plan.waves[0].canary
    text = plan.explain()
    assert "wave 2: eastus, northeurope  — drains 200/400 weight (50%), 2 region(s) keep serving" in text
    assert "westeurope waits: its pair northeurope is in this wave" in text


def test_azure_example_keeps_pairs_apart():
    fleet = load_fleet(REPO / "include/fleets/azure-example.yaml")
    plan = plan_waves(fleet)
    assert plan.waves[0].regions == ("westcentralus",)
    for wave in plan.waves:
        for region in wave.regions:
            assert fleet.region(region).pair not in wave.regions


def test_one_pair_with_a_30_percent_limit_is_impossible_and_says_why():
    fleet = parse_fleet(fleet_data([100, 100], pairs=[(0, 1)], share=0.3))
    with pytest.raises(PlanError) as err:
        plan_waves(fleet)
    assert str(err.value).startswith(
        "no valid plan: r0 alone carries 100/200 of the endpoint weight (50%), above rollout.max_drain_share 30%"
    )
    assert "Raise max_drain_share to at least 0.50" in str(err.value)


def test_min_serving_that_cannot_be_met():
    fleet = parse_fleet(fleet_data([100, 100, 100], min_serving=3))
    with pytest.raises(PlanError, match=r"draining r0 leaves 2 region.s. serving, below min_serving_regions 3"):
        plan_waves(fleet)


def test_canary_regions_that_cannot_share_a_wave():
    fleet = parse_fleet(fleet_data([100, 100, 100, 100], pairs=[(0, 1)], canary=[0, 1]))
    with pytest.raises(PlanError, match=r"rollout.canary: .*r1 waits: its pair r0 is in this wave"):
        plan_waves(fleet)


def test_subset_and_unknown_regions():
    fleet = parse_fleet(fleet_data([100, 100, 100, 100], pairs=[(0, 1)], canary=[0]))
    plan = plan_waves(fleet, ["r1", "r3"])
    assert plan.regions == ["r1", "r3"]
    assert plan.skipped == ("r0", "r2")
    assert not plan.waves[0].canary  # the canary is not in this run
    with pytest.raises(PlanError, match="regions: 'mars' not in this fleet"):
        plan_waves(fleet, ["r1", "mars"])


def test_lighter_regions_go_first_after_the_canary():
    fleet = parse_fleet(fleet_data([100, 300, 50, 200], canary=[1], per_wave=1, share=1))
    assert [w.regions for w in plan_waves(fleet).waves] == [("r1",), ("r2",), ("r0",), ("r3",)]


@st.composite
def random_fleets(draw):
    n = draw(st.integers(1, 9))
    weights = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    order = draw(st.permutations(range(n)))
    pair_count = draw(st.integers(0, n // 2))
    pairs = [(order[2 * i], order[2 * i + 1]) for i in range(pair_count)]
    canary = draw(st.lists(st.sampled_from(range(n)), max_size=2, unique=True))
    data = fleet_data(
        weights,
        pairs=pairs,
        canary=canary,
        per_wave=draw(st.integers(1, 4)),
        share=draw(st.sampled_from([0.1, 0.25, 0.3, 1 / 3, 0.5, 0.75, 1.0])),
        min_serving=draw(st.integers(1, n)),
    )
    fleet = parse_fleet(data)
    targets = draw(st.none() | st.lists(st.sampled_from(fleet.region_names), min_size=1, unique=True))
    return fleet, targets


def fits(fleet, regions):
    """The rules, written again independently of the planner."""
    weight = sum(fleet.region(r).endpoint.weight for r in regions)
    return (
        len(regions) <= fleet.rollout.max_regions_per_wave
        and weight <= fleet.rollout.max_drain_share * fleet.total_weight + 1e-9
        and len(fleet.regions) - len(regions) >= fleet.min_serving_regions
        and not any(fleet.region(r).pair in regions for r in regions)
    )


@settings(max_examples=400, deadline=None)
@given(random_fleets())
def test_every_rule_holds_on_random_fleets(case):
    fleet, targets = case
    wanted = targets or fleet.region_names
    canary = [r for r in fleet.rollout.canary if r in wanted]
    possible = all(fits(fleet, [r]) for r in wanted) and fits(fleet, canary)
    try:
        plan = plan_waves(fleet, targets)
    except PlanError as err:
        assert not possible, f"a plan exists (one region per wave) but the planner said: {err}"
        assert str(err)
        return
    assert possible
    assert sorted(plan.regions) == sorted(wanted), "every target exactly once"
    assert len(plan.regions) == len(set(plan.regions))
    if canary:
        assert plan.waves[0].canary and sorted(plan.waves[0].regions) == sorted(canary)
    assert not any(w.canary for w in plan.waves[1:])
    for wave in plan.waves:
        assert wave.regions, "no empty wave"
        assert fits(fleet, list(wave.regions)), f"wave {wave.number} breaks a rule: {wave}"
    assert plan == plan_waves(fleet, targets), "same input, same plan"
    assert plan.explain().count("\n  wave ") == len(plan.waves)
