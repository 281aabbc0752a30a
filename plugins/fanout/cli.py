"""`python -m fanout`: the command line for people and CI (validate a fleet file, print a plan,
trigger a release on a running Airflow, freeze an app or quarantine a build, list who did, show
the fleet matrix).

The fleet and planner modules (pydantic, PyYAML) are imported only by the commands that use them,
so `fanout trigger` runs in CI with nothing but httpx installed and `PYTHONPATH=plugins`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime


def _regions(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def build_parser() -> argparse.ArgumentParser:
    from fanout import controls_cli, trigger

    parser = argparse.ArgumentParser(prog="fanout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check a fleet file; one line per problem")
    validate.add_argument("fleet", help="path to a fleet YAML file")
    plan = sub.add_parser("plan", help="print the waves a release would take, and why")
    plan.add_argument("fleet", help="path to a fleet YAML file")
    plan.add_argument("--regions", type=_regions, help="comma-separated subset of regions (default: all)")
    trigger.add_arguments(
        sub.add_parser(
            "trigger",
            help="start a release run on a running Airflow (from CI, once per merge); --wait follows it",
            description=trigger.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    controls_cli.add_arguments(sub)
    # Declared here, not in fanout.status_cli: that module needs the fleet model, which `trigger` must not import.
    status = sub.add_parser(
        "status",
        help="the fleet matrix: what each region runs and serves, its consistency class, its last release run",
        description="One row per region: pair, wave, running digest and commit, Helm revision and status, ready "
        "replicas, Traffic Manager endpoint / weight / monitor, consistency class and since when, last release run.",
    )
    status.add_argument("fleet", help="path to the fleet YAML file")
    status.add_argument("--json", action="store_true", help="print JSON (one object; `regions` holds the rows)")
    status.add_argument(
        "--airflow-url", help=f"Airflow's base URL (default: ${trigger.ENV_URL} or {trigger.DEFAULT_URL})"
    )
    status.add_argument("--no-airflow", action="store_true", help="skip what Airflow recorded (live reads only)")
    status.add_argument("--no-live", action="store_true", help="skip the live reads (what Airflow recorded only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "trigger":
        from fanout.trigger import run

        return run(args)
    if args.command == "status":
        from fanout import status_cli

        return status_cli.run(args)
    from fanout import controls_cli

    if args.command in controls_cli.COMMANDS:
        return controls_cli.run(args)

    from fanout.fleet import FleetError, load_fleet
    from fanout.planner import PlanError, plan_waves
    from fanout.routing import RoutingError, check_wave, explain_waves
    from fanout.windows import explain_windows

    try:
        fleet = load_fleet(args.fleet)
        plan = plan_waves(fleet, None if args.command == "validate" else args.regions)
        if args.command == "validate":
            # The release DAG is built from the full plan: a fleet without one would not even parse.
            print(f"{args.fleet}: ok — app {fleet.app.name}, {len(fleet.regions)} regions, {len(plan.waves)} waves")
            return 0
        print(plan.explain())
        print(explain_waves(fleet, [w.regions for w in plan.waves]))
        windows = {r.name: r.deploy_window.window for r in fleet.regions if r.deploy_window}
        if explained := explain_windows(windows, [w.regions for w in plan.waves], datetime.now(UTC)):
            print(explained)
        for wave in plan.waves:
            check_wave(fleet, wave.regions)
        return 0
    except FleetError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    except (PlanError, RoutingError) as err:
        print(f"{args.fleet}: {err}", file=sys.stderr)
        return 3
