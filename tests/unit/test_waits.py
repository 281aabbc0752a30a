"""fanout.airflow.waits: a wait's trigger ends its task (no resume on a worker), with the same
records and messages as the worker path `airflow dags test` takes."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from airflow.triggers.base import TaskFailedEvent, TaskSuccessEvent, TriggerEvent

from fanout import names
from fanout.airflow.region_steps import GatesOperator, WaitForReplicationOperator
from fanout.airflow.triggers import PhasesTrigger, PollingTrigger, ReplicationTrigger, phase
from fanout.airflow.waits import Ending, WaitingMixin
from fanout.fleet import load_fleet
from tests.fakes import DIGEST, LOCAL, REPO, FakeHook, FakeTI, released, run_task, snapshot_of

FLEET = load_fleet(LOCAL)

GATE = Ending("eastus", "gate_http")


class Countdown(PollingTrigger):
    """Done at the `done_at`-th check (never when 0)."""

    def __init__(self, *, done_at: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done_at, self.checks = done_at, 0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.Countdown", {"done_at": self.done_at, **self._kwargs()}

    async def check(self) -> tuple[bool, str]:
        self.checks += 1
        return self.checks == self.done_at, f"check {self.checks}"


def under_triggerer(trigger: PollingTrigger) -> PollingTrigger:
    """As the triggerer runs it: rebuilt from its serialized form, with the task instance set."""
    _, kwargs = trigger.serialize()
    rebuilt = type(trigger)(**kwargs)
    rebuilt.task_instance = SimpleNamespace(task_id="deploy_eastus.gate_http")
    return rebuilt


def first_event(trigger: PollingTrigger) -> TriggerEvent:
    async def first() -> TriggerEvent:
        return await anext(trigger.run())

    return asyncio.run(first())


def test_a_long_wait_says_what_it_still_waits_for(monkeypatch, capsys) -> None:
    """A wait that has not ended logs, every PROGRESS_SECONDS, what it is waiting for: under
    `airflow dags test` (make demo) that is the only sign of life a stuck replica gives."""
    monkeypatch.setattr("fanout.airflow.triggers.PROGRESS_SECONDS", 0.05)
    trigger = Countdown(done_at=0, timeout_seconds=0.3, poll_seconds=0.02)
    assert trigger.poll_inline(1.0)["status"] == "timeout"
    lines = [line for line in capsys.readouterr().out.splitlines() if "still waiting after" in line]
    assert 2 <= len(lines) < trigger.checks, lines  # now and then, not at every check
    assert all("of 0 s: check " in line for line in lines), lines  # the limit and the last detail


def test_a_passed_wait_ends_the_task_with_its_return_value() -> None:
    trigger = under_triggerer(Countdown(done_at=2, poll_seconds=0.01, timeout_seconds=30, ending=GATE.as_dict()))
    event = first_event(trigger)
    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms["return_value"]["status"] == "ok" and event.xcoms["return_value"]["detail"] == "check 2"


def test_a_failed_gate_ends_the_task_with_its_failure_record() -> None:
    ending = Ending("eastus", "gate_http", cause="after 2 s of soak: {detail}")
    trigger = under_triggerer(Countdown(done_at=0, poll_seconds=0.01, timeout_seconds=0.05, ending=ending.as_dict()))
    event = first_event(trigger)
    assert isinstance(event, TaskFailedEvent)
    cause = event.xcoms["failure"]["cause"]
    assert event.xcoms == {"failure": {"region": "eastus", "gate": "gate_http", "cause": cause, "consequence": False}}
    assert cause.startswith("after 2 s of soak: check ")


def test_the_clock_survives_a_triggerer_restart() -> None:
    started = time.time() - 100  # deferred 100 s ago; the triggerer rebuilds it from its row now
    trigger = under_triggerer(
        Countdown(done_at=0, poll_seconds=0.01, timeout_seconds=60, started_at=started, ending=GATE.as_dict())
    )
    event = first_event(trigger)
    assert isinstance(event, TaskFailedEvent), "past its deadline at the first check"
    assert "(gave up after 100 s)" in event.xcoms["failure"]["cause"]


def test_without_a_task_instance_the_trigger_resumes_the_task() -> None:
    """`airflow dags test` runs triggers in-line with no task instance and resumes the task with
    the payload: a task-end event would lose its xcoms there."""
    event = first_event(Countdown(done_at=0, poll_seconds=0.01, timeout_seconds=0.05, ending=GATE.as_dict()))
    assert type(event) is TriggerEvent and event.payload["status"] == "timeout"
    # dags test resumes end_wait with the payload alone (it drops the deferral's kwargs): the
    # payload carries the Ending, so the worker records and says the same as the trigger would.
    assert event.payload["ending"] == GATE.as_dict()
    op, ti = Wait(task_id="gate_http", trigger=Countdown(timeout_seconds=1)), FakeTi()
    with pytest.raises(AirflowFailException, match=r"^eastus: gate_http failed: check \d+ \(gave up after 0 s\)$"):
        op.end_wait({"ti": ti}, event.payload)
    assert ti.pushed["failure"]["region"] == "eastus" and ti.pushed["failure"]["gate"] == "gate_http"


class Wait(WaitingMixin, BaseOperator):
    def __init__(self, *, trigger: PollingTrigger, ending: Ending = GATE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trigger, self.ending = trigger, ending

    def execute(self, context: Any) -> Any:
        return self.wait(context, self.trigger, self.ending)

    def record_failure(self, context: Any, failure: dict[str, Any]) -> None:
        context["ti"].xcom_push(key=names.FAILURE_KEY, value=failure)


class FakeTi:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_a_wait_that_already_holds_ends_in_the_worker_without_deferring() -> None:
    op = Wait(task_id="gate_http", trigger=Countdown(done_at=1, timeout_seconds=30))
    result = op.execute({"ti": FakeTi()})
    assert result["status"] == "ok" and result["detail"] == "check 1"


def test_a_wait_still_going_defers_to_a_trigger_that_ends_the_task() -> None:
    op = Wait(task_id="gate_http", trigger=Countdown(done_at=0, timeout_seconds=30))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": FakeTi()})
    assert deferred.value.method_name == "end_wait"
    assert deferred.value.trigger.serialize()[1]["ending"] == GATE.as_dict()


def test_the_worker_path_records_the_failure_and_names_region_gate_and_cause() -> None:
    op, ti = Wait(task_id="gate_http", trigger=Countdown(done_at=0, timeout_seconds=0)), FakeTi()
    with pytest.raises(AirflowFailException, match=r"^eastus: gate_http failed: check 1 \(gave up after 0 s\)$"):
        op.execute({"ti": ti})
    failure = {"region": "eastus", "gate": "gate_http", "cause": "check 1 (gave up after 0 s)", "consequence": False}
    assert ti.pushed == {"failure": failure}


def test_a_task_end_event_replayed_by_dags_test_keeps_its_state() -> None:
    op = Wait(task_id="bake", trigger=Countdown(timeout_seconds=1))
    assert op.end_wait({"ti": FakeTi()}, "success") is None
    with pytest.raises(AirflowFailException, match="bake: the trigger ended it as failed"):
        op.end_wait({"ti": FakeTi()}, "failed")


# -- the release's waits defer with an Ending (fleet: include/fleets/local.yaml; nothing runs) --


def test_the_gates_defer_at_once_as_one_trigger_rollout_then_http_then_the_soak() -> None:
    soak = FLEET.gates.soak_seconds
    op = GatesOperator(task_id="deploy_eastus.gates", fleet_path=str(LOCAL), region="eastus")
    with pytest.raises(TaskDeferred) as deferred:
        run_task(op, released(FakeTI()), FakeHook(FLEET))
    trigger = deferred.value.trigger
    assert isinstance(trigger, PhasesTrigger) and deferred.value.method_name == "end_wait"
    phases = trigger.serialize()[1]["phases"]
    classes = [p["classpath"].rsplit(".", 1)[-1] for p in phases]
    assert classes == ["RolloutTrigger", "HttpGateTrigger", "HttpGateTrigger"]
    assert [p["ending"]["gate"] for p in phases] == ["gate_rollout", "gate_http", "gate_soak"]
    assert [p["delay"] for p in phases] == [0, 0, soak]  # the soak: one probe, the soak time after the HTTP gate
    assert (phases[2]["kwargs"]["needed"], phases[2]["kwargs"]["timeout_seconds"]) == (1, soak)
    assert phases[2]["ending"]["cause"] == f"after {soak} s of soak: {{detail}}"
    assert trigger.ending == {"region": "eastus", "gate": "gates", "cause": "{detail} (gave up after {waited:.0f} s)",
                              "result": {"soaked_seconds": soak}}  # fmt: skip


def countdown_phase(gate: str, delay: float = 0.0, **kwargs: Any) -> dict[str, Any]:
    return phase(Countdown(poll_seconds=0.01, **kwargs), Ending("eastus", gate), delay)


def test_phases_run_in_turn_each_on_its_own_clock_and_all_passed_end_the_task_once() -> None:
    delay = 0.3
    phases = [countdown_phase("one", done_at=2, timeout_seconds=5), countdown_phase("two", delay, timeout_seconds=5)]
    trigger = under_triggerer(PhasesTrigger(phases=phases, ending=Ending("eastus", "gates").as_dict()))
    event = first_event(trigger)
    assert isinstance(event, TaskSuccessEvent)
    result = event.xcoms["return_value"]
    assert result["detail"] == "one: check 2; two: check 1"
    assert list(result["phases"]) == ["one", "two"]
    assert result["phases"]["two"]["waited"] >= delay - 0.05  # its clock began when it did, before its delay
    assert result["waited"] >= delay


def test_the_first_phase_that_does_not_pass_ends_the_task_naming_its_own_check() -> None:
    phases = [
        countdown_phase("gate_rollout", timeout_seconds=5),
        countdown_phase("gate_http", done_at=0, timeout_seconds=0.05),
        countdown_phase("gate_soak", timeout_seconds=5),
    ]
    trigger = under_triggerer(PhasesTrigger(phases=phases, ending=Ending("eastus", "gates").as_dict()))
    event = first_event(trigger)
    assert isinstance(event, TaskFailedEvent)
    failure = event.xcoms["failure"]
    assert (failure["region"], failure["gate"]) == ("eastus", "gate_http")
    assert failure["cause"].startswith("check ") and "gave up after 0 s" in failure["cause"]
    # Under `airflow dags test` (no task instance) the event carries that phase's Ending to the worker.
    inline = PhasesTrigger(phases=phases, ending=Ending("eastus", "gates").as_dict())
    assert first_event(inline).payload["ending"]["gate"] == "gate_http"


def test_the_replication_wait_defers_and_names_what_the_replica_lacks(monkeypatch) -> None:
    monkeypatch.setattr(PollingTrigger, "poll_inline", lambda self, budget: None)  # not there at the first look
    op = WaitForReplicationOperator(task_id="wait_replication_northeurope", fleet_path=str(LOCAL), region="northeurope")
    with pytest.raises(TaskDeferred) as deferred:
        run_task(op, released(FakeTI()), FakeHook(FLEET))
    ending = Ending.of(deferred.value.trigger.serialize()[1]["ending"])
    passed, _, line = ending.conclude({"status": "timeout", "detail": "not there yet", "waited": 300.2})
    assert not passed
    assert line == (
        f"northeurope: wait_replication failed: the registry replica still lacks {DIGEST} after 300 s "
        "(registry.replication_timeout_seconds): not there yet"
    )


def test_the_replication_wait_ends_at_once_when_the_registry_host_does_not_resolve(tmp_path) -> None:
    """A real DNS failure, not a fake: `.invalid` names never resolve (RFC 2606), and the system
    resolver says so at once. An OCI fleet over https, as a self-hosted registry would be."""
    data = yaml.safe_load((REPO / "include/fleets/azure-example.yaml").read_text())
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    regions = [r["name"] for r in data["regions"]]
    data["registry"] = {
        "kind": "oci", "repository": "storefront/web", "home": data["registry"]["home"],
        "replication_timeout_seconds": 1800, "endpoints": {r: f"registry-{r}.invalid:5000" for r in regions},
    }  # fmt: skip
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("registry-westus2.invalid", 5000)
    trigger = ReplicationTrigger(
        fleet=snapshot_of(path).to_xcom(), region="westus2", digest=DIGEST, timeout_seconds=1800, poll_seconds=5
    )
    event = trigger.poll_inline(30)
    assert event is not None and event["status"] == "failed", event
    assert event["waited"] < 5, "ended at once, not at the 1800 s deadline"
    assert event["detail"].startswith("registry registry-westus2.invalid:5000: unknown host"), event["detail"]
