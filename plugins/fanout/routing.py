"""Routing-aware drain policy: where a drained region's traffic goes, per routing method. Pure.

Traffic Manager is DNS: draining a region (disabling its endpoint) changes new answers only, and
which endpoint takes its users depends on the profile's routing method:

- Weighted: the other enabled endpoints, in proportion to their weights;
- Priority: everything the drained endpoint answered moves to the next enabled priority;
- Performance: each location's users move to their next-closest enabled region;
- Geographic: no failover inside the profile; a geography whose only answer is drained gets none,
  unless it is mapped to a nested endpoint (`traffic_manager.nested`): its child profile (Priority)
  answers with the first region not drained, for as long as at least `min_child_endpoints` of the
  child's regions are not drained (below that the nested endpoint is Degraded: no answer).
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
    """The region a user with this geography path gets; None when its mapping has no answer left."""
    out = set(out)
    for code in reversed(list(geography)):
        for region in fleet.regions:
            if code in region.endpoint.geo_mapping:
                return None if region.name in out else region.name
        for nested in fleet.traffic_manager.nested:
            if code in nested.geo_mapping:
                left = [r for r in nested.regions if r not in out]
                return left[0] if len(left) >= nested.min_child_endpoints else None
    return None


def orphaned_geographies(fleet: Fleet, drained: Iterable[str]) -> list[str]:
    """Geography codes with no answer while `drained` is out: mapped to a drained region, or to a
    nested endpoint whose child keeps fewer than min_child_endpoints regions."""
    drained = set(drained)
    lost = [code for r in fleet.regions if r.name in drained for code in r.endpoint.geo_mapping]
    for nested in fleet.traffic_manager.nested:
        if len([r for r in nested.regions if r not in drained]) < nested.min_child_endpoints:
            lost += nested.geo_mapping
    return sorted(lost)


def fallbacks(fleet: Fleet, drained: Iterable[str]) -> list[str]:
    """Per nested endpoint a drain moves off its primary: which region answers its geographies now."""
    drained, lines = set(drained), []
    for nested in fleet.traffic_manager.nested:
        left = [r for r in nested.regions if r not in drained]
        if nested.regions[0] in drained and len(left) >= nested.min_child_endpoints:
            lines.append(
                f"{', '.join(nested.geo_mapping)} via nested '{nested.endpoint}' answered by fallback {left[0]}"
            )
    return lines


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
                f"{', '.join(lost)} with no answer: Geographic routing does not fail over"
                + _why_nested_fails(fleet, drained)
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


def _why_nested_fails(fleet: Fleet, drained: list[str]) -> str:
    """The end of check_wave's refusal: which nested endpoints run short, or how to avoid it."""
    short = [
        f"traffic_manager.nested '{n.endpoint}' keeps {len(left)} of min_child_endpoints {n.min_child_endpoints} "
        f"({', '.join(left) or 'none'} not drained)"
        for n in fleet.traffic_manager.nested
        if len(left := [r for r in n.regions if r not in drained]) < n.min_child_endpoints
    ]
    if short:
        return "; " + "; ".join(short) + ": put the fallback in another wave or add one"
    return "; map them to a nested endpoint with a fallback region (traffic_manager.nested)"


def explain_waves(fleet: Fleet, waves: Iterable[Iterable[str]]) -> str:
    """Per wave, where users go while it runs (printed after the plan)."""
    method = fleet.traffic_manager.routing_method
    lines = [f"Traffic while each wave is drained ({method} routing):"]
    for number, wave in enumerate(waves, start=1):
        shares = traffic_shares(fleet, wave)
        goes = ", ".join(f"{r} {s:.0%}" for r, s in shares.items() if s > 0) or "nobody"
        lines.append(f"  wave {number}: {goes}")
        if method == "Geographic":
            lines += [f"      {line}" for line in fallbacks(fleet, wave)]
            if lost := orphaned_geographies(fleet, wave):
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
        if tm.profile not in fleet.endpoint_profiles(region.name):
            continue  # it lives in child profiles only: nested_mismatches looks there
        live = endpoint_types.get(region.endpoint.name)
        if live is None:
            problems.append(
                f"regions[{i}].endpoint.name: '{region.endpoint.name}' is not an endpoint of '{tm.profile}'"
            )
        elif live != region.endpoint.type:
            problems.append(f"regions[{i}].endpoint.type: the file says {region.endpoint.type}, the profile has {live}")
    return problems


@dataclass(frozen=True)
class LiveEndpoint:
    """What validate compares of one live endpoint (plain data the adapter reads)."""

    type: str
    priority: int | None = None
    geo_mapping: tuple[str, ...] = ()
    target_resource_id: str | None = None
    min_child_endpoints: int | None = None


@dataclass(frozen=True)
class LiveProfile:
    routing_method: str | None
    endpoints: Mapping[str, LiveEndpoint]


def nested_mismatches(
    fleet: Fleet, parent: Mapping[str, LiveEndpoint], children: Mapping[str, LiveProfile | None]
) -> list[str]:
    """How the live nested endpoints and child profiles disagree with `traffic_manager.nested`.
    `parent` is the parent profile's endpoints by name; `children` each child profile by name (None:
    there is no such profile)."""
    tm, problems = fleet.traffic_manager, []
    lower = {name.lower(): ep for name, ep in parent.items()}
    for i, nested in enumerate(tm.nested):
        where = f"traffic_manager.nested[{i}]"
        link = lower.get(nested.endpoint.lower())
        if link is None:
            problems.append(f"{where}.endpoint: '{nested.endpoint}' is not an endpoint of '{tm.profile}'")
        elif link.type != "NestedEndpoints":
            problems.append(
                f"{where}.endpoint: '{nested.endpoint}' is {link.type} in '{tm.profile}', not NestedEndpoints"
            )
        else:
            target = (link.target_resource_id or "").rstrip("/").rsplit("/", 1)[-1]
            if target.lower() != nested.profile.lower():
                problems.append(
                    f"{where}.profile: the file says {nested.profile}, nested endpoint '{nested.endpoint}' targets "
                    f"{link.target_resource_id or 'nothing'}"
                )
            if (link.min_child_endpoints or 1) != nested.min_child_endpoints:
                problems.append(
                    f"{where}.min_child_endpoints: the file says {nested.min_child_endpoints}, '{nested.endpoint}' "
                    f"has {link.min_child_endpoints or 1}"
                )
            if sorted(link.geo_mapping) != sorted(nested.geo_mapping):
                problems.append(
                    f"{where}.geo_mapping: the file says {', '.join(nested.geo_mapping)}, '{nested.endpoint}' maps "
                    f"{', '.join(link.geo_mapping) or 'nothing'}"
                )
        child = children.get(nested.profile)
        if child is None:
            problems.append(
                f"{where}.profile: there is no profile '{nested.profile}' in resource group '{tm.resource_group}'"
            )
            continue
        if child.routing_method != "Priority":
            problems.append(
                f"{where}.profile: '{nested.profile}' routes {child.routing_method}; a child profile routes "
                "Priority (regions in the file's order)"
            )
        found = {name.lower(): ep for name, ep in child.endpoints.items()}
        priorities = {}
        for j, region in enumerate(nested.regions):
            name = fleet.region(region).endpoint.name
            live = found.get(name.lower())
            if live is None:
                problems.append(f"{where}.regions[{j}]: '{nested.profile}' has no endpoint '{name}' for {region}")
            else:
                priorities[region] = live.priority or 1000
        ordered = sorted(priorities, key=lambda r: priorities[r])
        if ordered != [r for r in nested.regions if r in priorities]:
            problems.append(
                f"{where}.regions: the file lists {', '.join(nested.regions)}, '{nested.profile}' prioritises "
                f"{', '.join(ordered)}"
            )
    return problems
