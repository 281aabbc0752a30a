"""The Fanout page: a FastAPI app the api-server mounts at /fanout (fanout_plugin.FanoutPlugin),
shown inside Airflow's UI as an external view.

    GET /fanout/               the fleets, one link each (a single fleet: its page)
    GET /fanout/<app>          the page: HTML with a little JavaScript that polls …
    GET /fanout/<app>/data     … this JSON (fanout.page.document)

Airflow does not protect a plugin's app: every route here asks Airflow's own security dependency
for the user (the UI's session cookie or a bearer token, as the REST API does) and the fleet's
routes ask the auth manager whether that user may read the release DAG. Recorded facts are read
through Airflow's REST API as that user (a short-lived token the auth manager signs for them), so
the page shows no more than the user could read there. Live facts are read as `fanout status` reads
them, and cached for less than one refresh: however many people watch, a refresh costs at most one
read per region and system.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from fanout import names, page, status_cli
from fanout.fleet import Fleet, FleetError, load_fleet
from fanout.planner import PlanError, plan_waves
from fanout.trigger import AirflowApi, TriggerError

PREFIX = "/fanout"  # where fanout_plugin mounts this app
REFRESH_SECONDS = 5
LIVE_SECONDS = 4.0  # under one refresh: the next refresh after a change reads it anew
RECORDED_SECONDS = 3.0
EVENTS_READ = 50  # release events read for the history
TEMPLATE = Path(__file__).with_name("page.html")

# The Azure SDK logs each request at INFO: every refresh would put lines in the api-server's log.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

LiveReader = Callable[[Fleet], dict[str, dict[str, Any]]]
ApiFactory = Callable[[BaseUser], AirflowApi]


class Cache:
    """Values by key for `seconds`; concurrent askers of a stale key wait for one read, not one each."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._values: dict[Any, tuple[float, Any]] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Any, read: Callable[[], Any]) -> Any:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            kept = self._values.get(key)
            if kept is not None and self.clock() - kept[0] < self.seconds:
                return kept[1]
            value = read()
            self._values[key] = (self.clock(), value)
            return value


def fleets() -> dict[str, Path]:
    """The fleets the DAGs are built from (FANOUT_FLEETS), by app name; broken files are left out
    (the DAG list shows them)."""
    from fanout.airflow.dags import fleet_paths

    found = {}
    for path in fleet_paths():
        try:
            found.setdefault(load_fleet(path).app.name, path)
        except FleetError:
            continue
    return found


def api_as(user: BaseUser) -> AirflowApi:
    """Airflow's REST API as `user`, with a token the auth manager signs for one minute."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.configuration import conf

    url = conf.get("api", "base_url", fallback=None) or f"http://127.0.0.1:{conf.getint('api', 'port')}"
    token = get_auth_manager().generate_jwt(user, expiration_time_in_seconds=60)
    return AirflowApi(url, token=token, attempts=2, timeout=20.0)


def read_recorded(api: AirflowApi, app: str) -> dict[str, Any]:
    """What Airflow recorded: release events and runs, the consistency report, and the newest run's
    task instances and unanswered approvals."""
    dag_id = names.release_dag(app)
    runs = api.dag_runs(dag_id, status_cli.RUNS_LOOKED_AT, missing_ok=True)
    recorded: dict[str, Any] = {
        "events": api.asset_events(dag_id, names.RECORD, EVENTS_READ),
        "runs": runs,
        "report": status_cli.consistency_report(api, app),
        "task_instances": [],
        "pending": [],
    }
    if runs:
        run_id = runs[0]["dag_run_id"]
        recorded["task_instances"] = api.task_instances(dag_id, run_id)
        if runs[0].get("state") in ("queued", "running"):
            recorded["pending"] = api.hitl_details(dag_id, run_id)
    return recorded


def create_app(
    find_fleets: Callable[[], dict[str, Path]] = fleets,
    read_live: LiveReader | None = None,
    connect: ApiFactory = api_as,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    # No /docs or /openapi.json: they would answer without a user.
    app = FastAPI(title="Fanout", openapi_url=None, docs_url=None, redoc_url=None)
    live_cache, recorded_cache = Cache(LIVE_SECONDS), Cache(RECORDED_SECONDS)

    def fleet_for(app_name: str, user: GetUserDep) -> tuple[Fleet, BaseUser]:
        """The fleet of `app_name`, for a user who may read its release DAG (403 otherwise)."""
        from airflow.api_fastapi.app import get_auth_manager

        allowed = get_auth_manager().is_authorized_dag(
            method="GET", details=DagDetails(id=names.release_dag(app_name)), user=user
        )
        if not allowed:
            raise HTTPException(403, f"you may not read DAG {names.release_dag(app_name)}")
        path = find_fleets().get(app_name)
        if path is None:
            raise HTTPException(404, f"no fleet file for app {app_name!r} in FANOUT_FLEETS")
        return load_fleet(path), user

    # A default, not Annotated: this module's annotations are strings, and FastAPI resolves them
    # in the module, where a name local to create_app is not.
    readable_fleet = Depends(fleet_for)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: GetUserDep) -> Any:  # `user`: signed in, or 401
        found = sorted(find_fleets())
        base = request.scope.get("root_path", "")
        if len(found) == 1:
            return RedirectResponse(f"{base}/{found[0]}")
        links = "".join(f'<li><a href="{base}/{escape(a)}">{escape(a)}</a></li>' for a in found) or "<li>no fleet</li>"
        return HTMLResponse(f"<!doctype html><title>Fanout</title><h1>Fanout fleets</h1><ul>{links}</ul>")

    @app.get("/{app_name}", response_class=HTMLResponse)
    def fleet_page(request: Request, readable: tuple[Fleet, BaseUser] = readable_fleet) -> HTMLResponse:
        fleet, _ = readable
        html = TEMPLATE.read_text()
        data_url = f"{request.scope.get('root_path', '')}/{fleet.app.name}/data"
        fill = {"APP": fleet.app.name, "DATA_URL": data_url, "REFRESH_MS": str(REFRESH_SECONDS * 1000)}
        for key, value in fill.items():
            html = html.replace(f"{{{{{key}}}}}", value)
        return HTMLResponse(html)

    @app.get("/{app_name}/data")
    def fleet_data(readable: tuple[Fleet, BaseUser] = readable_fleet) -> dict[str, Any]:
        fleet, user = readable
        app_name, problems = fleet.app.name, []
        try:
            plan = plan_waves(fleet)
            waves = [list(w.regions) for w in plan.waves]
            canary = [r for w in plan.waves if w.canary for r in w.regions]
        except PlanError as error:
            waves, canary = [], []
            problems.append(f"plan: {error}")

        def recorded_now() -> dict[str, Any]:
            api = connect(user)
            try:
                return read_recorded(api, app_name)
            finally:
                api.close()

        try:
            # Per user: each sees what the REST API lets them read.
            recorded = recorded_cache.get((app_name, user.get_id()), recorded_now)
        except TriggerError as error:
            recorded = {}
            problems.append(f"Airflow: {error}")
        try:
            live = live_cache.get(str(fleet.source_path), lambda: (read_live or status_cli.read_live_facts)(fleet))
        except Exception as error:  # e.g. no Azure connection here: the recorded half still shows
            live = None
            problems.append(f"live reads: {status_cli.failure_text(error)}")
        regions = [(r.name, r.pair) for r in fleet.regions]
        return page.document(app_name, regions, waves, canary, recorded, live, problems, now())

    return app
