"""The wave planner: fleet + target regions -> ordered waves, with the reasons.

Rules, in the order they are checked:
- the canary region(s) form the first wave;
- the two regions of a pair are never in the same wave;
- a wave holds at most `rollout.max_regions_per_wave` regions;
- a wave drains at most `rollout.max_drain_share` of the fleet's total endpoint weight;
- at least `min_serving_regions` regions stay enabled while a wave is drained.
Every wave costs a bake, so after the canary the plan has the fewest waves these rules allow.
First-fit, lightest regions first (Azure's safe deployment order: pilot, light, heavy), often
reaches that minimum, and then its plan is kept as it is; when it does not, an exact search
(fanout.packing) finds a plan with fewer waves, whose waves go in the order of their lightest
region — the order first-fit produces. Ties are broken by the order in the fleet file, so a
plan is a pure function of its input. A region that fits no wave even on its own makes the
plan impossible; any other set of regions can always be planned, one region per wave at worst.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fanout.fleet import Fleet
from fanout.packing import Items, fewest_bins

# Shares are compared as weights to avoid float edge cases: 0.3 * 1000 is not 300.0.
_EPS = 1e-9


class PlanError(ValueError):
    """No valid plan exists; the message says why and what to change."""


@dataclass(frozen=True)
class Wave:
    number: int
    regions: tuple[str, ...]
    drained_weight: int
    total_weight: int
    serving_left: int
    canary: bool = False
    deferred: tuple[str, ...] = field(default=(), compare=False)

    @property
    def share(self) -> float:
        return self.drained_weight / self.total_weight


@dataclass(frozen=True)
class Plan:
    app: str
    waves: tuple[Wave, ...]
    skipped: tuple[str, ...] = ()
    fewest: str = field(default="", compare=False)  # why no plan has fewer waves

    @property
    def regions(self) -> list[str]:
        return [r for w in self.waves for r in w.regions]

    def wave_of(self, region: str) -> int:
        for wave in self.waves:
            if region in wave.regions:
                return wave.number
        raise KeyError(region)

    def explain(self) -> str:
        lines = [f"Plan for {self.app}: {len(self.waves)} wave(s), {len(self.regions)} region(s)"]
        for w in self.waves:
            kind = " (canary)" if w.canary else ""
            lines.append(
                f"  wave {w.number}{kind}: {', '.join(w.regions)}"
                f"  — drains {w.drained_weight}/{w.total_weight} weight ({w.share:.0%}),"
                f" {w.serving_left} region(s) keep serving"
            )
            lines.extend(f"      {reason}" for reason in w.deferred)
        if self.fewest:
            lines.append(f"  {self.fewest}")
        if self.skipped:
            lines.append(f"  not in this run: {', '.join(self.skipped)}")
        return "\n".join(lines)


class _Rules:
    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.weight = {r.name: r.traffic_weight for r in fleet.regions}
        self.pair = {r.name: r.pair for r in fleet.regions}
        self.total = fleet.total_weight
        self.size = len(fleet.regions)
        self.max_weight = fleet.rollout.max_drain_share * self.total + _EPS
        self.max_regions = fleet.rollout.max_regions_per_wave
        self.min_serving = fleet.min_serving_regions
        # min_serving_regions caps a wave's size just as max_regions_per_wave does.
        self.wave_size = max(1, min(self.max_regions, self.size - self.min_serving))

    def why_not(self, wave: list[str], region: str) -> str | None:
        """Why `region` cannot join `wave`, or None if it can."""
        if region in (self.pair[r] for r in wave):
            return f"{region} waits: its pair {self.pair[region]} is in this wave"
        if len(wave) + 1 > self.max_regions:
            return f"{region} waits: the wave is full (rollout.max_regions_per_wave = {self.max_regions})"
        weight = sum(self.weight[r] for r in wave) + self.weight[region]
        if weight > self.max_weight:
            return (
                f"{region} waits: the wave would drain {weight}/{self.total} weight ({weight / self.total:.0%}),"
                f" above rollout.max_drain_share {self.fleet.rollout.max_drain_share:.0%}"
            )
        if self.size - (len(wave) + 1) < self.min_serving:
            return (
                f"{region} waits: only {self.size - len(wave) - 1} region(s) would keep serving,"
                f" below min_serving_regions {self.min_serving}"
            )
        return None

    def alone_problem(self, region: str) -> str | None:
        """Why `region` fits no wave even on its own."""
        share = self.weight[region] / self.total
        if self.weight[region] > self.max_weight:
            return (
                f"{region} alone carries {self.weight[region]}/{self.total} of the endpoint weight ({share:.0%}),"
                f" above rollout.max_drain_share {self.fleet.rollout.max_drain_share:.0%}: no wave can drain it."
                f" Raise max_drain_share to at least {share:.2f} or rebalance the weights."
            )
        if self.size - 1 < self.min_serving:
            return (
                f"draining {region} leaves {self.size - 1} region(s) serving, below min_serving_regions"
                f" {self.min_serving}: lower min_serving_regions or add regions."
            )
        return None

    def wave(self, number: int, regions: list[str], canary: bool, deferred: list[str]) -> Wave:
        return Wave(
            number=number,
            regions=tuple(regions),
            drained_weight=sum(self.weight[r] for r in regions),
            total_weight=self.total,
            serving_left=self.size - len(regions),
            canary=canary,
            deferred=tuple(deferred),
        )


def plan_waves(fleet: Fleet, targets: list[str] | None = None) -> Plan:
    """Order `targets` (default: every region) into waves. Raises PlanError when impossible."""
    names = fleet.region_names
    wanted = names if targets is None else list(dict.fromkeys(targets))
    unknown = [t for t in wanted if t not in names]
    if unknown:
        raise PlanError(f"regions: {', '.join(repr(u) for u in unknown)} not in this fleet (it has {', '.join(names)})")
    if not wanted:
        raise PlanError("regions: the run targets no region")
    rules = _Rules(fleet)
    problems = [p for r in wanted if (p := rules.alone_problem(r))]
    if problems:
        raise PlanError("no valid plan: " + " ".join(problems))

    waves: list[Wave] = []
    canary = [r for r in names if r in fleet.rollout.canary and r in wanted]
    if canary:
        joined: list[str] = []
        for region in canary:
            reason = rules.why_not(joined, region)
            if reason:
                raise PlanError(f"rollout.canary: the canary regions cannot share one wave: {reason}")
            joined.append(region)
        waves.append(rules.wave(1, canary, True, []))

    order = {name: i for i, name in enumerate(names)}
    remaining = sorted((r for r in wanted if r not in canary), key=lambda r: (rules.weight[r], order[r]))
    greedy = _first_fit(rules, remaining)
    index = {r: i for i, r in enumerate(remaining)}
    items = Items(
        weight=[rules.weight[r] for r in remaining],
        partner=[index.get(rules.pair[r]) for r in remaining],
        capacity=rules.max_weight,
        size=rules.wave_size,
    )
    packing = fewest_bins(items, range(len(remaining)), [tuple(index[r] for r in w) for w, _ in greedy])
    if len(packing.bins) < len(greedy):
        groups = sorted(
            (sorted((remaining[i] for i in b), key=order.__getitem__) for b in packing.bins),
            key=lambda w: min((rules.weight[r], order[r]) for r in w),
        )
        greedy = [(wave, _reasons(rules, wave, groups[n + 1 :], len(groups))) for n, wave in enumerate(groups)]
    for wave, deferred in greedy:
        waves.append(rules.wave(len(waves) + 1, sorted(wave, key=order.__getitem__), False, deferred))
    return Plan(
        app=fleet.app.name,
        waves=tuple(waves),
        skipped=tuple(n for n in names if n not in wanted),
        fewest=_fewest(rules, packing.lower_bound, len(greedy), packing.proven, bool(canary)) if remaining else "",
    )


def _first_fit(rules: _Rules, remaining: list[str]) -> list[tuple[list[str], list[str]]]:
    """Waves by first-fit over `remaining` (lightest first), each with why later regions wait."""
    waves = []
    while remaining:
        wave: list[str] = []
        deferred: list[str] = []
        for region in remaining:
            reason = rules.why_not(wave, region)
            if reason is None:
                wave.append(region)
            else:
                deferred.append(reason)
        remaining = [r for r in remaining if r not in wave]
        waves.append((wave, deferred))
    return waves


def _reasons(rules: _Rules, wave: list[str], later: list[list[str]], count: int) -> list[str]:
    """Why each region of a later wave is not in `wave`."""
    lightest = sorted((r for w in later for r in w), key=lambda r: rules.weight[r])
    return [
        rules.why_not(wave, r)
        or f"{r} waits: it fits here too, but moving it would not save a wave ({count} is the fewest)"
        for r in lightest
    ]


def _fewest(rules: _Rules, bound: int, waves: int, proven: bool, canary: bool) -> str:
    after = " after the canary" if canary else ""
    if waves <= bound:
        return (
            f"{waves} wave(s){after} is the fewest possible: a wave takes at most {rules.wave_size} region(s)"
            f" and {rules.fleet.rollout.max_drain_share:.0%} of the weight, and pairs never share one"
        )
    if proven:
        return f"{waves} wave(s){after} is the fewest possible (an exhaustive search found no plan with fewer)"
    return f"{waves} wave(s){after}: the search for a plan with fewer stopped at its budget (at least {bound} needed)"
