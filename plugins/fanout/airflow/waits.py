"""How a Fanout task waits: a PollingTrigger's condition, or a pause, held in the triggerer.

Waits poll in the worker for a few seconds first and defer only if they last
(PollingTrigger.poll_inline says why: Airflow 3.3 fails a deferred task whose trigger fires
within seconds, apache/airflow#71580, #72716).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import Context

from fanout.airflow.base import FanoutOperator
from fanout.airflow.triggers import PollingTrigger

# Waits run in the worker for this long before they defer, and a deferred trigger checks first
# this long after the deferral.
INLINE_SECONDS = 10.0
SETTLE_SECONDS = 8.0


class WaitingOperator(FanoutOperator):
    """A Fanout task whose work is mostly waiting for an outside system."""

    def wait(self, context: Context, trigger: PollingTrigger, method_name: str) -> Any:
        """Wait for `trigger`'s condition: in the worker first, deferred (holding no slot) if it lasts."""
        event = trigger.poll_inline(INLINE_SECONDS)
        if event is not None:
            return getattr(self, method_name)(context, event)
        self.log.info("still waiting after %.0f s (%s): deferring", INLINE_SECONDS, trigger.last_detail)
        trigger.not_before = time.time() + SETTLE_SECONDS
        self.defer(trigger=trigger, method_name=method_name)

    def pause(self, seconds: float, method_name: str, context: Context) -> Any:
        """Wait `seconds`: in the worker when short, deferred otherwise (see INLINE_SECONDS)."""
        if seconds > INLINE_SECONDS:
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=seconds)), method_name=method_name)
        time.sleep(seconds)
        return getattr(self, method_name)(context)
