"""Notifications on task callbacks: Airflow's Apprise notifier, told what to say by fanout.notify.

Why Apprise (apache-airflow-providers-apprise): one notifier and one connection type reach Slack,
Microsoft Teams, e-mail and plain JSON webhooks alike, so a fleet picks its service without Fanout
changing; the service URLs, which carry the webhooks' secrets, live in the Airflow connection's
`config` extra, never in the fleet file.

Each notifier sits on the callback of the one task that knows its event, which runs in the task's
own process, so it can read the run's XCom: `validate` succeeding starts a release, `record`
succeeding ends it well, and a run fails through exactly one of `check_superseded`, `validate`,
`rebalance` (which fails every release whose regions failed) and `record` — so a failed run sends
exactly one failure message. A callback that cannot send logs why; it never fails the release.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.sdk import BaseNotifier, BaseOperator, Context, conf

from fanout import names
from fanout import notify as msg
from fanout.fleet import Fleet
from fanout.records import StepFailure

if TYPE_CHECKING:
    from airflow.providers.apprise.hooks.apprise import AppriseHook

# The tasks whose failure fails a release run (see the module's docstring).
RUN_ENDING = (names.CHECK_SUPERSEDED, names.VALIDATE, names.REBALANCE, names.RECORD)


class FanoutNotifier(BaseNotifier):
    """Sends the message `build(context, ui_url)` returns (nothing when it returns None), through
    the Apprise provider's hook. Not its AppriseNotifier: that imports apprise where the class is
    defined, and every task's DAG-file parse would pay for it (about 70 ms) to send nothing."""

    def __init__(self, *, conn_id: str, ui_url: str | None, build: Callable[..., msg.Message | None]) -> None:
        super().__init__()
        self.apprise_conn_id, self.ui_url, self.build = conn_id, ui_url, build

    @cached_property
    def hook(self) -> AppriseHook:
        from airflow.providers.apprise.hooks.apprise import AppriseHook

        return AppriseHook(apprise_conn_id=self.apprise_conn_id)

    def notify(self, context: Context) -> None:
        ui_url = self.ui_url or conf.get("api", "base_url", fallback=None) or None
        try:
            message = self.build(context, ui_url)
        except Exception:  # a message we cannot build must not hide the run's own outcome
            self.log.exception("cannot build the %s notification", getattr(self.build, "__name__", "?"))
            return
        if message is None:
            return
        self.log.info("notifying %s through %s: %s", message.event, self.apprise_conn_id, message.title)
        self.hook.notify(body=message.body, title=message.title, notify_type=message.level)


def _link(context: Context, ui_url: str | None) -> str | None:
    return msg.run_link(ui_url, context["dag"].dag_id, context["run_id"])


def _app(context: Context) -> str:
    return context["dag"].dag_id.removeprefix("release_").removeprefix("fleet_consistency_")


def started(context: Context, ui_url: str | None) -> msg.Message | None:
    params, ti = context["params"], context["ti"]
    if params.get("dry_run"):
        return None
    waves = (ti.xcom_pull(task_ids=names.VALIDATE) or {}).get("waves") or []
    return msg.release_started(
        _app(context), context["run_id"], params.get("git_sha"), params.get("source_ref"), waves, _link(context, ui_url)
    )


def succeeded(context: Context, ui_url: str | None) -> msg.Message | None:
    record = context["ti"].xcom_pull(task_ids=names.RECORD) or {}
    return msg.release_succeeded(
        _app(context), context["run_id"], record.get("digest"), record.get("git_sha"),
        record.get("regions") or [], record.get("held_back"), _link(context, ui_url),
    )  # fmt: skip


def failed(context: Context, ui_url: str | None) -> msg.Message | None:
    ti = context["ti"]
    recorded = ti.xcom_pull(task_ids=ti.task_id, key=names.RUN_FAILURES_KEY) or []
    failures = [f for item in recorded if (f := StepFailure.from_xcom(item))]
    if not failures:
        failures = [StepFailure(None, ti.task_id, str(context.get("exception") or "see the task's log"))]
    return msg.release_failed(_app(context), context["run_id"], failures, _link(context, ui_url))


def approval(context: Context, ui_url: str | None) -> msg.Message | None:
    ti, task = context["ti"], context["task"]
    server = getattr(ti, "_ti_context_from_server", None)
    if server is not None and getattr(server, "next_method", None):
        return None  # resumed after the answer: the request was sent when the task started
    link = msg.approval_link(ui_url, ti.dag_id, ti.run_id, ti.task_id)
    minutes = int(task.response_timeout.total_seconds() // 60) if task.response_timeout else 0
    return msg.waiting_for_approval(_app(context), context["run_id"], str(task.subject), link, minutes)


def hotfix_approval(context: Context, ui_url: str | None) -> msg.Message | None:
    """approve_hotfix runs in every release and asks only in a hotfix run."""
    return approval(context, ui_url) if context["params"].get("hotfix") else None


def rolled_back(context: Context, ui_url: str | None) -> msg.Message | None:
    outcome = context["ti"].xcom_pull(task_ids=context["ti"].task_id)
    if not outcome:
        return None
    return msg.rolled_back(_app(context), context["run_id"], outcome, _link(context, ui_url))


def rolled_back_all(context: Context, ui_url: str | None) -> msg.Message | None:
    outcome = context["ti"].xcom_pull(task_ids=names.ROLLBACK_ALL) or {}
    rolled = outcome.get("rolled_back") or {}
    return msg.rolled_back_all(_app(context), context["run_id"], rolled, _link(context, ui_url)) if rolled else None


def drift(context: Context, ui_url: str | None) -> msg.Message | None:
    report = context["ti"].xcom_pull(task_ids=names.CLASSIFY) or {}
    return msg.drift_found(_app(context), report, context["run_id"], _link(context, ui_url))


def repair(context: Context, ui_url: str | None) -> msg.Message | None:
    outcome = context["ti"].xcom_pull(task_ids=names.REPAIR) or {}
    return msg.repair_started(_app(context), outcome, context["run_id"], _link(context, ui_url))


def attach(fleet: Fleet, tasks: dict[str, BaseOperator]) -> None:
    """Put the fleet's notifiers on the callbacks of the DAG's tasks (by task id); no-op without
    `notifications` in the fleet file."""
    settings = fleet.notifications
    if settings is None:
        return
    events = set(settings.events)

    def add(task: BaseOperator, kind: str, event: str, build: Callable[..., msg.Message | None]) -> None:
        if event not in events:
            return
        notifier = FanoutNotifier(conn_id=settings.conn_id, ui_url=settings.ui_url, build=build)
        current = getattr(task, kind) or []
        setattr(task, kind, [*(current if isinstance(current, list) else [current]), notifier])

    for task_id, task in tasks.items():
        if task_id == names.VALIDATE:
            add(task, "on_success_callback", "started", started)
        if task_id == names.RECORD:
            add(task, "on_success_callback", "succeeded", succeeded)
        if task_id in RUN_ENDING:
            add(task, "on_failure_callback", "failed", failed)
        if task_id == names.APPROVE_AFTER_CANARY:
            add(task, "on_execute_callback", "approval", approval)
        if task_id == names.APPROVE_HOTFIX:
            add(task, "on_execute_callback", "approval", hotfix_approval)
        if task_id.endswith(f".{names.ROLLBACK}"):
            add(task, "on_success_callback", "rolled-back", rolled_back)
        if task_id == names.ROLLBACK_ALL:
            add(task, "on_success_callback", "rolled-back", rolled_back_all)
        if task_id == names.CLASSIFY:
            add(task, "on_success_callback", "drift", drift)
        if task_id == names.REPAIR:
            add(task, "on_success_callback", "repair", repair)
