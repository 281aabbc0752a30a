"""`fanout status`: the matrix assembled from plain data, printed as a table and as JSON, and the
command against a played Airflow REST API (httpx.MockTransport) with live facts handed in."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import httpx

from fanout import names, status
from fanout.cli import build_parser
from fanout.status_cli import run
from tests.fakes import LOCAL

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NEW, OLD = "sha256:" + "a" * 64, "sha256:" + "b" * 64
SHA = "1" * 40
REGIONS = [("eastus", "westus"), ("westus", "eastus"), ("northeurope", "westeurope"), ("westeurope", "northeurope")]
WAVES = [["westus"], ["eastus", "northeurope"], ["westeurope"]]


def deployment(digest: str = NEW, available: int = 2) -> dict:
    return {"digest": digest, "git_sha": SHA, "source_ref": "main", "replicas": 2, "available": available}


def endpoint(enabled: bool = True, weight: int = 100, monitor: str = "Online") -> dict:
    return {"enabled": enabled, "weight": weight, "monitor_status": monitor}


LIVE = {
    "eastus": status.live_region(deployment(), (4, "deployed"), endpoint()),
    "westus": status.live_region(deployment(OLD, 1), (3, "failed"), endpoint(False, 100, "Disabled")),
    "northeurope": status.live_region(None, None, endpoint(), {"cluster": "cluster unreachable", "helm": "timeout"}),
    "westeurope": status.live_region(deployment(), (2, "deployed"), None, {"traffic": "Traffic Manager: 503"}),
}
REPORT = {
    "checked_at": (NOW - timedelta(minutes=5)).isoformat(),
    "desired": {"digest": NEW, "git_sha": SHA, "run_id": "merge__1"},
    "message": "2 in-sync, 1 stale, 1 unreachable",
    "regions": {
        "eastus": {"state": "in-sync", "since": (NOW - timedelta(hours=2)).isoformat(), "detail": "runs …"},
        "westus": {"state": "stale", "since": (NOW - timedelta(minutes=5)).isoformat(), "detail": "rolled back"},
        "northeurope": {"state": "unreachable", "since": (NOW - timedelta(minutes=20)).isoformat(), "detail": "…"},
        "westeurope": {"state": "in-sync", "since": (NOW - timedelta(hours=2)).isoformat(), "detail": "runs …"},
    },
}
RUNS = [  # newest first, as Airflow lists them
    {"dag_run_id": "dry", "state": "success", "conf": {"dry_run": True}, "start_date": "t4"},
    {"dag_run_id": "repair__x", "state": "failed", "conf": {"regions": ["westus"]}, "start_date": "t3"},
    {"dag_run_id": "merge__1", "state": "success", "conf": {"git_sha": SHA}, "start_date": "t2"},
]


def test_each_region_gets_its_last_release_run_and_dry_runs_do_not_count():
    found = status.last_runs(["westus", "eastus", "nowhere"], RUNS)
    assert found["westus"] == {"run_id": "repair__x", "state": "failed", "at": "t3"}
    assert found["eastus"]["run_id"] == "merge__1"
    assert status.last_runs(["eastus"], [])["eastus"] is None


def test_rows_join_live_reads_the_report_and_the_runs_in_fleet_order():
    rows = status.status_rows(REGIONS, WAVES, LIVE, REPORT, status.last_runs([r for r, _ in REGIONS], RUNS))
    assert [r["region"] for r in rows] == ["eastus", "westus", "northeurope", "westeurope"]
    east, west, north, weu = rows
    assert (east["pair"], east["wave"], east["running"], east["commit"]) == ("westus", 2, NEW, SHA)
    assert east["helm"] == {"revision": 4, "status": "deployed"} and east["ready"] == {"ready": 2, "desired": 2}
    assert east["endpoint"] == {"status": "Enabled", "weight": 100, "monitor": "Online"}
    assert (east["state"], east["since"], east["last_run"]["run_id"]) == (
        "in-sync",
        REPORT["regions"]["eastus"]["since"],
        "merge__1",
    )
    assert (west["running"], west["ready"], west["endpoint"]["status"], west["state"]) == (
        OLD,
        {"ready": 1, "desired": 2},
        "Disabled",
        "stale",
    )
    assert west["last_run"] == {"run_id": "repair__x", "state": "failed", "at": "t3"}
    assert north["running"] is None and north["errors"] == {"cluster": "cluster unreachable", "helm": "timeout"}
    assert weu["endpoint"] is None and weu["errors"] == {"traffic": "Traffic Manager: 503"}


def test_the_table_says_what_could_not_be_read_instead_of_guessing():
    rows = status.status_rows(REGIONS, WAVES, LIVE, REPORT, status.last_runs([r for r, _ in REGIONS], RUNS))
    text = status.table(rows, now=NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["region", "pair", "wave", "running", "commit", "helm", "ready", "endpoint", "weight",
                                "monitor", "state", "for", "last", "release", "run"]  # fmt: skip
    east = lines[1].split()
    assert east == ["eastus", "westus", "2", NEW[:19], SHA[:12], "rev", "4", "deployed", "2/2", "Enabled", "100",
                    "Online", "in-sync", "2h00m", "merge__1", "success"]  # fmt: skip
    assert lines[2].split()[3:10] == [OLD[:19], SHA[:12], "rev", "3", "failed", "1/2", "Disabled"]
    north = lines[3].split()
    assert north[3:7] == ["?", "?", "?", "?"] and north[7:10] == ["Enabled", "100", "Online"]
    assert lines[4].split()[8:12] == ["2/2", "?", "?", "?"]
    assert "northeurope: cluster: cluster unreachable" in lines and "westeurope: traffic: Traffic Manager: 503" in lines


def test_without_a_report_or_live_reads_the_columns_are_unknown():
    rows = status.status_rows(REGIONS, WAVES, None, None, None)
    line = status.table(rows, live=False).splitlines()[1].split()
    assert line[:3] == ["eastus", "westus", "2"] and line[3:] == ["?"] * 8 + ["-", "-"]
    assert status.heading("hello", "f.yaml", None, None, NOW) == [
        "hello (f.yaml): no release recorded (or Airflow not read)",
        "no consistency report read: the state column is unknown",
    ]
    head = status.heading("hello", "f.yaml", None, REPORT, NOW)
    assert head[0] == f"hello (f.yaml): last release {NEW[:19]} (git {SHA[:12]}, run merge__1)"
    assert head[1].startswith(f"consistency checked {REPORT['checked_at']} (5m00s ago): 2 in-sync")
    newer = {"digest": OLD, "git_sha": "2" * 40, "run_id": "merge__2"}
    assert status.heading("hello", "f.yaml", newer, REPORT, NOW)[0].endswith(
        f"{OLD[:19]} (git 222222222222, run merge__2)"
    )


def event(**changes) -> dict:
    extra = {"app": "hello", "digest": NEW, "git_sha": SHA, "source_ref": "main", "run_id": "merge__1",
             "regions": ["eastus"], "held_back": {}}  # fmt: skip
    return {"source_dag_id": "release_hello", "source_task_id": "record", "timestamp": "T", "extra": extra} | changes


def test_only_events_the_release_dag_recorded_for_the_app_are_releases():
    forged = event(source_dag_id=None, source_task_id=None, extra={**event()["extra"], "from_rest_api": True})
    other = event(extra={**event()["extra"], "app": "storefront"})
    [found] = status.releases("hello", [forged, other, event(extra={**event()["extra"], "digest": "latest"}), event()])
    assert found == {"digest": NEW, "git_sha": SHA, "source_ref": "main", "run_id": "merge__1", "regions": ["eastus"],
                     "held_back": {}, "recorded_at": "T"}  # fmt: skip
    assert status.releases("hello", [forged]) == []


# -- the command -------------------------------------------------------------------------


class FakeAirflow:
    """The reads `fanout status` makes: release events and runs, consistency runs, the classify XCom."""

    def __init__(self, report: dict | None = REPORT, release_dag: bool = True) -> None:
        self.report, self.release_dag, self.requests = report, release_dag, []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        path = request.url.path
        if path == "/api/v2/assets/events":
            assert dict(request.url.params) == {"source_dag_id": "release_hello", "source_task_id": "record",
                                                "order_by": "-timestamp", "limit": "5"}  # fmt: skip
            newer = event(extra={**event()["extra"], "digest": OLD, "run_id": "merge__2"})
            return httpx.Response(200, json={"asset_events": [newer] if self.release_dag else [], "total_entries": 1})
        if path == f"/api/v2/dags/{names.release_dag('hello')}/dagRuns":
            if not self.release_dag:
                return httpx.Response(404, json={"detail": "not found"})
            assert request.url.params["order_by"] == "-run_after"
            return httpx.Response(200, json={"dag_runs": RUNS, "total_entries": len(RUNS)})
        if path == f"/api/v2/dags/{names.consistency_dag('hello')}/dagRuns":
            runs = [{"dag_run_id": "running"}, {"dag_run_id": "done"}]
            return httpx.Response(200, json={"dag_runs": runs, "total_entries": 2})
        if path.endswith("/dagRuns/done/taskInstances/classify/xcomEntries/return_value") and self.report:
            return httpx.Response(200, json={"key": "return_value", "value": self.report})
        return httpx.Response(404, json={"detail": "not found"})


def status_command(argv: list[str], airflow: FakeAirflow, live=None) -> tuple[int, str, str]:
    args = build_parser().parse_args(["status", str(LOCAL), *argv])
    out, err = io.StringIO(), io.StringIO()
    env = {"FANOUT_AIRFLOW_URL": "http://127.0.0.1:8080", "FANOUT_AIRFLOW_TOKEN": "t0ken"}
    reader = (lambda fleet: live) if live is not None else None
    code = run(args, env=env, transport=httpx.MockTransport(airflow.handle), read_live=reader, stdout=out,
               stderr=err, now=lambda: NOW)  # fmt: skip
    return code, out.getvalue(), err.getvalue()


def test_status_prints_the_matrix_from_airflow_and_live_reads():
    airflow = FakeAirflow()
    code, out, err = status_command([], airflow, LIVE)
    assert code == 0 and err == "", err
    # The last release is the newest recorded event, even before a consistency check has seen it.
    assert out.splitlines()[0] == f"hello ({LOCAL}): last release {OLD[:19]} (git {SHA[:12]}, run merge__2)"
    assert any(line.split()[:2] == ["westus", "eastus"] and "repair__x" in line for line in out.splitlines())
    # One read of each kind, never one per region.
    assert sorted(airflow.requests) == sorted([
        "GET /api/v2/assets/events", "GET /api/v2/dags/release_hello/dagRuns",
        "GET /api/v2/dags/fleet_consistency_hello/dagRuns",
        "GET /api/v2/dags/fleet_consistency_hello/dagRuns/running/taskInstances/classify/xcomEntries/return_value",
        "GET /api/v2/dags/fleet_consistency_hello/dagRuns/done/taskInstances/classify/xcomEntries/return_value",
    ])  # fmt: skip


def test_status_json_is_one_object_for_scripts():
    code, out, _ = status_command(["--json"], FakeAirflow(), LIVE)
    document = json.loads(out)
    assert code == 0 and document["app"] == "hello" and document["release"]["digest"] == OLD
    assert document["consistency"]["checked_at"] == REPORT["checked_at"] and document["problems"] == []
    by_region = {r["region"]: r for r in document["regions"]}
    assert by_region["westus"]["state"] == "stale" and by_region["westus"]["helm"] == {
        "revision": 3,
        "status": "failed",
    }
    assert by_region["northeurope"]["errors"]["cluster"] == "cluster unreachable"


def test_status_without_airflow_still_shows_the_live_columns_and_says_why():
    code, out, err = status_command(["--json"], FakeAirflow(release_dag=False, report=None), LIVE)
    document = json.loads(out)
    assert code == 0 and document["release"] is None and document["consistency"] is None
    assert document["regions"][0]["running"] == NEW and document["regions"][0]["state"] is None
    args = build_parser().parse_args(["status", str(LOCAL), "--airflow-url", "http://127.0.0.1:1", "--no-live"])
    out, err = io.StringIO(), io.StringIO()
    assert run(args, env={}, stdout=out, stderr=err, now=lambda: NOW) == 0
    assert "fanout status: Airflow: " in err.getvalue() and "connection refused" in err.getvalue()
    assert out.getvalue().splitlines()[3].split()[3:] == ["?"] * 8 + ["-", "-"]


def test_status_refuses_a_bad_fleet_file_naming_it(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("app: {name: Hello}\n")
    args = build_parser().parse_args(["status", str(bad)])
    err = io.StringIO()
    assert run(args, env={}, stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith(f"{bad}: ")
