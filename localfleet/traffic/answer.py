"""Which endpoint Traffic Manager answers a DNS query with: pure, over the stand-in's live view.

As Azure does it: only Enabled endpoints are candidates, and of those the ones the monitor sees
Online; when no enabled endpoint is Online every enabled one is (Traffic Manager "fails open"
rather than answer nothing). Then the routing method picks one:

- Weighted: at random, in proportion to the weights;
- Priority: the lowest priority number;
- Performance: the lowest latency from the user's location (its latency table) to the
  endpoint's location, ties by name;
- Geographic: the endpoint whose mapping holds the user's most specific geography code
  (traversal from the narrowest code up to WORLD). A Geographic profile does not fail over: if
  that endpoint is disabled or not Online the answer is empty (NODATA), which is why Azure
  recommends nested profiles there, and why Fanout refuses to drain a geography's only answer.

A NestedEndpoints endpoint (`kind`) carries its child profile's view (`child`); its monitor status
is the child's (Online while at least minChildEndpoints child endpoints are). Chosen, it answers
with what the child profile chooses, in one step (Traffic Manager walks the hierarchy itself and
returns one record, with the parent's TTL).

No endpoint enabled at all is NXDOMAIN (`None`); an empty list is NODATA.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Where:
    """A user's location, as the DNS server sees it from the query's source address."""

    name: str = "anywhere"
    geography: tuple[str, ...] = ("WORLD",)  # broadest first
    latency_ms: Mapping[str, float] = field(default_factory=dict)


def candidates(endpoints: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Enabled endpoints the monitor sees Online; all enabled ones when none is Online."""
    enabled = [ep for ep in endpoints if ep.get("endpointStatus") == "Enabled"]
    online = [ep for ep in enabled if ep.get("monitor") == "Online"]
    return online or enabled


def choose(view: Mapping[str, Any], where: Where, rng: random.Random | None = None) -> list[Mapping[str, Any]] | None:
    """The endpoint(s) answered for a user at `where` (one, or none), None for NXDOMAIN."""
    endpoints = view["endpoints"]
    if not view.get("enabled", True) or not any(ep.get("endpointStatus") == "Enabled" for ep in endpoints):
        return None
    return _through(_pick(view, where, rng), where, rng)


def _through(chosen: list[Mapping[str, Any]], where: Where, rng: random.Random | None) -> list[Mapping[str, Any]]:
    """A chosen nested endpoint answers with its child profile's choice (NODATA if it has none)."""
    if chosen and chosen[0].get("kind") == "NestedEndpoints":
        return choose(chosen[0]["child"], where, rng) or [] if "child" in chosen[0] else []
    return chosen


def _pick(view: Mapping[str, Any], where: Where, rng: random.Random | None) -> list[Mapping[str, Any]]:
    endpoints, method = view["endpoints"], view["routing_method"]
    if method == "Geographic":
        for code in reversed(where.geography):
            mapped = [ep for ep in endpoints if code in (ep.get("geoMapping") or [])]
            if mapped:
                ep = mapped[0]
                ok = ep.get("endpointStatus") == "Enabled" and ep.get("monitor") in ("Online", "CheckingEndpoint")
                return [ep] if ok else []
        return []
    pool = candidates(endpoints)
    if method == "Priority":
        return [min(pool, key=lambda ep: (ep.get("priority") or 1000, ep["name"]))]
    if method == "Performance":
        far = float("inf")
        return [
            min(pool, key=lambda ep: (where.latency_ms.get(ep.get("endpointLocation") or ep["name"], far), ep["name"]))
        ]
    if method == "Weighted":
        rng = rng or random
        return [rng.choices(pool, weights=[ep.get("weight") or 1 for ep in pool])[0]]
    raise ValueError(f"routing method {method!r} is not one this stand-in answers")
