"""The wave planner: fleet + target regions -> ordered waves, with the reasons.

Rules, in the order they are checked:
- the canary region(s) form the first wave;
- the two regions of a pair are never in the same wave;
- a wave holds at most `rollout.max_regions_per_wave` regions;
- a wave drains at most `rollout.max_drain_share` of the fleet's total endpoint weight;
- at least `min_serving_regions` regions stay enabled while a wave is drained.
After the canary, lighter regions go first (Azure's safe deployment order: pilot,
light, heavy), ties broken by their order in the fleet file, so a plan is a pure
function of its input. A region that fits no wave even on its own makes the plan
impossible; any other set of regions can always be planned, one region per wave
at worst, so first-fit never misses a plan that exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fanout.fleet import Fleet

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
        if self.skipped:
            lines.append(f"  not in this run: {', '.join(self.skipped)}")
        return "\n".join(lines)


class _Rules:
    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.weight = {r.name: r.endpoint.weight for r in fleet.regions}
        self.pair = {r.name: r.pair for r in fleet.regions}
        self.total = fleet.total_weight
        self.size = len(fleet.regions)
        self.max_weight = fleet.rollout.max_drain_share * self.total + _EPS
        self.max_regions = fleet.rollout.max_regions_per_wave
        self.min_serving = fleet.min_serving_regions

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
        waves.append(rules.wave(len(waves) + 1, sorted(wave, key=order.__getitem__), False, deferred))
    return Plan(app=fleet.app.name, waves=tuple(waves), skipped=tuple(n for n in names if n not in wanted))
