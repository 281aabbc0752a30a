"""`python -m localfleet.bench_planner`: how long the planner takes on large generated fleets.

Prints, per rule set, the slowest of several random 200-region fleets (pairs, weights 1..1000):
seconds, waves and whether the fewest was proven. A figure, not a timed test: the machine
this runs on may be loaded.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from fanout.fleet import parse_fleet
from fanout.planner import plan_waves

RULES = [  # (max_regions_per_wave, max_drain_share, min_serving_regions)
    (2, 0.35, 4),
    (3, 0.1, 4),
    (4, 0.05, 10),
    (6, 0.05, 10),
    (10, 0.1, 100),
    (20, 0.2, 50),
    # the weight limit binds: bin packing proper
    (8, 0.02, 10),
    (5, 0.015, 4),
    (4, 0.01, 4),
    (3, 0.008, 4),
]


def fleet_data(n: int, rng: random.Random, per_wave: int, share: float, min_serving: int) -> dict[str, Any]:
    """A valid Azure-kind fleet of `n` regions, most of them in pairs, one canary."""
    names = [f"region{i:03d}" for i in range(n)]
    order = names[:]
    rng.shuffle(order)
    partner = {}
    for a, b in zip(order[0 : n - n // 10 : 2], order[1 : n - n // 10 : 2], strict=False):
        partner[a], partner[b] = b, a
    return {
        "app": {"name": "app", "namespace": "app", "source": ".", "chart": {"path": "c", "version": "1"}},
        "registry": {"kind": "acr", "name": "registry1", "repository": "app", "home": names[0]},
        "regions": [
            {
                "name": name,
                "pair": partner.get(name),
                "cluster": {"aks": {"subscription": "s", "resource_group": "g", "cluster": name}},
                "endpoint": {"name": name, "weight": rng.randint(1, 1000)},
                "edge_url": f"https://{name}.example.com",
            }
            for name in names
        ],
        "traffic_manager": {"kind": "azure", "subscription": "s", "resource_group": "g", "profile": "p"},
        "rollout": {"canary": [names[0]], "max_regions_per_wave": per_wave, "max_drain_share": share},
        "min_serving_regions": min_serving,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--fleets", type=int, default=10, help="random fleets per rule set")
    parser.add_argument("--only", type=int, help="run only the rule set with this index")
    args = parser.parse_args()
    print(f"planner on {args.regions}-region fleets, {args.fleets} random fleets per rule set (slowest shown)")
    print(f"{'per wave':>8} {'share':>6} {'serving':>7} | {'seconds':>7} {'waves':>5} proven")
    for per_wave, share, serving in RULES if args.only is None else [RULES[args.only]]:
        slowest = (0.0, 0, True)
        for seed in range(args.fleets):
            rng = random.Random(seed)
            data = fleet_data(args.regions, rng, per_wave, share, serving)
            # A region heavier than the share fits no wave: lighten it so every fleet has a plan.
            weights = [r["endpoint"]["weight"] for r in data["regions"]]
            cap = int(share * sum(weights) * 0.9)  # clamping lowers the total: leave room
            for region in data["regions"]:
                region["endpoint"]["weight"] = max(1, min(region["endpoint"]["weight"], cap))
            fleet = parse_fleet(data)
            started = time.perf_counter()
            plan = plan_waves(fleet)
            took = time.perf_counter() - started
            if took >= slowest[0]:
                slowest = (took, len(plan.waves), "stopped at its budget" not in plan.explain())
        took, waves, proven = slowest
        print(
            f"{per_wave:>8} {share:>6.2f} {serving:>7} | {took:7.3f} {waves:>5} {'yes' if proven else 'NO'}", flush=True
        )


if __name__ == "__main__":
    main()
