"""The wave planner: worked examples, then every rule checked over random fleets."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.fleet import FleetError, load_fleet, parse_fleet
from fanout.packing import Items, fewest_bins
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


def test_azure_example_takes_four_waves_where_first_fit_took_five():
    plan = plan_waves(load_fleet(REPO / "include/fleets/azure-example.yaml"))
    assert [w.regions for w in plan.waves] == [
        ("westcentralus",),
        ("westeurope", "italynorth"),  # waves go in the order of their lightest region
        ("eastus2", "northeurope"),
        ("westus2", "centralus"),
    ]
    text = plan.explain()
    assert "3 wave(s) after the canary is the fewest possible" in text
    assert "centralus waits: its pair eastus2 is in this wave" in text


def test_two_waves_where_first_fit_takes_three():
    # First-fit puts r1+r2 (200) together and leaves r0 and r3 (150 each, pairs) alone: 3 waves.
    # Two waves exist: r0+r1 and r2+r3 (or r0+r2 and r1+r3).
    fleet = parse_fleet(fleet_data([150, 100, 100, 150], pairs=[(0, 3)], share=0.5))
    plan = plan_waves(fleet)
    assert len(plan.waves) == 2
    assert all(w.drained_weight == 250 for w in plan.waves)
    assert "2 wave(s) is the fewest possible" in plan.explain()


def test_a_search_out_of_budget_keeps_the_plan_it_has_and_says_so():
    # Two light partners: the bounds say one bin could do, only the search shows it cannot.
    items = Items(weight=[10, 10], partner=[1, 0], capacity=100, size=2)
    stopped = fewest_bins(items, range(2), [(0,), (1,)], budget=0)
    assert (len(stopped.bins), stopped.proven, stopped.lower_bound) == (2, False, 1)
    full = fewest_bins(items, range(2), [(0,), (1,)])
    assert (len(full.bins), full.proven) == (2, True)


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


def fewest_waves(fleet, regions):
    """Brute force: the fewest valid waves for `regions`, over every way to group them."""
    best = {0: 0}
    full = (1 << len(regions)) - 1
    for mask in range(1, full + 1):
        low = mask & -mask
        rest = mask ^ low
        options = []
        sub = rest
        while True:  # every wave holding the lowest region of `mask`
            wave = sub | low
            if fits(fleet, [r for i, r in enumerate(regions) if wave >> i & 1]):
                options.append(1 + best[mask ^ wave])
            if sub == 0:
                break
            sub = (sub - 1) & rest
        best[mask] = min(options, default=len(regions) + 1)
    return best[full]


@settings(max_examples=300, deadline=None)
@given(random_fleets())
def test_the_plan_has_the_fewest_waves_brute_force_finds(case):
    fleet, targets = case
    wanted = targets or fleet.region_names
    try:
        plan = plan_waves(fleet, targets)
    except PlanError:
        return  # when no plan exists is checked above
    canary = [r for r in fleet.rollout.canary if r in wanted]
    rest = [r for r in wanted if r not in canary]
    assert len(plan.waves) == bool(canary) + fewest_waves(fleet, rest)
    position = fleet.region_names.index
    lightest = [
        min((fleet.region(r).endpoint.weight, position(r)) for r in w.regions) for w in plan.waves[bool(canary) :]
    ]
    assert lightest == sorted(lightest), "waves go in the order of their lightest region"


def test_a_warm_standby_carries_no_weight_so_a_wave_never_drains_more_real_traffic_than_allowed():
    """Four regions of weight 100, one a warm standby (no users): 50 % may be drained. Counting the
    standby, two serving regions per wave (200/400) would pass, yet take 2/3 of the users away."""
    data = fleet_data([100, 100, 100, 100], per_wave=2, share=0.5)
    data["regions"][3]["standby"] = "warm"
    fleet = parse_fleet(data)
    assert fleet.total_weight == 300
    plan = plan_waves(fleet)
    serving = {r.name for r in fleet.regions if r.standby is None}
    for wave in plan.waves:
        assert len(serving & set(wave.regions)) <= 1, plan.explain()
        assert wave.drained_weight <= 0.5 * 300
    assert "r3" in plan.regions  # the standby is still released, riding along at no weight


def test_a_fleet_of_standbys_only_is_refused():
    data = fleet_data([100, 100])
    for region in data["regions"]:
        region["standby"] = "warm"
    with pytest.raises(FleetError, match=r"regions: every region is a warm standby"):
        parse_fleet(data)
