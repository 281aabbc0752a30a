"""Deferrable waits: each polls one outside system until a condition holds or a deadline
passes, in the triggerer, holding no worker slot. Every event carries what the operator
needs to say what happened: status, detail, seconds waited."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fanout.adapters.acr_tasks import AcrTasksBuilder, RunState, run_log_link
from fanout.adapters.azure_credentials import AzureAdapterError, scrub
from fanout.adapters.builder import BuildError
from fanout.adapters.cluster import Cluster, ClusterError
from fanout.adapters.registry import OciRegistry, RegistryError, RegistryUnusable
from fanout.policy import rollout_status


class WaitFailed(Exception):
    """Raised by `check()` when waiting longer cannot change the answer: the wait ends at once
    with status "failed" instead of at its deadline with "timeout"."""


class PollingTrigger(BaseTrigger):
    """Poll `check()` every `poll_seconds` until it says done or `timeout_seconds` pass.

    `started_at` travels with the serialized trigger, so a triggerer restart does not
    restart the clock. `not_before` (epoch seconds) holds the first check back: see
    `poll_inline` for why an operator sets it when it defers.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        poll_seconds: float = 2.0,
        started_at: float | None = None,
        not_before: float | None = None,
    ):
        super().__init__()
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds
        self.started_at = started_at or time.time()
        self.not_before = not_before
        self.last_detail = "not checked yet"

    def _kwargs(self) -> dict[str, Any]:
        return {
            "timeout_seconds": self.timeout_seconds,
            "poll_seconds": self.poll_seconds,
            "started_at": self.started_at,
            "not_before": self.not_before,
        }

    async def check(self) -> tuple[bool, str]:
        raise NotImplementedError

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
            if end is not None and time.monotonic() + self.poll_seconds > end:
                return None
            await asyncio.sleep(self.poll_seconds)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            if self.not_before:
                await asyncio.sleep(max(0.0, self.not_before - time.time()))
            event = await self._poll(None)
            assert event is not None  # no budget: only done or timeout end the loop
            yield TriggerEvent(event)
        finally:
            self.close()

    def poll_inline(self, budget: float) -> dict[str, Any] | None:
        """The same wait, in the worker, for at most `budget` seconds: the event if it ended, else None.

        Most waits of a release are over in seconds (a replica a few seconds behind, a rollout
        kwok finishes at once, three probes a second apart), and a deferral costs a task restart.
        Worse, Airflow 3.3 fails a deferred task whose trigger fires within seconds: the scheduler
        drains the deferring process's exit event after the resumed try is already running and
        takes it for a task killed externally (apache/airflow#71580, #72716). So an operator polls
        here first and defers only a wait that is still going, with `not_before` a few seconds out.
        """
        try:
            return asyncio.run(self._poll(budget))
        finally:
            self.close()


class ReplicationTrigger(PollingTrigger):
    """Until the region's registry replica serves `digest` (HEAD /v2/<repo>/manifests/<digest>).

    For ACR (`registry_kind="acr"`, inferred from an `*.azurecr.io` endpoint) the trigger reads the
    Airflow connection `conn_id` at run time — no credential is serialized — and, given `acr`
    (subscription, resource_group, registry, region), also checks the replica is Ready.
    FleetHook.replication_trigger_kwargs(region) gives all of these.
    """

    def __init__(
        self, *, endpoint: str, insecure: bool, repository: str, digest: str, registry_kind: str | None = None,
        conn_id: str | None = None, acr: dict[str, str] | None = None, **kwargs: Any,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.endpoint, self.insecure, self.repository, self.digest = endpoint, insecure, repository, digest
        acr_host = endpoint.split(":")[0].lower().endswith((".azurecr.io", ".azurecr.us", ".azurecr.cn"))
        self.registry_kind = registry_kind or ("acr" if acr_host else "oci")
        self.conn_id = conn_id or ("azure_default" if self.registry_kind == "acr" else None)
        self.acr = acr
        self._registry: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.ReplicationTrigger",
            {"endpoint": self.endpoint, "insecure": self.insecure, "repository": self.repository,
             "digest": self.digest, "registry_kind": self.registry_kind, "conn_id": self.conn_id,
             "acr": self.acr, **self._kwargs()},
        )  # fmt: skip

    def _client(self) -> Any:
        if self._registry is None:
            if self.registry_kind == "acr":
                from fanout.adapters.acr import acr_replica_from_connection

                self._registry = acr_replica_from_connection(self.conn_id, self.endpoint, self.acr)
            else:
                self._registry = OciRegistry(self.endpoint, self.insecure)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
        self._registry = None

    async def check(self) -> tuple[bool, str]:
        try:
            present = await self._client().has_manifest_async(self.repository, self.digest)
        except RegistryUnusable as err:
            raise WaitFailed(str(err)) from None
        except (RegistryError, ValueError) as err:
            return False, str(err)
        return present, ("present" if present else f"{self.endpoint} does not have it yet")


class RolloutTrigger(PollingTrigger):
    """Until the Deployment has rolled out `digest` on every replica."""

    def __init__(
        self, *, kubeconfig: str, context: str, namespace: str, name: str, digest: str,
        aks: dict[str, str] | None = None, **kwargs: Any,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.kubeconfig, self.context, self.namespace, self.name, self.digest = (
            kubeconfig, context, namespace, name, digest,
        )  # fmt: skip
        # AKS: the cluster's coordinates and connection id (no kubeconfig travels); the trigger
        # fetches its own kubeconfig into a private folder it removes when it finishes.
        self.aks = aks

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.RolloutTrigger",
            {"kubeconfig": self.kubeconfig, "context": self.context, "namespace": self.namespace,
             "name": self.name, "digest": self.digest, "aks": self.aks, **self._kwargs()},
        )  # fmt: skip

    def close(self) -> None:
        if getattr(self, "_aks", None) is not None:
            self._aks.close()
        self._aks = None

    async def check(self) -> tuple[bool, str]:
        try:
            if self.aks:
                from fanout.adapters.aks import AksKubeconfigs

                self._aks = getattr(self, "_aks", None) or AksKubeconfigs.from_connection(**self.aks)
                cluster = Cluster(*await asyncio.to_thread(self._aks.get))
            else:
                cluster = Cluster(self.kubeconfig, self.context)
            deployment = await asyncio.to_thread(cluster.deployment, self.namespace, self.name)
        except (ClusterError, RuntimeError, ValueError) as err:
            return False, str(err)
        status = rollout_status(deployment, self.digest)
        return status.done, status.reason


def probe_edge(
    edge_url: str, health_path: str, version_path: str, timeout: float = 5.0
) -> tuple[bool, str | None, str]:
    """(healthy, digest served, detail) as a user routed to this region would see it."""
    try:
        with urllib.request.urlopen(edge_url + health_path, timeout=timeout) as response:
            healthy = response.status == 200
    except urllib.error.HTTPError as err:
        return False, None, f"{health_path} answered {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return False, None, f"edge unreachable: {getattr(err, 'reason', err)}"
    try:
        with urllib.request.urlopen(edge_url + version_path, timeout=timeout) as response:
            digest = json.loads(response.read()).get("digest")
    except (urllib.error.URLError, OSError, ValueError) as err:
        return healthy, None, f"{version_path} unusable: {getattr(err, 'reason', err)}"
    return healthy, digest, f"healthy={healthy} digest={digest}"


class HttpGateTrigger(PollingTrigger):
    """Until the edge answers healthy and serves `digest` on `needed` probes in a row."""

    def __init__(
        self, *, edge_url: str, health_path: str, version_path: str, digest: str | None, needed: int,
        streak: int = 0, **kwargs: Any,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.edge_url, self.health_path, self.version_path = edge_url, health_path, version_path
        self.digest, self.needed, self.streak = digest, needed, streak

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.HttpGateTrigger",
            {"edge_url": self.edge_url, "health_path": self.health_path, "version_path": self.version_path,
             "digest": self.digest, "needed": self.needed, "streak": self.streak, **self._kwargs()},
        )  # fmt: skip

    async def check(self) -> tuple[bool, str]:
        healthy, digest, detail = await asyncio.to_thread(
            probe_edge, self.edge_url, self.health_path, self.version_path
        )
        good = healthy and (self.digest is None or digest == self.digest)
        self.streak = self.streak + 1 if good else 0
        if not good and healthy:
            detail = f"edge serves {digest}, expected {self.digest}"
        return self.streak >= self.needed, f"{detail} ({self.streak}/{self.needed} good probes in a row)"


class AcrRunTrigger(PollingTrigger):
    """Until ACR Tasks run `run_id` ends: the quick build BuildImageOperator started.

    Like the other Azure triggers it carries coordinates and a connection id, never a credential;
    the triggerer builds its own client from connection `conn_id`. `base_url` None means the ARM
    endpoint of the connection's cloud. FleetHook.acr_run_trigger_kwargs(run_id) gives all of these.

    The event says how the run ended, with the full message in `detail`: `ok` with the pushed
    `digest` and `images`; `failed` with the run's status, error, log command and log tail;
    `timeout` when our deadline came first, after asking ACR to cancel the run (`cancelled`).
    """

    # A missing run or a refused credential does not heal by waiting, unlike 429/5xx (which the
    # SDK has already retried) or a dropped connection; polling on would only hide it for an hour.
    FATAL_STATUS = (401, 403, 404)

    def __init__(
        self, *, run_id: str, conn_id: str, subscription: str, resource_group: str, registry: str,
        base_url: str | None = None, connection_verify: str | bool | None = None, **kwargs: Any,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.run_id, self.conn_id = run_id, conn_id
        self.subscription, self.resource_group, self.registry = subscription, resource_group, registry
        self.base_url, self.connection_verify = base_url, connection_verify
        self._tasks: AcrTasksBuilder | None = None
        self._state: RunState | None = None
        self._fatal: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.AcrRunTrigger",
            {"run_id": self.run_id, "conn_id": self.conn_id, "subscription": self.subscription,
             "resource_group": self.resource_group, "registry": self.registry, "base_url": self.base_url,
             "connection_verify": self.connection_verify, **self._kwargs()},
        )  # fmt: skip

    def _builder(self) -> AcrTasksBuilder:
        if self._tasks is None:
            self._tasks = AcrTasksBuilder.from_connection(
                self.conn_id, self.subscription, self.resource_group, self.registry,
                base_url=self.base_url, connection_verify=self.connection_verify,
            )  # fmt: skip
        return self._tasks

    def close(self) -> None:
        if self._tasks is not None:
            self._tasks.close()
        self._tasks = None

    async def on_kill(self) -> None:
        """The task was marked failed or cleared while the build ran: cancel the run in ACR too."""
        try:
            tasks = await asyncio.to_thread(self._builder)
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
            tasks = await asyncio.to_thread(self._builder)
        except Exception as err:
            # Whatever stops us reading the connection (missing, wrong cloud, no credential) will
            # not change by waiting: report it now instead of at the deadline.
            self._fatal = scrub(f"ACR Tasks run {self.run_id}: cannot use connection '{self.conn_id}': {err}")
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
        link = run_log_link(self.subscription, self.resource_group, self.registry, self.run_id)
        status = self._state.status if self._state else "Unknown"
        out = {**event, "run_id": self.run_id, "run_status": status, "log": link}
        if event["status"] == "timeout":
            cancelled = self._tasks is not None and self._tasks.cancel(self.run_id)
            what = "cancelled it" if cancelled else "could not cancel it; it ends at its own timeout"
            out["detail"] = (
                f"ACR Tasks on registry '{self.registry}': run {self.run_id} still {status} after "
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
