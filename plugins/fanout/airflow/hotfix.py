"""The hotfix path: a run with `hotfix: true` waits before any region changes for one of the
fleet's named approvers (Airflow's human-in-the-loop approval, `rollout.hotfix.approvers`). Once
approved it may pass a freeze and bakes and soaks `rollout.hotfix`'s shorter times; pairs, drain
limits, minimum serving and every gate apply as to any release. Any other run passes at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Context, Variable
from airflow.sdk.exceptions import AirflowSkipException

from fanout import names


class HotfixApprovalOperator(ApprovalOperator):
    ui_color = "#fbefe0"

    def __init__(self, *, app: str, approvers: list[str], **kwargs: Any) -> None:
        super().__init__(
            subject=f"Approve a hotfix release of {app}?",
            assigned_users=[{"id": who, "name": who} for who in approvers],
            fail_on_reject=True,
            **kwargs,
        )
        self.app = app

    def execute(self, context: Context) -> Any:
        params = context["params"]
        if params.get("dry_run"):
            raise AirflowSkipException("dry run: nothing is changed")
        if not params.get("hotfix"):
            self.log.info("not a hotfix run: nothing to approve")
            return None
        self.body = f"Reason: {params.get('hotfix_reason')}\n\nRun {context['run_id']}, git {params['git_sha']}."
        self.log.info("hotfix: waiting for one of %s to approve", ", ".join(u["id"] for u in self.assigned_users))
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context=context, event=event)  # a rejection fails the run here
        approver = (result.get("responded_by_user") or {}).get("name") or "?"
        now = datetime.now(UTC)
        reason = context["params"].get("hotfix_reason")
        summary = f"hotfix {context['run_id']} approved by {approver}: {reason}"
        # An audit record like `fanout audit`'s own (fanout.controls_cli), kept in Airflow's database.
        key, value = names.audit_record(self.app, approver, now)
        Variable.set(key, value, description=summary)
        self.log.info("%s", summary)
        return {"approved_by": approver, "reason": reason}
