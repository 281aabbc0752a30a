"""Waits that hold no worker: the trigger that waits also ends the task.

A wait task looks once in the worker (most conditions already hold, and then the task ends
there), otherwise defers, and its trigger ends the task from the triggerer with a
`TaskSuccessEvent` or `TaskFailedEvent`: the task never resumes on a worker.

Why not resume: Airflow 3.3 fails a resumed task whose trigger fired within seconds of the
deferral. The worker that deferred exits with success; when the scheduler drains that stale
executor event only after the resumed try is already `running`, it takes it for a task killed
externally and fails it (apache/airflow#71580, #72716; scheduler_job_runner.py
`_process_executor_events` counts a same-try event as stale only for `scheduled` with
`next_method`). A task the trigger ended is `success` or `failed` by then, a state that check
leaves alone, so the stale event is harmless whenever it comes.

What the task would have recorded travels in the event's `xcoms` (Airflow's trigger.py
`handle_event_submit` pushes them for a task-end event): the return value on success, the
`failure` record {region, gate, cause} that rollback and rebalance read on failure. The
wording of both comes from an `Ending` the operator hands the trigger, so the message is
the operator's and the same on either path.

`airflow dags test` runs a trigger in-line and resumes the task with the event's payload
(sdk/definitions/dag.py `_run_task`), which for a task-end event is only its state: the xcoms
would be lost, and so would the deferral's own kwargs, which it replaces with the event. A
trigger given no task instance (the in-line runner sets none; the triggerer always does)
therefore yields a plain event that carries its `Ending`, and the operator's `end_wait` applies
it in the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TaskFailedEvent, TaskSuccessEvent, TriggerEvent

from fanout import names
from fanout.airflow.base import FanoutOperator
from fanout.records import StepFailure

# A deferred ACR build's trigger checks first this long after the deferral: the build resumes
# on a worker, and a resume within seconds of a deferral meets apache/airflow#72716.
SETTLE_SECONDS = 8.0


@dataclass(frozen=True)
class Ending:
    """How a wait ends its task, given the trigger's event {status, detail, waited, …}.

    `cause` is a str.format template over the event's fields; it becomes the failure record's
    cause. `result` is added to the event to make the task's return value on success.
    """

    region: str | None
    gate: str
    cause: str = "{detail} (gave up after {waited:.0f} s)"
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Ending:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def conclude(self, event: Mapping[str, Any]) -> tuple[bool, dict[str, Any], str]:
        """(passed, xcoms to record, one line for the log) for the wait's final event."""
        if event["status"] == "ok":
            line = f"{self.region or 'release'}: {self.gate} passed after {event['waited']:.1f} s: {event['detail']}"
            return True, {"return_value": {**event, **self.result}}, line
        # "failed": the trigger found what waiting cannot fix; `cause` describes running out of time.
        template = self.cause if event["status"] == "timeout" else "{detail} (after {waited:.0f} s)"
        failure = StepFailure(self.region, self.gate, template.format(**event))
        return False, {names.FAILURE_KEY: failure.to_xcom()}, f"{self.region}: {self.gate} failed: {failure.cause}"


class EndingTrigger(BaseTrigger):
    """A trigger that ends its task itself when it carries an `Ending` (see the module doc)."""

    def __init__(self, *, ending: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ending = dict(ending) if ending else None

    def final_event(self, event: dict[str, Any], ending: Mapping[str, Any] | None = None) -> TriggerEvent:
        """The event that ends the wait, concluded with `ending` (default: the trigger's own)."""
        ending = ending or self.ending
        if ending is None:
            return TriggerEvent(event)
        if self.task_instance is None:
            return TriggerEvent({**event, "ending": dict(ending)})
        passed, xcoms, line = Ending.of(ending).conclude(event)
        if passed:
            self.log.info("%s", line)
            return TaskSuccessEvent(xcoms=xcoms)
        self.log.error("%s", line)
        return TaskFailedEvent(xcoms=xcoms)


class Polling(Protocol):
    """What `wait` needs of a trigger (fanout.airflow.triggers.PollingTrigger has it)."""

    ending: dict[str, Any] | None
    last_detail: str

    def poll_inline(self, budget: float) -> dict[str, Any] | None: ...


class WaitingMixin:
    """For an operator whose task is a wait: `wait` and `pause` defer to a trigger that ends the task.
    The operator records a failure its own way (FanoutOperator.record_failure)."""

    record_failure: Callable[[Context, dict[str, Any]], None]

    def wait(self, context: Context, trigger: Polling, ending: Ending, *, look_first: bool = True) -> Any:
        """One look in the worker (`look_first`), then defer; the trigger ends the task."""
        if look_first:
            event = trigger.poll_inline(0)
            if event is not None:
                return self.end_wait(context, {**event, "ending": ending.as_dict()})
        self.log.info("deferring (%s)", trigger.last_detail)
        trigger.ending = ending.as_dict()
        self.defer(trigger=trigger, method_name="end_wait")

    def pause(self, seconds: float) -> None:
        """Wait `seconds` in the triggerer; the trigger ends the task successfully."""
        if seconds > 0:
            trigger = TimeDeltaTrigger(timedelta(seconds=seconds), end_from_trigger=True)
            self.defer(trigger=trigger, method_name="end_wait")

    def end_wait(self, context: Context, event: Any) -> Any:
        """End the task in the worker as the trigger would have: after a first look that decided,
        or under `airflow dags test` (see the module doc)."""
        if not isinstance(event, Mapping):
            # A task-end event replayed by `dags test`: only its state is left.
            if event == "success":
                return None
            raise AirflowFailException(f"{self.task_id}: the trigger ended it as {event}")
        event = dict(event)
        passed, xcoms, line = Ending.of(event.pop("ending")).conclude(event)
        if passed:
            self.log.info("%s", line)
            return xcoms["return_value"]
        self.record_failure(context, xcoms[names.FAILURE_KEY])
        self.log.error("%s", line)  # the task log's own line, not only the exception's traceback
        raise AirflowFailException(line)


class WaitingOperator(WaitingMixin, FanoutOperator):
    """A Fanout task whose work is waiting for an outside system (or for time to pass)."""

    def ending(self, gate: str | None = None, **kwargs: Any) -> Ending:
        """How this step's wait ends: named by its region and step (or the check `gate` within it),
        as `fail` names a failure."""
        return Ending(self.region, gate or self.step or self.task_id, **kwargs)
