"""Deferrable waits: each polls one outside system until a condition holds or a deadline
passes, in the triggerer, holding no worker slot. Every event carries what the operator
needs to say what happened: status, detail, seconds waited. The triggers build their clients
with FleetHook from the run's fleet snapshot, as the workers do."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import TriggerEvent

from fanout.adapters.azure_credentials import AzureAdapterError, scrub
from fanout.adapters.builder import BuildError
from fanout.adapters.cluster import ClusterError
from fanout.adapters.metrics import MetricError
from fanout.adapters.registry import RegistryError, RegistryUnusable
from fanout.airflow.base import current_hold
from fanout.airflow.hooks import FleetHook
from fanout.airflow.waits import Ending, EndingTrigger
from fanout.fleet import Fleet, FleetError
from fanout.metric_gates import Verdict, evaluate, gate_outcome
from fanout.policy import rollout_status
from fanout.records import FleetSnapshot

if TYPE_CHECKING:
    from fanout.adapters.acr_tasks import AcrTasksBuilder, RunState

PROGRESS_SECONDS = 30.0  # how often a wait that has not ended says what it is still waiting for


class WaitFailed(Exception):
    """Raised by `check()` when waiting longer cannot change the answer: the wait ends at once
    with status "failed" instead of at its deadline with "timeout"."""


class PollingTrigger(EndingTrigger):
    """Poll `check()` every `poll_seconds` until it says done or `timeout_seconds` pass.

    `started_at` travels with the serialized trigger, so a triggerer restart does not
    restart the clock. `not_before` (epoch seconds) holds the first check back. Given an
    `ending`, the trigger ends its task itself (fanout.airflow.waits).
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        poll_seconds: float = 2.0,
        started_at: float | None = None,
        not_before: float | None = None,
        ending: dict[str, Any] | None = None,
    ):
        super().__init__(ending=ending)
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds
        self.started_at = started_at or time.time()
        self.not_before = not_before
        self.last_detail = "not checked yet"
        self._reported = 0.0

    def _kwargs(self) -> dict[str, Any]:
        return {
            "timeout_seconds": self.timeout_seconds,
            "poll_seconds": self.poll_seconds,
            "started_at": self.started_at,
            "not_before": self.not_before,
            "ending": self.ending,
        }

    async def check(self) -> tuple[bool, str]:
        raise NotImplementedError

    def _report(self, waited: float) -> None:
        """A line every PROGRESS_SECONDS, so that a long wait says what it waits for while it waits
        (the triggerer's log, or the console under `airflow dags test`)."""
        if waited - self._reported >= PROGRESS_SECONDS:
            self._reported = waited
            where = getattr(self, "region", None)
            what = f"{where}: " if where else ""
            limit, detail = self.timeout_seconds, self.last_detail
            self.log.info("%sstill waiting after %.0f s of %.0f s: %s", what, waited, limit, detail)

    def close(self) -> None:
        """Release what `check()` opened (subclasses that hold resources override this)."""

    async def _poll(self, budget: float | None) -> dict[str, Any] | None:
        """Poll until done, timed out (the event payload) or `budget` seconds are used up (None)."""
        end = None if budget is None else time.monotonic() + budget
        while True:
            try:
                done, self.last_detail = await self.check()
            except WaitFailed as err:
                return {"status": "failed", "detail": str(err), "waited": round(time.time() - self.started_at, 1)}
            waited = round(time.time() - self.started_at, 1)
            if done:
                return {"status": "ok", "detail": self.last_detail, "waited": waited}
            if waited >= self.timeout_seconds:
                return {"status": "timeout", "detail": self.last_detail, "waited": waited}
            self._report(waited)
            if end is not None and time.monotonic() + self.poll_seconds > end:
                return None
            await asyncio.sleep(self.poll_seconds)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            if self.not_before:
                await asyncio.sleep(max(0.0, self.not_before - time.time()))
            event = await self._poll(None)
            assert event is not None  # no budget: only done or timeout end the loop
            yield self.final_event(event)
        finally:
            self.close()

    def poll_inline(self, budget: float) -> dict[str, Any] | None:
        """The same wait, in the worker, for at most `budget` seconds: the event if it ended, else None.

        With budget 0 it checks once: a wait whose condition already holds ends in the worker."""
        try:
            return asyncio.run(self._poll(budget))
        finally:
            self.close()


def phase(trigger: PollingTrigger, ending: Ending, delay: float = 0.0) -> dict[str, Any]:
    """One phase of a PhasesTrigger: `trigger`'s wait, begun `delay` seconds after the phase
    before it passed, ended as `ending` says when it does not pass."""
    classpath, kwargs = trigger.serialize()
    return {"classpath": classpath, "kwargs": kwargs, "ending": ending.as_dict(), "delay": delay}


class PhasesTrigger(EndingTrigger):
    """Several waits one after another in one deferral: one trigger pickup and one task boundary
    instead of one per wait, which is most of what a short wait costs on the critical path.

    Each phase's clock starts when the phase begins. The first phase that does not pass ends the
    task with its own `Ending`, so the failure names that check; when all pass, the trigger's
    `ending` ends it with every phase's result under `phases`. A triggerer restart begins again
    at the first phase: each is a check of the present state, so repeating one is only slower.
    """

    def __init__(self, *, phases: list[dict[str, Any]], ending: dict[str, Any] | None = None):
        super().__init__(ending=ending)
        self.phases = [dict(p) for p in phases]
        self.last_detail = f"{len(self.phases)} checks, none begun"

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.PhasesTrigger", {"phases": self.phases, "ending": self.ending}

    @staticmethod
    def _build(item: dict[str, Any]) -> PollingTrigger:
        module, _, name = item["classpath"].rpartition(".")
        trigger = getattr(importlib.import_module(module), name)(**item["kwargs"])
        trigger.started_at = time.time()
        trigger.not_before = trigger.started_at + item["delay"] if item["delay"] else None
        return trigger

    async def run(self) -> AsyncIterator[TriggerEvent]:
        started, passed = time.time(), {}
        for item in self.phases:
            ending = Ending.of(item["ending"])
            event: dict[str, Any] = {}
            async for fired in self._build(item).run():
                event = fired.payload
            if event.get("status") != "ok":
                yield self.final_event(event, item["ending"])
                return
            self.log.info("%s", ending.conclude(event)[2])
            passed[ending.gate] = {k: event[k] for k in ("detail", "waited")}
        details = "; ".join(f"{gate}: {p['detail']}" for gate, p in passed.items())
        yield self.final_event(
            {"status": "ok", "detail": details, "waited": round(time.time() - started, 1), "phases": passed}
        )


class FleetTrigger(PollingTrigger):
    """A wait on one of the fleet's outside systems. It carries the run's fleet snapshot and
    builds its clients with FleetHook, exactly as a worker does: coordinates and connection ids
    travel, never a credential (the triggerer reads the Airflow connection itself).
    `hook_options` are FleetHook's test overrides (ARM URL, CA bundle); empty in production."""

    def __init__(self, *, fleet: dict[str, Any], hook_options: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.fleet = fleet
        self.hook_options = dict(hook_options or {})
        self._hook: FleetHook | None = None

    @property
    def fleet_model(self) -> Fleet:
        return FleetSnapshot(**self.fleet).fleet()

    def _kwargs(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "hook_options": self.hook_options, **super()._kwargs()}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {**self._own_kwargs(), **self._kwargs()}

    def _own_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    async def hook(self) -> FleetHook:
        if self._hook is None:
            # Parsing the snapshot and reading the connection are blocking: keep them off the loop.
            try:
                fleet = await asyncio.to_thread(lambda: self.fleet_model)
            except FleetError as err:  # the run's own snapshot: no wait makes it valid
                raise WaitFailed(str(err)) from None
            self._hook = FleetHook(fleet, **self.hook_options)
        return self._hook

    def close(self) -> None:
        if self._hook is not None:
            self._hook.close()
        self._hook = None


class ReplicationTrigger(FleetTrigger):
    """Until `region`'s registry replica serves `digest`, asked as a pull in that region would."""

    def __init__(self, *, region: str, digest: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.region, self.digest = region, digest
        self._registry: Any = None

    def _own_kwargs(self) -> dict[str, Any]:
        return {"region": self.region, "digest": self.digest}

    def close(self) -> None:
        self._registry = None  # the hook closes it
        super().close()

    async def check(self) -> tuple[bool, str]:
        try:
            hook = await self.hook()
            if self._registry is None:
                self._registry = await asyncio.to_thread(hook.registry, self.region)
            present = await self._registry.has_manifest_async(hook.fleet.registry.repository, self.digest)
        except RegistryUnusable as err:  # no replica, 401/403, unknown host: waiting changes nothing
            raise WaitFailed(str(err)) from None
        except (RegistryError, ValueError) as err:
            return False, str(err)
        return present, ("present" if present else f"{self._registry.endpoint} does not have it yet")


class RolloutTrigger(FleetTrigger):
    """Until `region`'s Deployment has rolled out `digest` on every replica."""

    def __init__(self, *, region: str, digest: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.region, self.digest = region, digest

    def _own_kwargs(self) -> dict[str, Any]:
        return {"region": self.region, "digest": self.digest}

    async def check(self) -> tuple[bool, str]:
        try:
            hook = await self.hook()
            # hook.cluster refreshes an AKS kubeconfig before its token expires.
            cluster = await asyncio.to_thread(hook.cluster, self.region)
            app = hook.fleet.app
            deployment = await asyncio.to_thread(cluster.deployment, app.namespace, app.name)
        except (ClusterError, RuntimeError, ValueError) as err:
            return False, str(err)
        status = rollout_status(deployment, self.digest)
        return status.done, status.reason


class HttpGateTrigger(FleetTrigger):
    """Until `region`'s edge answers healthy and serves `digest` on `needed` probes in a row."""

    def __init__(self, *, region: str, digest: str | None, needed: int, streak: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.region, self.digest, self.needed, self.streak = region, digest, needed, streak

    def _own_kwargs(self) -> dict[str, Any]:
        return {"region": self.region, "digest": self.digest, "needed": self.needed, "streak": self.streak}

    async def check(self) -> tuple[bool, str]:
        hook = await self.hook()
        probe = await asyncio.to_thread(hook.edge(self.region).probe)
        good = probe.healthy and (self.digest is None or probe.digest == self.digest)
        self.streak = self.streak + 1 if good else 0
        detail = probe.detail
        if not good and probe.healthy:
            detail = f"edge serves {probe.digest}, expected {self.digest}"
        return self.streak >= self.needed, f"{detail} ({self.streak}/{self.needed} good probes in a row)"


class MonitorOnlineTrigger(FleetTrigger):
    """Until Traffic Manager's monitor reports the region's endpoint Online (read in the triggerer)."""

    def __init__(self, *, region: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.region = region

    def _own_kwargs(self) -> dict[str, Any]:
        return {"region": self.region}

    async def check(self) -> tuple[bool, str]:
        hook = await self.hook()
        endpoint = hook.fleet.region(self.region).endpoint.name
        endpoints = await asyncio.to_thread(hook.traffic_manager().endpoints)
        status = endpoints[endpoint].monitor_status
        return status == "Online", f"endpoint {endpoint} monitor status {status}"


class HoldTrigger(FleetTrigger):
    """Until nothing holds `region` back (fanout.controls.hold): `fanout unfreeze` or `resume`, or
    its deploy window opening, ends the wait within a poll. A freeze that now refuses ends it at once."""

    def __init__(self, *, region: str, hotfix: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.region, self.hotfix = region, hotfix

    def _own_kwargs(self) -> dict[str, Any]:
        return {"region": self.region, "hotfix": self.hotfix}

    async def check(self) -> tuple[bool, str]:
        fleet = (await self.hook()).fleet
        held, _ = await asyncio.to_thread(current_hold, fleet, self.region, self.hotfix)
        if held is None:
            return True, "nothing holds it back"
        if held.refuse:
            raise WaitFailed(held.line)
        if held.line != self.last_detail:  # a new reason (unfrozen, but paused): say it at once
            self.log.info("%s is held back: %s", self.region, held.line)
        return False, held.line


class AcrRunTrigger(FleetTrigger):
    """Until ACR Tasks run `run_id` ends: the quick build BuildImageOperator started.

    The event says how the run ended, with the full message in `detail`: `ok` with the pushed
    `digest` and `images`; `failed` with the run's status, error, log command and log tail;
    `timeout` when our deadline came first, after asking ACR to cancel the run (`cancelled`).
    """

    # A missing run or a refused credential does not heal by waiting, unlike 429/5xx (which the
    # SDK has already retried) or a dropped connection; polling on would only hide it for an hour.
    FATAL_STATUS = (401, 403, 404)

    def __init__(self, *, run_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.run_id = run_id
        self._tasks: AcrTasksBuilder | None = None
        self._state: RunState | None = None
        self._fatal: str | None = None

    def _own_kwargs(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def _link(self) -> str:
        from fanout.adapters.acr_tasks import run_log_link

        reg = self.fleet_model.registry
        return run_log_link(str(reg.subscription), str(reg.resource_group), str(reg.name), self.run_id)

    async def _builder(self) -> AcrTasksBuilder:
        if self._tasks is None:
            hook = await self.hook()
            self._tasks = await asyncio.to_thread(hook.acr_tasks)
        return self._tasks

    def close(self) -> None:
        if self._tasks is not None:
            self._tasks.close()
        self._tasks = None
        super().close()

    async def on_kill(self) -> None:
        """The task was marked failed or cleared while the build ran: cancel the run in ACR too."""
        try:
            tasks = await self._builder()
            cancelled = await asyncio.to_thread(tasks.cancel, self.run_id)
        except Exception as err:  # a kill must not fail; say why the run goes on
            self.log.warning("ACR Tasks run %s: could not cancel it: %s", self.run_id, scrub(str(err)))
            return
        finally:
            self.close()
        self.log.info("ACR Tasks run %s: %s", self.run_id, "cancelled" if cancelled else "cancel refused")

    async def check(self) -> tuple[bool, str]:
        # In threads: reading the connection and the SDK calls are blocking I/O.
        try:
            tasks = await self._builder()
        except Exception as err:
            # Whatever stops us reading the connection (missing, wrong cloud, no credential) will
            # not change by waiting: report it now instead of at the deadline.
            conn_id = self.fleet_model.azure.conn_id
            self._fatal = scrub(f"ACR Tasks run {self.run_id}: cannot use connection '{conn_id}': {err}")
            return True, self._fatal
        try:
            state = await asyncio.to_thread(tasks.state, self.run_id)
        except AzureAdapterError as err:
            if err.status_code in self.FATAL_STATUS:
                self._fatal = str(err)
                return True, self._fatal
            return False, str(err)
        if self._state is None or state.status != self._state.status:
            self.log.info("ACR Tasks run %s: %s", self.run_id, state.status)
        self._state = state
        return state.done, f"run {self.run_id} {state.status}"

    async def _poll(self, budget: float | None) -> dict[str, Any] | None:
        event = await super()._poll(budget)
        return None if event is None else await asyncio.to_thread(self._outcome, event)

    def _outcome(self, event: dict[str, Any]) -> dict[str, Any]:
        """The base event (done or deadline) turned into how the run ended."""
        link = self._link()
        status = self._state.status if self._state else "Unknown"
        out = {**event, "run_id": self.run_id, "run_status": status, "log": link}
        if event["status"] == "timeout":
            cancelled = self._tasks is not None and self._tasks.cancel(self.run_id)
            what = "cancelled it" if cancelled else "could not cancel it; it ends at its own timeout"
            out["detail"] = (
                f"ACR Tasks on registry '{self.fleet_model.registry.name}': run {self.run_id} still {status} after "
                f"{event['waited']:.0f} s; {what} ({event['detail']})\nlog: {link}"
            )
            return {**out, "cancelled": cancelled}
        if self._fatal is not None or self._state is None or self._tasks is None:
            error = self._fatal or event["detail"]
            return {**out, "status": "failed", "error": error, "detail": f"{error}\nlog: {link}"}
        state, tasks = self._state, self._tasks
        if state.status == "Succeeded":
            try:
                digest = tasks.digest_of(state)
            except BuildError as err:
                return {**out, "status": "failed", "error": str(err), "detail": f"{err}\nlog: {link}"}
            pushed = ", ".join(state.images)
            return {**out, "digest": digest, "images": list(state.images), "detail": f"pushed {pushed}"}
        tail = tasks.log_tail(self.run_id)
        return {**out, "status": "failed", "error": state.error, "log_tail": tail, "detail": tasks.failure(state, tail)}


class MetricGatesTrigger(FleetTrigger):
    """Once `region`'s window is over, what its users felt on `digest` against the fleet's metric
    gates. Ends `ok` with every verdict, or `failed` naming check, observed, baseline and threshold;
    an unreadable metric source is retried until the deadline."""

    def __init__(self, *, region: str, digest: str, window_start: float, baselines: dict[str, list[str]],
                 **kwargs: Any):  # fmt: skip
        super().__init__(**kwargs)
        self.region, self.digest, self.window_start, self.baselines = region, digest, window_start, baselines
        self.verdicts: list[dict[str, Any]] = []

    def _own_kwargs(self) -> dict[str, Any]:
        return {"region": self.region, "digest": self.digest, "window_start": self.window_start,
                "baselines": self.baselines}  # fmt: skip

    def _judge(self, hook: FleetHook) -> tuple[bool, str, list[Verdict]]:
        gates = hook.fleet.gates.metrics
        if gates is None:
            raise WaitFailed("the run's fleet snapshot has no gates.metrics")
        end = self.window_start + gates.window_seconds
        verdicts = evaluate(gates, hook.metrics, self.region, self.digest, self.baselines, self.window_start, end)
        return *gate_outcome(gates, verdicts), verdicts

    async def check(self) -> tuple[bool, str]:
        hook = await self.hook()
        try:
            passed, line, verdicts = await asyncio.to_thread(self._judge, hook)
        except MetricError as err:
            return False, str(err)
        self.verdicts = [v.to_xcom() for v in verdicts]
        for verdict in verdicts:
            self.log.info("%s", verdict.line())
        if not passed:
            raise WaitFailed(line)
        return True, line

    async def _poll(self, budget: float | None) -> dict[str, Any] | None:
        event = await super()._poll(budget)
        return None if event is None else {**event, "verdicts": self.verdicts}
