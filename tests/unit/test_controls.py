"""Freezes, pauses and quarantines: what their Variables mean, the validate, drain and repair that
obey them, and `fanout freeze / pause / quarantine / audit …` against a played Airflow REST API
(httpx.MockTransport)."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from fanout import names
from fanout.airflow import base
from fanout.airflow import consistency as cc
from fanout.airflow import region_steps as rs
from fanout.airflow.triggers import HoldTrigger
from fanout.cli import build_parser
from fanout.controls import Freeze, Pause, Quarantine, frozen_regions, parse_freeze, parse_pause, parse_quarantine
from fanout.controls_cli import run
from fanout.drift import repair_plan
from fanout.fleet import load_fleet
from tests.fakes import DIGEST, LOCAL, FakeHook, FakeTI, context, released, run_task, snapshot_of

FLEET = load_fleet(LOCAL)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEY = names.freeze_variable("hello")


def freeze(**kw) -> Freeze:
    return Freeze(**{"reason": "incident 42", "by": "alice", "at": NOW.isoformat(), **kw})


# -- what a freeze covers ----------------------------------------------------------------


def test_a_freeze_covers_its_regions_until_it_ends_or_is_lifted():
    everywhere, two = freeze(), freeze(regions=("eastus", "westus"))
    assert everywhere.covers("westeurope", NOW) and two.covers("eastus", NOW) and not two.covers("westeurope", NOW)
    ending = freeze(until=(NOW + timedelta(hours=1)).isoformat())
    assert ending.covers("eastus", NOW) and not ending.covers("eastus", NOW + timedelta(hours=1))
    assert parse_freeze(freeze(lifted=True).to_json()) is None and parse_freeze(None) is None
    assert parse_freeze(two.to_json()) == two
    assert two.line() == f"frozen (eastus, westus) by alice at {NOW.isoformat()}: incident 42"


def test_a_freeze_that_cannot_be_read_freezes_everything():
    for text in ("{not json", '{"reason": "x"}', '{"reason": "x", "by": "a", "at": "t", "until": "someday"}'):
        unreadable = parse_freeze(text)
        assert unreadable is not None and unreadable.covers("eastus", NOW), text
        assert "cannot be read" in unreadable.reason


def test_repair_leaves_frozen_regions_alone():
    report = {"desired": {"digest": "sha256:" + "a" * 64}, "checked_at": NOW.isoformat(),
              "regions": {r: {"state": "stale", "since": NOW.isoformat()} for r in ("eastus", "westus")}}  # fmt: skip
    frozen = frozen_regions(freeze(regions=("eastus",)), ["eastus", "westus"], NOW)
    plan = repair_plan(report, frozen)
    assert plan["release"] == ["westus"] and plan["skipped"]["eastus"].startswith("frozen (eastus) by alice")


# -- the drain obeys it ------------------------------------------------------------------


@pytest.fixture
def variables(monkeypatch) -> dict[str, str]:
    """The Variables the tasks read (Airflow's Variable.get, played)."""
    held: dict[str, str] = {}
    monkeypatch.setattr(base.Variable, "get", staticmethod(lambda key, default=None: held.get(key, default)))
    return held


def drain(region: str) -> rs.DrainRegionOperator:
    return rs.DrainRegionOperator(task_id=names.region_task(region, names.DRAIN), fleet_path=str(LOCAL), region=region)


def test_a_frozen_region_defers_its_drain_and_changes_nothing(variables):
    variables[KEY] = freeze(regions=("eastus",)).to_json()
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(TaskDeferred) as deferred:
        run_task(drain("eastus"), ti, hook)
    trigger = deferred.value.trigger
    assert isinstance(trigger, HoldTrigger) and trigger.region == "eastus" and trigger.not_before > time.time()
    assert trigger.timeout_seconds == FLEET.rollout.hold_timeout_minutes * 60
    assert deferred.value.method_name == "after_hold" and hook.tm.calls == []


def test_a_paused_release_holds_every_drain_until_resumed(variables):
    variables[names.pause_variable("hello")] = Pause("watching", "bob", NOW.isoformat()).to_json()
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(TaskDeferred):
        run_task(drain("westus"), ti, hook)
    variables[names.pause_variable("hello")] = Pause("looks good", "bob", NOW.isoformat(), resumed=True).to_json()
    assert run_task(drain("westus"), ti, hook)["was_enabled"] and hook.tm.calls == [("westus", False, None)]


def test_an_approved_hotfix_passes_a_freeze_but_not_a_pause(variables):
    variables[KEY] = freeze().to_json()
    hook, ti = FakeHook(FLEET), released(FakeTI())
    hotfix = {"hotfix": True, "hotfix_reason": "INC-9"}
    assert run_task(drain("eastus"), ti, hook, hotfix)["held_seconds"] == 0.0
    variables[names.pause_variable("hello")] = Pause("watching", "bob", NOW.isoformat()).to_json()
    with pytest.raises(TaskDeferred) as deferred:
        run_task(drain("westus"), ti, hook, hotfix)
    assert deferred.value.trigger.hotfix and deferred.value.trigger.serialize()[1]["hotfix"] is True


@pytest.mark.parametrize(
    ("event", "says"),
    [
        ({"status": "failed", "detail": "frozen (eastus) by alice", "waited": 3}, r"frozen \(eastus\) by alice"),
        ({"status": "timeout", "detail": "releases paused by bob", "waited": 86400}, "still held back after 86400 s"),
    ],
)
def test_a_hold_that_does_not_end_fails_the_drain_naming_it(event, says):
    hook, ti, op = FakeHook(FLEET), released(FakeTI()), drain("eastus")
    op._hook, op._fleet, ti.pushing = hook, FLEET, op.task_id
    with pytest.raises(AirflowFailException, match=says):
        op.after_hold(context(ti), event)
    assert hook.tm.calls == []


def test_a_hold_that_ended_drains_and_records_how_long_it_held(variables):
    hook, ti, op = FakeHook(FLEET), released(FakeTI()), drain("eastus")
    op._hook, op._fleet, ti.pushing = hook, FLEET, op.task_id
    out = op.after_hold(context(ti), {"status": "ok", "detail": "nothing holds it back", "waited": 42.0})
    assert out["was_enabled"] and 42 <= out["held_seconds"] < 45 and hook.tm.calls == [("eastus", False, None)]


def test_under_on_freeze_fail_a_frozen_region_is_not_drained_and_says_who_froze_it(variables):
    variables[KEY] = freeze(regions=("eastus",)).to_json()
    fleet = FLEET.model_copy(update={"rollout": FLEET.rollout.model_copy(update={"on_freeze": "fail"})})
    hook, ti = FakeHook(fleet), released(FakeTI())
    op = rs.DrainRegionOperator(
        task_id=names.region_task("eastus", names.DRAIN), fleet_path=str(LOCAL), region="eastus"
    )
    with pytest.raises(AirflowFailException, match=r"eastus: drain failed: frozen \(eastus\) by alice .*incident 42"):
        run_task(op, ti, hook)
    assert hook.tm.calls == []
    assert "nothing was changed" in ti.xcoms[(op.task_id, names.FAILURE_KEY)]["cause"]
    # Another region, and the same region once lifted, drain as before.
    west = rs.DrainRegionOperator(
        task_id=names.region_task("westus", names.DRAIN), fleet_path=str(LOCAL), region="westus"
    )
    run_task(west, ti, hook)
    variables[KEY] = freeze(regions=("eastus",), lifted=True).to_json()
    run_task(op, ti, hook)
    assert [call[0] for call in hook.tm.calls] == ["westus", "eastus"]


def quarantined(**kw) -> str:
    return Quarantine(DIGEST, **{"reason": "leaks memory", "by": "bob", "at": NOW.isoformat(), **kw}).to_json()


def test_a_quarantine_is_read_lifted_or_when_unreadable_kept():
    assert (
        parse_quarantine(quarantined(), DIGEST).line()
        == f"{DIGEST} is quarantined by bob at {NOW.isoformat()}: leaks memory"
    )
    assert parse_quarantine(quarantined(lifted=True), DIGEST) is None and parse_quarantine(None, DIGEST) is None
    assert "cannot be read" in parse_quarantine("{oops", DIGEST).reason


def test_a_quarantined_digest_reaches_no_more_regions(variables):
    variables[names.quarantine_variable("hello", DIGEST)] = quarantined()
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(
        AirflowFailException, match=rf"eastus: drain failed: {DIGEST} is quarantined by bob .*leaks memory"
    ):
        run_task(drain("eastus"), ti, hook)
    assert hook.tm.calls == []


def test_a_repair_never_releases_a_quarantined_digest_again(variables):
    variables[names.quarantine_variable("hello", DIGEST)] = quarantined()
    fleet = FLEET.model_copy(update={"consistency": FLEET.consistency.model_copy(update={"mode": "repair"})})
    report = {"desired": {"digest": DIGEST, "git_sha": "abc1234"}, "checked_at": NOW.isoformat(), "message": "",
              "regions": {"eastus": {"state": "stale", "since": NOW.isoformat(), "helm": None}}}  # fmt: skip
    ti = FakeTI(
        {(names.READ_DESIRED, base.SNAPSHOT_KEY): snapshot_of().to_xcom(), (names.CLASSIFY, "return_value"): report}
    )
    op = cc.RepairFleetOperator(task_id=names.REPAIR, fleet_path=str(LOCAL))
    op._hook, op._fleet, ti.pushing = FakeHook(fleet), fleet, op.task_id
    out = op.run({"ti": ti, "params": {}, "run_id": "check1"})
    assert out["action"] == "quarantined" and "leaks memory" in out["quarantine"]


# -- the command line ----------------------------------------------------------------------


class PlayedAirflow:
    """Variables, the release DAG's params and an event log, as Airflow's API v2 serves them. Like
    Airflow, it logs every write it is asked for (as alice), refused or not."""

    def __init__(self, status: int = 200, releases: list[dict] | None = None):
        self.variables: dict[str, dict] = {}
        self.requests: list[httpx.Request] = []
        self.logged: list[dict] = []
        self.status = status
        self.releases = releases or []  # the release Asset events' extras, newest first
        self.runs: list[dict] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if method in ("POST", "PATCH") and path.startswith("/api/v2/variables"):
            body = json.loads(request.content)
            event = "post_variable" if method == "POST" else "patch_variable"
            self.logged.insert(0, {"when": "2026-11-30T12:00:00Z", "owner": "alice", "event": event,
                                   "extra": json.dumps({**body, "value": "***"})})  # fmt: skip
        if self.status != 200:
            return httpx.Response(self.status, json={"detail": "Forbidden"})
        if path == "/api/v2/dags/release_hello/details":
            regions = {"schema": {"type": ["null", "array"], "items": {"enum": FLEET.region_names}}}
            return httpx.Response(200, json={"dag_id": "release_hello", "params": {"regions": regions}})
        if path == "/api/v2/variables" and method == "GET":
            prefix = request.url.params["variable_key_prefix_pattern"]
            found = sorted((v for k, v in self.variables.items() if k.startswith(prefix)), key=lambda v: v["key"])
            return httpx.Response(200, json={"variables": found[::-1], "total_entries": len(found)})
        if path == "/api/v2/variables" and method == "POST":
            body = json.loads(request.content)
            if body["key"] in self.variables:
                return httpx.Response(409, json={"detail": "exists"})
            self.variables[body["key"]] = body
            return httpx.Response(201, json=body)
        if path.startswith("/api/v2/variables/"):
            key = path.rsplit("/", 1)[1]
            if key not in self.variables:
                return httpx.Response(404, json={"detail": "not found"})
            if method == "PATCH":
                self.variables[key] = json.loads(request.content)
            return httpx.Response(200, json=self.variables[key])
        if path == "/api/v2/assets/events":
            assert dict(request.url.params) | {"source_dag_id": "release_hello", "source_task_id": "record"} == dict(
                request.url.params
            )
            events = [
                {"source_dag_id": "release_hello", "source_task_id": "record", "extra": {"app": "hello", **extra}}
                for extra in self.releases
            ]
            return httpx.Response(200, json={"asset_events": events, "total_entries": len(events)})
        if path == "/api/v2/dags/release_hello/dagRuns" and method == "POST":
            self.runs.append(json.loads(request.content))
            return httpx.Response(200, json={"dag_run_id": self.runs[-1]["dag_run_id"]})
        if path == "/api/v2/eventLogs":
            return httpx.Response(200, json={"event_logs": self.logged, "total_entries": len(self.logged)})
        return httpx.Response(404, json={"detail": f"no {method} {path}"})


def cli(airflow: PlayedAirflow, *argv: str, at: datetime = NOW) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(list(argv))
    env = {"FANOUT_AIRFLOW_TOKEN": "t0ken", "FANOUT_AIRFLOW_URL": "http://127.0.0.1:8080"}
    code = run(args, env=env, transport=httpx.MockTransport(airflow.handle), stdout=out, stderr=err,
               now=lambda: at, sleep=lambda _: None)  # fmt: skip
    return code, out.getvalue(), err.getvalue()


def test_freeze_writes_the_variable_with_a_summary_airflows_event_log_keeps():
    airflow = PlayedAirflow()
    code, out, _ = cli(airflow, "freeze", "--app", "hello", "--regions", "eastus,westus", "--reason", "incident 42",
                       "--until", "2026-11-30T18:00Z")  # fmt: skip
    assert code == 0 and "frozen (eastus, westus) by token" in out
    stored = airflow.variables[KEY]
    assert stored["description"] == "freeze eastus, westus until 2026-11-30T18:00:00+00:00 by token: incident 42"
    assert parse_freeze(stored["value"]).covers("eastus", NOW)
    later = NOW + timedelta(minutes=5)
    code, out, _ = cli(airflow, "unfreeze", "--app", "hello", "--reason", "incident over", at=later)
    assert code == 0 and parse_freeze(airflow.variables[KEY]["value"]) is None
    code, out, _ = cli(airflow, "audit", "--app", "hello")
    # Each action once, newest first, with the user Airflow signed in.
    assert out.splitlines() == [
        f"{later.isoformat()}  alice  unfreeze by token: incident over",
        f"{NOW.isoformat()}  alice  freeze eastus, westus until 2026-11-30T18:00:00+00:00 by token: incident 42",
    ]


def test_a_region_not_in_the_fleet_is_refused_before_anything_is_written():
    airflow = PlayedAirflow()
    code, _, err = cli(airflow, "freeze", "--app", "hello", "--regions", "eastuss", "--reason", "x")
    assert code == 2 and "--regions: eastuss is not a region of hello" in err
    assert not [r for r in airflow.requests if r.method != "GET"]


@pytest.mark.parametrize(("argv", "said"), [
    (["--reason", "  "], "--reason: say why"),
    (["--reason", "x", "--until", "tomorrow"], "--until: 'tomorrow' is not an ISO 8601 time"),
    (["--reason", "x", "--until", "2026-11-30T18:00"], "has no time zone"),
    (["--reason", "x", "--until", "2026-11-30T11:00Z"], "is already past"),
])  # fmt: skip
def test_bad_freeze_input_is_one_line_naming_the_flag(argv, said):
    airflow = PlayedAirflow()
    code, _, err = cli(airflow, "freeze", "--app", "hello", *argv)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1
    assert not [r for r in airflow.requests if r.method != "GET"]


def test_a_user_airflow_refuses_is_told_so_and_nothing_is_frozen_or_audited():
    airflow = PlayedAirflow(status=403)
    code, _, err = cli(airflow, "freeze", "--app", "hello", "--reason", "x")
    assert code != 0 and "HTTP 403" in err and airflow.variables == {}
    airflow.status = 200
    _, out, _ = cli(airflow, "audit", "--app", "hello")
    assert out.strip() == "nothing recorded for hello"


def test_the_audit_lists_what_took_effect_not_every_write_airflow_logged():
    airflow = PlayedAirflow()
    cli(airflow, "freeze", "--app", "hello", "--reason", "one")
    # Airflow logs a write it refused as well; a refused write creates no audit record.
    airflow.logged.insert(0, {"owner": "mallory", "event": "post_variable", "extra": json.dumps({"key": KEY})})
    _, out, _ = cli(airflow, "audit", "--app", "hello")
    assert out.splitlines() == [f"{NOW.isoformat()}  alice  freeze every region by token: one"]


def test_quarantine_and_lift_are_written_per_digest_and_audited():
    airflow = PlayedAirflow()
    code, out, _ = cli(airflow, "quarantine", "--app", "hello", DIGEST, "--reason", "leaks memory")
    assert code == 0 and out.splitlines() == [
        f"hello: quarantine {DIGEST} by token: leaks memory",
        "hello: no earlier good release is recorded; nothing to roll back to",
    ]
    key = names.quarantine_variable("hello", DIGEST)
    assert parse_quarantine(airflow.variables[key]["value"], DIGEST) is not None
    code, out, _ = cli(
        airflow, "unquarantine", "--app", "hello", DIGEST, "--reason", "fixed upstream", at=NOW + timedelta(1)
    )
    assert code == 0 and parse_quarantine(airflow.variables[key]["value"], DIGEST) is None
    _, out, _ = cli(airflow, "audit", "--app", "hello")
    assert [line.split("  ", 1)[1] for line in out.splitlines()] == [
        f"alice  lift quarantine of {DIGEST} by token: fixed upstream",
        f"alice  quarantine {DIGEST} by token: leaks memory",
    ]


def test_quarantine_of_something_not_a_digest_is_refused_naming_it():
    airflow = PlayedAirflow()
    code, _, err = cli(airflow, "quarantine", "--app", "hello", "myapp:latest", "--reason", "x")
    assert code == 2 and "digest: 'myapp:latest' is not sha256:<64 lowercase hex>" in err and not airflow.variables


def test_pause_and_resume_are_written_and_audited():
    airflow = PlayedAirflow()
    code, out, _ = cli(airflow, "resume", "--app", "hello", "--reason", "nothing paused")
    assert code == 0 and out.strip() == "hello: not paused; nothing to resume" and not airflow.variables
    code, out, _ = cli(airflow, "pause", "--app", "hello", "--reason", "watching wave 1")
    key = names.pause_variable("hello")
    assert code == 0 and out.strip() == "hello: pause releases by token: watching wave 1"
    assert parse_pause(airflow.variables[key]["value"]) == Pause("watching wave 1", "token", NOW.isoformat())
    code, out, _ = cli(airflow, "resume", "--app", "hello", "--reason", "wave 1 is fine", at=NOW + timedelta(1))
    assert code == 0 and parse_pause(airflow.variables[key]["value"]) is None
    _, out, _ = cli(airflow, "audit", "--app", "hello")
    assert [line.split("  ", 1)[1] for line in out.splitlines()] == [
        "alice  resume releases by token: wave 1 is fine",
        "alice  pause releases by token: watching wave 1",
    ]


GOOD, OTHER = "sha256:" + "e" * 64, "sha256:" + "f" * 64  # DIGEST (tests.fakes) is the bad one


def test_a_quarantine_releases_the_app_s_last_good_release_again_through_the_release_dag():
    releases = [
        {"digest": DIGEST, "git_sha": "c" * 40, "source_ref": "main"},  # the bad one, newest
        # Not releases of this app: an event anyone could POST over the REST API, another app's.
        {"digest": "sha256:" + "9" * 64, "git_sha": "d" * 40, "source_ref": "main", "from_rest_api": True},
        {"app": "storefront", "digest": "sha256:" + "8" * 64, "git_sha": "d" * 40, "source_ref": "main"},
        {"digest": OTHER, "git_sha": "b" * 40, "source_ref": "main"},  # quarantined earlier
        {"digest": GOOD, "git_sha": "a" * 40, "source_ref": "release/1"},
    ]
    airflow = PlayedAirflow(releases=releases)
    airflow.variables[names.quarantine_variable("hello", OTHER)] = {"value": quarantined(), "description": ""}
    code, out, err = cli(airflow, "quarantine", "--app", "hello", DIGEST, "--reason", "leaks memory")
    assert code == 0, out + err
    [run] = airflow.runs
    assert run["conf"] == {"git_sha": "a" * 40, "source_ref": "release/1", "image": GOOD}
    assert run["dag_run_id"].startswith(f"rollback__{DIGEST[7:19]}__") and run["note"].startswith("quarantine")
    assert f"hello: rolling back to {GOOD} (git aaaaaaaaaaaa): release_hello run {run['dag_run_id']}" in out


def test_no_roll_back_only_quarantines():
    airflow = PlayedAirflow(releases=[{"digest": GOOD, "git_sha": "a" * 40}])
    code, out, _ = cli(airflow, "quarantine", "--app", "hello", DIGEST, "--reason", "x", "--no-roll-back")
    assert code == 0 and airflow.runs == [] and "rolling back" not in out
