"""`fanout status FLEET`: the fleet matrix in a terminal (or `--json` for scripts), for people
without Airflow's UI. fanout.status assembles it; this module only reads.

Recorded facts come from Airflow's REST API (as `fanout trigger`: `FANOUT_AIRFLOW_URL`, a token or
user and password): the last release (the release Asset event `record` emitted), the newest
consistency report (the `classify` task's XCom) and the release runs. Live facts come through
FleetHook, the clients the tasks use: per region one Deployment read and one Helm read, and one
Traffic Manager read for every endpoint — never more. Unlike `trigger`, this needs Airflow
installed (FleetHook is an Airflow hook); an Azure fleet needs its connection where the command
runs (e.g. `AIRFLOW_CONN_AZURE_DEFAULT`), as a task would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from fanout import names, status
from fanout.drift import redact
from fanout.fleet import Fleet, FleetError, load_fleet
from fanout.planner import PlanError, plan_waves
from fanout.trigger import DEFAULT_URL, ENV_URL, EXIT_OK, EXIT_USAGE, AirflowApi, TriggerError, connect

RUNS_LOOKED_AT = 50  # release runs read to find each region's last one
EVENTS_LOOKED_AT = 5  # release events read to find the newest the release DAG itself recorded
CHECKS_LOOKED_AT = 5  # consistency runs read to find the newest with a report (the running one has none yet)

LiveReader = Callable[[Fleet], dict[str, dict[str, Any]]]


def run(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] = os.environ,
    transport: httpx.BaseTransport | None = None,
    read_live: LiveReader | None = None,
    stdout: Any = None,
    stderr: Any = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        fleet = load_fleet(args.fleet)
        waves = [list(w.regions) for w in plan_waves(fleet).waves]
    except FleetError as error:
        for line in error.problems:
            print(line, file=err)
        return EXIT_USAGE
    except PlanError as error:
        print(f"{args.fleet}: {error}", file=err)
        waves = []
    problems: list[str] = []
    release, report, runs = None, None, []
    if not args.no_airflow:
        url = args.airflow_url or env.get(ENV_URL) or DEFAULT_URL
        try:
            release, report, runs = recorded(fleet.app.name, url, env, transport)
        except TriggerError as error:
            problems.append(f"Airflow: {error}")
    if not args.no_live and read_live is None:
        _logs_to_stderr()
    live = None if args.no_live else (read_live or read_live_facts)(fleet)
    regions = [(r.name, r.pair) for r in fleet.regions]
    rows = status.status_rows(regions, waves, live, report, status.last_runs(fleet.region_names, runs))
    moment = now()
    if args.json:
        document = {
            "app": fleet.app.name,
            "fleet": str(args.fleet),
            "read_at": moment.isoformat(),
            "release": release,
            "consistency": {k: (report or {}).get(k) for k in ("checked_at", "message", "mode")} if report else None,
            "regions": rows,
            "problems": problems,
        }
        print(json.dumps(document, indent=2), file=out, flush=True)
    else:
        for line in status.heading(fleet.app.name, str(args.fleet), release, report, moment):
            print(line, file=out)
        print(status.table(rows, live=live is not None, now=moment), file=out, flush=True)
    for line in problems:
        print(f"fanout status: {line}", file=err, flush=True)
    return EXIT_OK


def recorded(
    app: str, url: str, env: Mapping[str, str], transport: httpx.BaseTransport | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[dict[str, Any]]]:
    """(the last release, the newest consistency report, the release runs newest first) as Airflow
    recorded them."""
    api = connect(url, env, transport=transport)
    try:
        release = next(iter(api.release_events(app, EVENTS_LOOKED_AT)), None)
        runs = api.dag_runs(names.release_dag(app), RUNS_LOOKED_AT, missing_ok=True)
        return release, consistency_report(api, app), runs
    finally:
        api.close()


def consistency_report(api: AirflowApi, app: str) -> dict[str, Any] | None:
    """The newest consistency report: the `classify` task's return value of the newest check that has one."""
    for check in api.dag_runs(names.consistency_dag(app), CHECKS_LOOKED_AT, missing_ok=True):
        value = api.xcom(names.consistency_dag(app), check["dag_run_id"], names.CLASSIFY, "return_value")
        if isinstance(value, dict) and "regions" in value:
            return value
    return None


def read_live_facts(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Each region's Deployment and Helm release, and every endpoint in one Traffic Manager read."""
    from fanout.airflow.hooks import FleetHook
    from fanout.policy import deployment_facts

    app, hook = fleet.app, FleetHook(fleet)
    try:
        endpoints, traffic_error = None, None
        try:
            endpoints = hook.traffic_manager().endpoints()
        except Exception as error:  # Traffic Manager down: every row's traffic columns say why
            traffic_error = failure_text(error)
        live = {}
        for region in fleet.regions:
            errors: dict[str, str] = {}
            deployment = helm = endpoint = None
            try:
                deployment = deployment_facts(hook.cluster(region.name).deployment(app.namespace, app.name))
            except Exception as error:  # an unreachable cluster is a finding, not a crash
                errors["cluster"] = failure_text(error)
            try:
                current = hook.helm(region.name).current(app.name, app.namespace)
                helm = (current.revision, current.status) if current else None
            except Exception as error:
                errors["helm"] = failure_text(error)
            if endpoints is not None:
                state = endpoints.get(region.endpoint.name)
                if state is None:
                    errors["traffic"] = f"Traffic Manager has no endpoint {region.endpoint.name!r}"
                else:
                    endpoint = {"enabled": state.enabled, "weight": state.weight,
                                "monitor_status": state.monitor_status}  # fmt: skip
            elif traffic_error:
                errors["traffic"] = traffic_error
            live[region.name] = status.live_region(deployment, helm, endpoint, errors)
        return live
    finally:
        hook.close()


def _logs_to_stderr() -> None:
    """Importing Airflow logs to stdout at INFO, and the Azure SDK logs every request: stdout is the
    matrix (`--json` is parsed by scripts), so logs go to stderr, and the SDK's only when they warn."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)


def failure_text(error: Exception) -> str:
    """What a failed read says, redacted and short enough for a table's footnote or a page."""
    return redact(str(error) or type(error).__name__, limit=200) or type(error).__name__
