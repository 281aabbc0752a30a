"""`python -m fanout`: the command line for people (validate a fleet file, print a plan)."""

from __future__ import annotations

import argparse
import sys

from fanout.fleet import FleetError, load_fleet
from fanout.planner import PlanError, plan_waves


def _regions(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check a fleet file; one line per problem")
    validate.add_argument("fleet", help="path to a fleet YAML file")
    plan = sub.add_parser("plan", help="print the waves a release would take, and why")
    plan.add_argument("fleet", help="path to a fleet YAML file")
    plan.add_argument("--regions", type=_regions, help="comma-separated subset of regions (default: all)")
    args = parser.parse_args(argv)

    try:
        fleet = load_fleet(args.fleet)
        if args.command == "validate":
            print(f"{args.fleet}: ok — app {fleet.app.name}, {len(fleet.regions)} regions")
            return 0
        print(plan_waves(fleet, args.regions).explain())
        return 0
    except FleetError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    except PlanError as err:
        print(f"{args.fleet}: {err}", file=sys.stderr)
        return 3
