"""What Fanout tells people: each message built from plain data (fanout.notify), the notifiers a
fleet file's `notifications` puts on the DAGs' callbacks, and what they send from a task's context."""

from __future__ import annotations

import copy

import pytest
import yaml

from fanout import names
from fanout import notify as msg
from fanout.fleet import NOTIFY_EVENTS, FleetError, parse_fleet
from fanout.records import StepFailure
from tests.fakes import LOCAL

UI = "https://airflow.example.com/"
DIGEST = "sha256:" + "c" * 64
SHA = "3f0c5d2be41a" + "0" * 28


def test_links_point_at_the_run_and_at_the_approval_page():
    assert msg.run_link(UI, "release_hello", "manual__2026-12-01T03:00:00+00:00") == (
        "https://airflow.example.com/dags/release_hello/runs/manual__2026-12-01T03%3A00%3A00%2B00%3A00"
    )
    assert msg.approval_link(UI, "release_hello", "r1", "approve_after_canary") == (
        "https://airflow.example.com/dags/release_hello/runs/r1/tasks/approve_after_canary/required_actions"
    )
    assert msg.run_link(None, "release_hello", "r1") is None and msg.approval_link(None, "d", "r", "t") is None


def test_a_release_start_names_the_commit_the_waves_and_the_run():
    m = msg.release_started("hello", "r1", SHA, "main", [["westus"], ["eastus", "northeurope"]], "L")
    assert (m.event, m.level, m.title) == ("started", "info", "hello: release started")
    assert (
        m.body == "Release of hello at git 3f0c5d2be41a (main) started.\nWaves: westus | eastus, northeurope\nrun r1\nL"
    )


def test_a_success_names_the_digest_and_regions_and_warns_of_held_back_ones():
    m = msg.release_succeeded("hello", "r1", DIGEST, SHA, ["westus", "eastus"], {}, None)
    assert (m.event, m.level, m.title) == ("succeeded", "success", "hello: release succeeded")
    assert m.body == f"Release of hello at git 3f0c5d2be41a succeeded: {DIGEST[:19]} in westus, eastus.\nrun r1"
    held = msg.release_succeeded("hello", "r1", DIGEST, SHA, ["westus"], {"eastus": "gate_http: 503"}, None)
    assert held.level == "warning" and "1 region(s) held back" in held.title
    assert "Held back: eastus: gate_http: 503" in held.body


def test_a_failure_names_region_gate_and_cause_once_per_failure_and_hides_secrets():
    failures = [
        StepFailure("eastus", "gate_http", "/healthz answered 503 for 10 s"),
        StepFailure(None, "build", "git fetch https://bob:hunter2@git.example/app.git failed"),
    ]
    m = msg.release_failed("hello", "r1", failures, "https://ui/dags/release_hello/runs/r1")
    assert (m.event, m.level) == ("failed", "failure")
    assert m.title == "hello: release failed — eastus / gate_http"
    lines = m.body.splitlines()
    assert lines[1] == "region: eastus  gate: gate_http  cause: /healthz answered 503 for 10 s"
    assert lines[2].startswith("region: (whole release)  gate: build  cause: git fetch https://")
    assert "hunter2" not in m.body and lines[-1] == "https://ui/dags/release_hello/runs/r1"
    assert "without saying why" in msg.release_failed("hello", "r1", [], None).body


def test_an_approval_request_carries_the_link_that_approves():
    link = msg.approval_link(UI, "release_hello", "r1", names.APPROVE_AFTER_CANARY)
    m = msg.waiting_for_approval("hello", "r1", "Continue the release of hello after the canary wave?", link, 60)
    assert (m.event, m.level) == ("approval", "warning")
    assert f"Approve or reject: {link}" in m.body and "after 60 min" in m.body


def test_a_rollback_says_where_the_region_went_and_why():
    outcome = {"region": "eastus", "gate": "gate_http", "cause": "/healthz answered 503", "rolled_back_to": 3,
               "traffic": "enabled", "serving": DIGEST}  # fmt: skip
    m = msg.rolled_back("hello", "r1", outcome, None)
    assert (m.event, m.title) == ("rolled-back", "hello: eastus rolled back")
    assert m.body.splitlines()[:2] == [
        "eastus: gate_http failed: /healthz answered 503",
        f"eastus rolled back to Helm revision 3; traffic enabled; serving {DIGEST[:19]}.",
    ]
    first = msg.rolled_back("hello", "r1", {**outcome, "rolled_back_to": None}, None)
    assert "not rolled back (nothing older to return to)" in first.body
    rolled = {"eastus": {"rolled_back_to": 3}, "westus": {"rolled_back_to": None, "note": "first install"}}
    assert "eastus to Helm revision 3, westus (first install)" in msg.rolled_back_all("hello", "r1", rolled, None).body


def report(**regions) -> dict:
    return {"checked_at": "T2", "mode": "report", "message": "1 stale", "desired": {"digest": DIGEST},
            "regions": regions}  # fmt: skip


def test_drift_is_told_when_it_is_first_seen_not_at_every_check():
    new = report(
        eastus={"state": "stale", "since": "T2", "detail": "Helm pins another digest"},
        westus={"state": "in-sync", "since": "T1"},
        northeurope={"state": "unreachable", "since": "T2", "detail": "cluster unreachable"},
        westeurope={"state": "drifted", "since": "T1", "detail": "old"},
    )
    m = msg.drift_found("hello", new, "check1", None)
    assert (m.event, m.level, m.title) == ("drift", "warning", "hello: drift found (unreachable, stale)")
    assert m.body.splitlines()[1:3] == ["northeurope: unreachable: cluster unreachable",
                                        "eastus: stale: Helm pins another digest"]  # fmt: skip
    assert "westeurope" not in m.body  # drifted since an earlier check: told then
    assert msg.drift_found("hello", report(westus={"state": "in-sync", "since": "T2"}), "c", None) is None
    assert msg.drift_found("hello", report(westus={"state": "no-release", "since": "T2"}), "c", None) is None


def test_a_repair_is_told_only_when_it_triggered_a_run():
    outcome = {
        "action": "triggered",
        "run_id": "repair__abc",
        "release": ["eastus", "westus"],
        "rollback": [{"region": "westus", "revision": 2}],
        "skipped": {"northeurope": "unreachable: …"},
    }
    m = msg.repair_started("hello", outcome, "check1", "L")
    assert (m.event, m.title) == ("repair", "hello: repair started (eastus, westus)")
    assert "release run repair__abc for eastus, westus" in m.body and "westus is stuck" in m.body
    assert "Not repaired: northeurope: unreachable" in m.body
    for action in ("none", "report-only", "waiting", "quarantined"):
        assert msg.repair_started("hello", {**outcome, "action": action}, "check1", None) is None


# -- the fleet file's `notifications` ----------------------------------------------------


def fleet_with(notifications):
    data = yaml.safe_load(LOCAL.read_text())
    data["notifications"] = copy.deepcopy(notifications)
    return parse_fleet(data, "f.yaml")


def test_notifications_name_a_connection_never_a_url():
    fleet = fleet_with({"conn_id": "fanout_notify"})
    assert fleet.notifications.events == list(NOTIFY_EVENTS) and fleet.notifications.ui_url is None
    for bad, line in (
        ({"conn_id": "slack://T000/B000/XXXX"}, "f.yaml: notifications.conn_id: not an Airflow connection id"),
        ({"conn_id": "n", "url": "json://host/"}, "f.yaml: notifications.url: unknown field"),
        ({"conn_id": "n", "events": ["failed", "paged"]}, "f.yaml: notifications.events[1]: Input should be"),
        (
            {"conn_id": "n", "ui_url": "https://u:p@airflow.example"},
            "f.yaml: notifications.ui_url: must not carry a user or password",
        ),
    ):
        with pytest.raises(FleetError) as err:
            fleet_with(bad)
        assert len(err.value.problems) == 1 and err.value.problems[0].startswith(line), err.value.problems


# -- the notifiers on the DAGs' callbacks ------------------------------------------------


def notifiers(task, kind):
    from fanout.airflow.notify import FanoutNotifier

    return [(c.apprise_conn_id, c.build.__name__) for c in getattr(task, kind) if isinstance(c, FanoutNotifier)]


def test_the_fleet_files_notifications_go_on_the_tasks_that_know_each_event():
    from fanout.airflow.dags import build_consistency_dag, build_release_dag

    fleet = fleet_with({"conn_id": "fanout_notify"})
    fleet = fleet.model_copy(update={"rollout": fleet.rollout.model_copy(update={"manual_approval": True})})
    tasks = build_release_dag(fleet, str(LOCAL)).task_dict
    assert notifiers(tasks[names.VALIDATE], "on_success_callback") == [("fanout_notify", "started")]
    assert notifiers(tasks[names.RECORD], "on_success_callback") == [("fanout_notify", "succeeded")]
    failing = [t for t, task in tasks.items() if notifiers(task, "on_failure_callback")]
    # A failed run fails through exactly one of these: one failure message per run.
    assert sorted(failing) == sorted([names.CHECK_SUPERSEDED, names.VALIDATE, names.REBALANCE, names.RECORD])
    assert notifiers(tasks[names.APPROVE_AFTER_CANARY], "on_execute_callback") == [("fanout_notify", "approval")]
    assert notifiers(tasks["deploy_eastus.rollback"], "on_success_callback") == [("fanout_notify", "rolled_back")]
    assert not notifiers(tasks["deploy_eastus.gates"], "on_failure_callback")
    check = build_consistency_dag(fleet, str(LOCAL)).task_dict
    assert notifiers(check[names.CLASSIFY], "on_success_callback") == [("fanout_notify", "drift")]
    assert notifiers(check[names.REPAIR], "on_success_callback") == [("fanout_notify", "repair")]
    only = fleet.model_copy(update={"notifications": fleet.notifications.model_copy(update={"events": ["failed"]})})
    tasks = build_release_dag(only, str(LOCAL)).task_dict
    assert not notifiers(tasks[names.VALIDATE], "on_success_callback")
    assert notifiers(tasks[names.VALIDATE], "on_failure_callback") == [("fanout_notify", "failed")]
    quiet = build_release_dag(fleet.model_copy(update={"notifications": None}), str(LOCAL)).task_dict
    assert not any(notifiers(t, k) for t in quiet.values() for k in ("on_success_callback", "on_failure_callback"))


def test_a_notifier_sends_what_its_event_says_to_a_real_receiver(monkeypatch):
    from airflow.sdk import DAG

    from fanout.airflow import notify as wiring
    from tests.fakes import FakeTI
    from tests.receiver import Receiver

    with Receiver() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_FANOUT_NOTIFY", receiver.connection())
        ti = FakeTI({(names.REBALANCE, names.RUN_FAILURES_KEY): [StepFailure("eastus", "gate_http", "503").to_xcom()],
                     (names.VALIDATE, "return_value"): {"waves": [["westus"], ["eastus"]]}})  # fmt: skip
        ti.task_id = names.REBALANCE
        context = {
            "ti": ti,
            "dag": DAG("release_hello", schedule=None),
            "run_id": "r1",
            "params": {"git_sha": SHA, "source_ref": "main"},
        }
        wiring.FanoutNotifier(conn_id="fanout_notify", ui_url=UI, build=wiring.failed)(context)
        wiring.FanoutNotifier(conn_id="fanout_notify", ui_url=None, build=wiring.started)(context)
        # A dry run changes nothing: no "started".
        wiring.FanoutNotifier(conn_id="fanout_notify", ui_url=None, build=wiring.started)(
            {**context, "params": {"dry_run": True}}
        )
    assert receiver.titles() == ["hello: release failed — eastus / gate_http", "hello: release started"]
    failure = receiver.received[0]
    assert failure["type"] == "failure" and "region: eastus  gate: gate_http  cause: 503" in failure["message"]
    assert "https://airflow.example.com/dags/release_hello/runs/r1" in failure["message"]


def test_each_callback_reads_its_event_from_the_run(monkeypatch):
    from datetime import timedelta

    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import DAG

    from fanout.airflow import notify as wiring
    from tests.fakes import FakeTI

    outcome = {"region": "eastus", "gate": "gate_http", "cause": "503", "rolled_back_to": 3, "traffic": "enabled"}
    ti = FakeTI({
        (names.RECORD, "return_value"): {"digest": DIGEST, "git_sha": SHA, "regions": ["westus"], "held_back": {}},
        ("deploy_eastus.rollback", "return_value"): outcome,
        (names.ROLLBACK_ALL, "return_value"): {"rolled_back": {"westus": {"rolled_back_to": 2}}},
        (names.CLASSIFY, "return_value"): report(eastus={"state": "stale", "since": "T2", "detail": "d"}),
        (names.REPAIR, "return_value"): {"action": "triggered", "run_id": "repair__1", "release": ["eastus"]},
    })  # fmt: skip
    dag = DAG("release_hello", schedule=None)
    context = {"ti": ti, "dag": dag, "run_id": "run1", "params": {}}
    assert wiring.succeeded(context, UI).title == "hello: release succeeded"
    ti.task_id = "deploy_eastus.rollback"
    assert wiring.rolled_back(context, UI).title == "hello: eastus rolled back"
    assert "westus to Helm revision 2" in wiring.rolled_back_all(context, None).body
    ti.task_id = names.VALIDATE
    refused = wiring.failed({**context, "exception": RuntimeError("conf: unknown key(s) 'regoins'")}, None)
    assert "region: (whole release)  gate: validate  cause: conf: unknown key(s) 'regoins'" in refused.body
    check = {**context, "dag": DAG("fleet_consistency_hello", schedule=None)}
    assert wiring.drift(check, None).title == "hello: drift found (stale)"
    assert wiring.repair(check, None).title == "hello: repair started (eastus)"
    with dag:
        approve = ApprovalOperator(task_id=names.APPROVE_AFTER_CANARY, subject="Go on?",
                                   response_timeout=timedelta(minutes=90))  # fmt: skip
    ti.task_id, ti.dag_id, ti.run_id = names.APPROVE_AFTER_CANARY, "release_hello", "run1"
    asked = wiring.approval({**context, "task": approve}, UI)
    assert asked.event == "approval" and "after 90 min" in asked.body
    assert f"{UI}dags/release_hello/runs/run1/tasks/approve_after_canary/required_actions" in asked.body
    # Resumed once the answer came: the request was sent when the task started.
    ti._ti_context_from_server = type("Server", (), {"next_method": "execute_complete"})()
    assert wiring.approval({**context, "task": approve}, UI) is None


def test_approve_hotfix_asks_only_in_a_hotfix_run():
    from datetime import timedelta

    from airflow.sdk import DAG

    from fanout.airflow import notify as wiring
    from fanout.airflow.hotfix import HotfixApprovalOperator
    from tests.fakes import FakeTI

    with DAG("release_hello", schedule=None):
        approve = HotfixApprovalOperator(task_id=names.APPROVE_HOTFIX, app="hello", approvers=["alice"],
                                         response_timeout=timedelta(minutes=30))  # fmt: skip
    ti = FakeTI()
    ti.task_id, ti.dag_id, ti.run_id = names.APPROVE_HOTFIX, "release_hello", "run1"
    context = {"ti": ti, "dag": approve.dag, "run_id": "run1", "task": approve}
    assert wiring.hotfix_approval({**context, "params": {"hotfix": False}}, UI) is None
    asked = wiring.hotfix_approval({**context, "params": {"hotfix": True, "hotfix_reason": "INC-9"}}, UI)
    assert asked.event == "approval" and "Approve a hotfix release of hello?" in asked.body
    assert "tasks/approve_hotfix/required_actions" in asked.body
