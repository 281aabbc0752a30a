"""Routing-aware drain policy: where a drained region's traffic goes, per routing method. Pure.

Traffic Manager is DNS: draining a region (disabling its endpoint) changes new answers only, and
which endpoint takes its users depends on the profile's routing method:

- Weighted: the other enabled endpoints, in proportion to their weights;
- Priority: everything the drained endpoint answered moves to the next enabled priority;
- Performance: each location's users move to their next-closest enabled region;
- Geographic: no failover inside the profile; a geography whose only answer is drained gets none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fanout.fleet import Fleet


class RoutingError(ValueError):
    """Draining these regions would leave users without an answer or without capacity."""


def settle_seconds(profile_ttl: int | None, floor: int) -> int:
    """How long resolvers may still hold an answer after a change: the live TTL, never below the floor."""
    return max(profile_ttl or 0, floor)


@dataclass(frozen=True)
class Shift:
    """Where users of one source (a region's share, or a location) go while `drained` is out."""

    source: str
    to: str | None  # None: no answer at all
    share: float  # of the fleet's traffic


def _serving(fleet: Fleet, out: Iterable[str]) -> list[str]:
    gone = set(out)
    return [r.name for r in fleet.regions if r.name not in gone and r.standby is None]


def traffic_shares(fleet: Fleet, out: Iterable[str] = ()) -> dict[str, float]:
    """The share of users each region answers while `out` is drained (standbys carry none)."""
    out = set(out)
    serving = _serving(fleet, out)
    method = fleet.traffic_manager.routing_method
    shares = dict.fromkeys(fleet.region_names, 0.0)
    if method == "Weighted":
        total = sum(fleet.region(r).endpoint.weight for r in serving) or 1
        for r in serving:
            shares[r] = fleet.region(r).endpoint.weight / total
    elif method == "Priority":
        if serving:
            shares[min(serving, key=lambda r: fleet.region(r).endpoint.priority or 1000)] = 1.0
    else:
        locations = fleet.traffic_manager.locations
        if not locations:
            return shares
        for loc in locations.values():
            if method == "Performance":
                to = min(serving, key=lambda r: loc.latency_ms.get(r, float("inf")), default=None)
            else:
                to = geographic_answer(fleet, loc.geography, out)
            if to is not None:
                shares[to] += 1 / len(locations)
    return shares


def geographic_answer(fleet: Fleet, geography: Iterable[str], out: Iterable[str] = ()) -> str | None:
    """The region a user with this geography path gets; None when its mapped region is drained."""
    out = set(out)
    for code in reversed(list(geography)):
        for region in fleet.regions:
            if code in region.endpoint.geo_mapping:
                return None if region.name in out else region.name
    return None


def orphaned_geographies(fleet: Fleet, drained: Iterable[str]) -> list[str]:
    """Geography codes mapped to a drained region: their users get no answer while it is out."""
    drained = set(drained)
    return sorted(code for r in fleet.regions if r.name in drained for code in r.endpoint.geo_mapping)


def max_share(fleet: Fleet, region: str) -> float | None:
    """The largest share of users `region` can take. `capacity_share` is its part of the fleet's
    capacity; a fleet that may lose `max_drain_share` of its regions at once is provisioned with that
    much headroom, so each region can carry capacity_share / (1 - max_drain_share) of all users."""
    capacity = fleet.region(region).capacity_share
    if capacity is None:
        return None
    headroom = 1 - fleet.rollout.max_drain_share
    return min(1.0, capacity / headroom) if headroom > 0 else 1.0


def check_wave(fleet: Fleet, drained: Iterable[str]) -> None:
    """Refuse a wave whose drain leaves users without an answer, or a region beyond its capacity."""
    drained = sorted(set(drained))
    if fleet.traffic_manager.routing_method == "Geographic":
        lost = orphaned_geographies(fleet, drained)
        if lost:
            raise RoutingError(
                f"draining {', '.join(drained)} leaves geograph{'y' if len(lost) == 1 else 'ies'} "
                f"{', '.join(lost)} with no answer: Geographic routing does not fail over; map "
                "them to a nested endpoint with a fallback region"
            )
    if not _serving(fleet, drained):
        raise RoutingError(f"draining {', '.join(drained)} leaves no region serving")
    for region, share in traffic_shares(fleet, drained).items():
        most = max_share(fleet, region)
        if most is not None and share > most + 1e-9:
            raise RoutingError(
                f"while {', '.join(drained)} {'is' if len(drained) == 1 else 'are'} drained, {region} would "
                f"take {share:.0%} of users ({fleet.traffic_manager.routing_method} routing), more than the "
                f"{most:.0%} its capacity_share {fleet.region(region).capacity_share:.0%} can carry with "
                f"rollout.max_drain_share {fleet.rollout.max_drain_share:.0%} of headroom"
            )


def explain_waves(fleet: Fleet, waves: Iterable[Iterable[str]]) -> str:
    """Per wave, where users go while it runs (printed after the plan)."""
    method = fleet.traffic_manager.routing_method
    lines = [f"Traffic while each wave is drained ({method} routing):"]
    for number, wave in enumerate(waves, start=1):
        shares = traffic_shares(fleet, wave)
        goes = ", ".join(f"{r} {s:.0%}" for r, s in shares.items() if s > 0) or "nobody"
        lines.append(f"  wave {number}: {goes}")
        if method == "Geographic" and (lost := orphaned_geographies(fleet, wave)):
            lines.append(f"      no answer for {', '.join(lost)}")
    return "\n".join(lines)


def profile_mismatches(fleet: Fleet, routing_method: str | None, endpoint_types: Mapping[str, str]) -> list[str]:
    """How the live profile disagrees with the fleet file (one line each, naming the field)."""
    tm, problems = fleet.traffic_manager, []
    if routing_method != tm.routing_method:
        problems.append(
            f"traffic_manager.routing_method: the file says {tm.routing_method}, profile '{tm.profile}' "
            f"routes {routing_method}"
        )
    for i, region in enumerate(fleet.regions):
        live = endpoint_types.get(region.endpoint.name)
        if live is None:
            problems.append(
                f"regions[{i}].endpoint.name: '{region.endpoint.name}' is not an endpoint of '{tm.profile}'"
            )
        elif live != region.endpoint.type:
            problems.append(f"regions[{i}].endpoint.type: the file says {region.endpoint.type}, the profile has {live}")
    return problems
