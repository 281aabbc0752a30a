"""Fanout's release operators: each does one step for one fleet (and one region).

The base class decides, before any work, whether the task has anything to do in this
run: a region outside the run's `regions` subset is skipped, and a dry run skips every
task but `validate`. So a dry run and a partial run use the same graph as a full one.
Outside systems are reached only through FleetHook; decisions come from fanout.policy.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from functools import cache, cached_property
from typing import Any, ClassVar, NoReturn

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from fanout.adapters.acr_tasks import AcrTasksBuilder
from fanout.adapters.azure_credentials import AzureAdapterError
from fanout.adapters.builder import BuildError
from fanout.adapters.helm import HelmError, render_chart
from fanout.airflow.hooks import FleetHook, helm_binary
from fanout.airflow.triggers import (
    AcrRunTrigger,
    HttpGateTrigger,
    PollingTrigger,
    ReplicationTrigger,
    RolloutTrigger,
    probe_edge,
)
from fanout.fleet import Fleet, load_fleet
from fanout.planner import PlanError, plan_waves
from fanout.policy import (
    DIGEST,
    PolicyError,
    chart_values,
    check_drain,
    final_traffic,
    rollback_all_targets,
    rollout_status,
    traffic_after_failure,
)
from fanout.routing import RoutingError, check_wave, explain_waves, profile_mismatches

# Region steps that record a failure, in the order they run.
STEPS = ("drain", "helm_deploy", "gate_rollout", "gate_http", "gate_soak", "gate_metric")
# Waits run in the worker for this long before they defer (PollingTrigger.poll_inline says why),
# and a deferred trigger checks first this long after the deferral.
INLINE_SECONDS = 10.0
SETTLE_SECONDS = 8.0
# The run's first task; when a newer queued run supersedes this one it records why under this key.
SUPERSEDING_TASK = "check_superseded"
SUPERSEDED_KEY = "superseded"


@cache
def fleet_at(path: str) -> Fleet:
    return load_fleet(path)


def targeted(params: dict[str, Any], region: str) -> bool:
    chosen = params.get("regions")
    return not chosen or region in chosen


class FanoutOperator(BaseOperator):
    """Base for every Fanout task. Subclasses implement `run`."""

    runs_on_dry_run: ClassVar[bool] = False
    ui_color = "#e8f1fb"

    def __init__(self, *, fleet_path: str, region: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)  # a failed gate must fail now, not be retried into a pass
        super().__init__(**kwargs)
        self.fleet_path = fleet_path
        self.region = region

    @property
    def fleet(self) -> Fleet:
        return fleet_at(self.fleet_path)

    @cached_property
    def hook(self) -> FleetHook:
        return FleetHook(self.fleet)

    def execute(self, context: Context) -> Any:
        params = context["params"]
        if self.region is not None and not targeted(params, self.region):
            raise AirflowSkipException(f"{self.region} is not in this run's regions {params.get('regions')}")
        if params.get("dry_run") and not self.runs_on_dry_run:
            raise AirflowSkipException("dry run: nothing is changed")
        return self.run(context)

    def run(self, context: Context) -> Any:
        raise NotImplementedError(f"{type(self).__name__} ({self.task_id}) has no implementation yet")

    def fail(self, context: Context, cause: str) -> None:
        """Record why this step failed (rollback and the run's final message read it), then fail."""
        step = self.task_id.split(".")[-1]
        context["ti"].xcom_push(key="failure", value={"region": self.region, "gate": step, "cause": cause})
        raise AirflowFailException(f"{self.region}: {step} failed: {cause}")

    # -- shared facts of the run -------------------------------------------------
    def release(self, context: Context) -> dict[str, Any]:
        built = context["ti"].xcom_pull(task_ids="build")
        if not built or not DIGEST.match(built.get("digest", "")):
            raise AirflowFailException("no release digest: the build task did not record one")
        return built

    def probe(self, region: str) -> tuple[bool, str | None, str]:
        """(healthy, digest served, detail) from the region's edge, as a user would see it."""
        gate = self.fleet.gates.http
        return probe_edge(self.fleet.region(region).edge_url, gate.health_path, gate.version_path)

    def endpoint_name(self) -> str:
        return self.fleet.region(self.region).endpoint.name

    def wait(self, context: Context, trigger: PollingTrigger, method_name: str) -> Any:
        """Wait for `trigger`'s condition: in the worker first, deferred (holding no slot) if it lasts."""
        event = trigger.poll_inline(INLINE_SECONDS)
        if event is not None:
            return getattr(self, method_name)(context, event)
        self.log.info("still waiting after %.0f s (%s): deferring", INLINE_SECONDS, trigger.last_detail)
        trigger.not_before = time.time() + SETTLE_SECONDS
        self.defer(trigger=trigger, method_name=method_name)

    def pause(self, seconds: int, method_name: str, context: Context) -> Any:
        """Wait `seconds`: in the worker when short, deferred otherwise (see INLINE_SECONDS)."""
        if seconds > INLINE_SECONDS:
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=seconds)), method_name=method_name)
        time.sleep(seconds)
        return getattr(self, method_name)(context)

    def task_states(self, context: Context, task_ids: list[str] | None = None) -> dict[str, str | None]:
        """The state of tasks of this run by task id (every task when `task_ids` is None).

        Trigger rules cannot tell a step that failed from one that never ran because an
        earlier wave failed (both count for one_failed), so the steps that react to a
        failure ask the run which tasks really failed.
        """
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[ti.run_id])
        return {task: (str(state) if state is not None else None) for task, state in states.get(ti.run_id, {}).items()}

    def failures(self, context: Context) -> list[dict[str, Any]]:
        """What failed in this run, one entry per failed task, each naming region, step and cause."""
        ti = context["ti"]
        found = []
        for task_id, state in sorted(self.task_states(context).items()):
            if state != "failed":
                continue
            recorded = ti.xcom_pull(task_ids=task_id, key="failure")
            group, _, step = task_id.rpartition(".")
            region = group.removeprefix("deploy_") if group.startswith("deploy_") else None
            if region is None and task_id.startswith("wait_replication_"):
                region, step = task_id.removeprefix("wait_replication_"), "wait_replication"
            found.append(recorded or {"region": region, "gate": step, "cause": f"task {task_id} failed; see its log"})
        return found


class ValidateReleaseOperator(FanoutOperator):
    """Refuse a run whose conf does not fit the fleet or whose chart does not render; print the plan."""

    runs_on_dry_run = True
    ui_color = "#fff7e0"

    def run(self, context: Context) -> dict[str, Any]:
        params = context["params"]
        # Airflow accepts conf keys no param declares; a misspelt "regoins" would then
        # release to every region. Refuse it while nothing has changed yet.
        declared = set(context["dag"].params.keys())
        unknown = sorted(set(context["dag_run"].conf or {}) - declared)
        if unknown:
            raise AirflowFailException(
                f"conf: unknown key(s) {', '.join(map(repr, unknown))}; this DAG takes {', '.join(sorted(declared))}"
            )
        try:
            plan = plan_waves(self.fleet, params.get("regions"))
        except PlanError as err:
            raise AirflowFailException(f"regions: {err}") from None
        self.log.info("%s", plan.explain())
        self.check_routing(plan, dry_run=bool(params.get("dry_run")))
        # Chart values are input too: a chart that will not render is refused here, before
        # any region is drained, not in the middle of wave 2.
        app, probe_digest = self.fleet.app, "sha256:" + "0" * 64
        for region in plan.regions:
            values = chart_values(self.fleet, region, probe_digest, context["run_id"], params["git_sha"])
            try:
                render_chart(helm_binary(), app.name, self.fleet.chart_ref, app.namespace, values, app.chart.version)
            except HelmError as err:
                raise AirflowFailException(f"app.values / app.chart ({region}): {err}") from None
        self.log.info("chart %s renders for every region of the plan", self.fleet.chart_ref)
        if params.get("dry_run"):
            self.log.info("dry run: the plan above is all this run does")
        return {"waves": [list(w.regions) for w in plan.waves], "dry_run": bool(params.get("dry_run"))}

    def check_routing(self, plan: Any, dry_run: bool) -> None:
        """Where users go per wave; refuse a wave that strands them, or a live profile unlike the file."""
        waves = [w.regions for w in plan.waves]
        self.log.info("%s", explain_waves(self.fleet, waves))
        try:
            for wave in waves:
                check_wave(self.fleet, wave)
        except RoutingError as err:
            raise AirflowFailException(f"traffic_manager: {err}") from None
        problems = [] if dry_run else self.live_profile_problems()  # a dry run needs no network
        if problems:
            raise AirflowFailException("; ".join(problems))

    def live_profile_problems(self) -> list[str]:
        """Routing method and endpoint types as Traffic Manager has them, against the fleet file."""
        tm = self.hook.traffic_manager()
        types = {name: ep.type for name, ep in tm.endpoints().items()}
        return profile_mismatches(self.fleet, tm.profile_status().routing_method, types)


class BuildImageOperator(FanoutOperator):
    """Build the app image once and pin the release to its digest (or take the digest given)."""

    def run(self, context: Context) -> dict[str, Any]:
        params, registry = context["params"], self.fleet.registry
        home = self.hook.registry(registry.home)
        image = params.get("image")
        if image and DIGEST.match(image):
            if not home.has_manifest(registry.repository, image):
                raise AirflowFailException(f"image: {image} is not in the home registry {home.endpoint}")
            self.log.info("releasing the given digest %s (no build)", image)
            return {"digest": image, "repository": registry.repository, "tag": None}
        tag = image or params["git_sha"][:12]
        destination = f"{registry.pull_host(registry.home)}/{registry.repository}:{tag}"
        if registry.kind == "acr":
            self.start_acr_build(destination, tag)
        started = time.monotonic()
        digest = self.hook.builder().build_and_push(self.fleet.resolve(self.fleet.app.source), destination)
        self.log.info("built and pushed %s as %s in %.1f s", destination, digest, time.monotonic() - started)
        return {"digest": digest, "repository": registry.repository, "tag": tag}

    def start_acr_build(self, destination: str, tag: str) -> NoReturn:
        """Schedule the ACR Tasks run and defer: a build takes minutes, and they are spent in ACR,
        not in a worker slot. No inline poll first (see `wait`): no build ends within seconds."""
        builder = self.hook.builder()
        assert isinstance(builder, AcrTasksBuilder)  # an acr registry always gets one
        try:
            run_id = builder.start(self.fleet.resolve(self.fleet.app.source), destination)
        except AzureAdapterError as err:
            raise BuildError(str(err)) from None
        finally:
            builder.close()
        self.log.info("ACR Tasks run %s builds %s; log: %s", run_id, destination, builder.run_link(run_id))
        trigger = AcrRunTrigger(
            **self.hook.acr_run_trigger_kwargs(run_id),
            # The run's own timeout plus time to queue and push, as AcrTasksBuilder.wait allows.
            timeout_seconds=builder.build_timeout_seconds + 300,
            poll_seconds=builder.poll_seconds,
            not_before=time.time() + SETTLE_SECONDS,
        )
        self.defer(trigger=trigger, method_name="acr_build_done", kwargs={"destination": destination, "tag": tag})

    def acr_build_done(self, context: Context, event: dict[str, Any], destination: str, tag: str) -> dict[str, Any]:
        digest = event.get("digest") or ""
        if event["status"] != "ok" or not DIGEST.match(digest):
            raise AirflowFailException(f"build of {destination}: {event['detail']}")
        run_id, waited = event["run_id"], event["waited"]
        self.log.info("built and pushed %s as %s in %.0f s (ACR Tasks run %s)", destination, digest, waited, run_id)
        return {"digest": digest, "repository": self.fleet.registry.repository, "tag": tag}


class WaitForReplicationOperator(FanoutOperator):
    """Wait, deferred, until this region's registry replica serves the release digest."""

    def run(self, context: Context) -> dict[str, Any] | None:
        digest = self.release(context)["digest"]
        where = self.hook.replication_trigger_kwargs(self.region)
        self.log.info("waiting for %s to serve %s", where["endpoint"], digest)
        trigger = ReplicationTrigger(
            **where,
            repository=self.fleet.registry.repository,
            digest=digest,
            timeout_seconds=self.fleet.registry.replication_timeout_seconds,
            poll_seconds=1.0,
        )
        return self.wait(context, trigger, "execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] != "ok":
            digest = self.release(context)["digest"]
            raise AirflowFailException(
                f"{self.region}: the registry replica still lacks {digest} after {event['waited']:.0f} s "
                f"(registry.replication_timeout_seconds): {event['detail']}"
            )
        self.log.info("%s has the digest after %.1f s", self.region, event["waited"])
        return {"waited": event["waited"]}


class DrainRegionOperator(FanoutOperator):
    """Disable the region's Traffic Manager endpoint, if the drain rules allow it."""

    def run(self, context: Context) -> dict[str, Any]:
        tm = self.hook.traffic_manager()
        endpoints = tm.endpoints()
        try:
            check_drain(self.fleet, endpoints, self.region)
        except PolicyError as err:
            self.fail(context, f"refused: {err}")
        current = endpoints[self.endpoint_name()]
        if current.enabled:
            tm.set_endpoint(current.name, enabled=False)
            self.log.info("drained %s (endpoint %s disabled)", self.region, current.name)
        else:
            self.log.info("%s is already drained", self.region)
        return {"was_enabled": current.enabled}


class HelmDeployOperator(FanoutOperator):
    """`helm upgrade --install` the chart in the region with the image pinned by digest."""

    def run(self, context: Context) -> dict[str, Any]:
        release, app = self.release(context), self.fleet.app
        helm, digest = self.hook.helm(self.region), release["digest"]
        history = helm.history(app.name, app.namespace)
        deployed = [h for h in history if h.status in ("deployed", "superseded")]
        current = history[-1] if history else None
        if current and current.status.startswith("pending-") and deployed:
            # A killed helm leaves the release locked; the last good revision is the way out.
            self.log.warning("%s: release stuck in %s; rolling back to %s", self.region, current.status, deployed[-1])
            helm.rollback(app.name, app.namespace, deployed[-1].revision, wait=False)
        elif current and current.status == "deployed" and self._live(digest):
            self.log.info("%s already runs %s (revision %s): no upgrade", self.region, digest, current.revision)
            return {"changed": False, "previous_revision": current.revision, "revision": current.revision}
        previous = next((h.revision for h in reversed(history) if h.status == "deployed"), None)
        values = chart_values(self.fleet, self.region, digest, context["run_id"], context["params"]["git_sha"])
        chart = self.fleet.chart_ref
        try:
            done = helm.upgrade_install(
                app.name, chart, app.namespace, values, version=app.chart.version,
                description=f"fanout run {context['run_id']} git {context['params']['git_sha'][:12]}",
            )  # fmt: skip
        except HelmError as err:
            context["ti"].xcom_push(key="return_value", value={"changed": True, "previous_revision": previous})
            self.fail(context, str(err))
        self.log.info("%s: helm revision %s (%s), previous %s", self.region, done.revision, done.status, previous)
        return {"changed": True, "previous_revision": previous, "revision": done.revision}

    def _live(self, digest: str) -> bool:
        deployment = self.hook.cluster(self.region).deployment(self.fleet.app.namespace, self.fleet.app.name)
        return rollout_status(deployment, digest).done


class _GateOperator(FanoutOperator):
    ui_color = "#e6f5e6"

    def finish(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] != "ok":
            self.fail(context, f"{event['detail']} (gave up after {event['waited']:.0f} s)")
        self.log.info("%s passed after %.1f s: %s", self.task_id, event["waited"], event["detail"])
        return event


class RolloutGateOperator(_GateOperator):
    """Wait, deferred, until the Deployment has rolled out the digest on every replica."""

    def run(self, context: Context) -> dict[str, Any]:
        trigger = RolloutTrigger(
            **self.hook.rollout_trigger_kwargs(self.region),
            namespace=self.fleet.app.namespace,
            name=self.fleet.app.name,
            digest=self.release(context)["digest"],
            timeout_seconds=self.fleet.gates.rollout_timeout_seconds,
            poll_seconds=1.0,
        )
        return self.wait(context, trigger, "finish")


class HttpGateOperator(_GateOperator):
    """Wait, deferred, until the region's edge answers healthy on the digest N times in a row."""

    def run(self, context: Context) -> dict[str, Any]:
        gate = self.fleet.gates.http
        trigger = HttpGateTrigger(
            edge_url=self.fleet.region(self.region).edge_url,
            health_path=gate.health_path,
            version_path=gate.version_path,
            digest=self.release(context)["digest"] if gate.expect_release_digest else None,
            needed=gate.consecutive_successes,
            timeout_seconds=gate.timeout_seconds,
            poll_seconds=gate.interval_seconds,
        )
        return self.wait(context, trigger, "finish")


class SoakGateOperator(_GateOperator):
    """Let the region run the release for the soak time, then check it is still healthy."""

    def run(self, context: Context) -> dict[str, Any]:
        return self.pause(self.fleet.gates.soak_seconds, "after", context)

    def after(self, context: Context, event: Any = None) -> dict[str, Any]:
        healthy, digest, detail = self.probe(self.region)
        if not healthy or digest != self.release(context)["digest"]:
            self.fail(context, f"after {self.fleet.gates.soak_seconds} s of soak: {detail}")
        return {"soaked_seconds": self.fleet.gates.soak_seconds}


class RestoreRegionOperator(FanoutOperator):
    """Enable the region's endpoint at its configured weight."""

    def run(self, context: Context) -> dict[str, Any]:
        region = self.fleet.region(self.region)
        drained = context["ti"].xcom_pull(task_ids=f"deploy_{self.region}.drain") or {}
        if region.standby and not drained.get("was_enabled"):
            self.log.info("%s is a warm standby: its endpoint stays disabled, as the profile has it", self.region)
            return {"enabled": False, "standby": True}
        weight = region.endpoint.weight
        state = self.hook.traffic_manager().set_endpoint(self.endpoint_name(), enabled=True, weight=weight)
        self.log.info("restored %s: enabled at weight %s", self.region, state.weight)
        return {"enabled": state.enabled, "weight": state.weight}


class RollbackRegionOperator(FanoutOperator):
    """After a failed deploy or gate: helm rollback, then put traffic back if the region is healthy."""

    ui_color = "#fbe8e8"

    def run(self, context: Context) -> dict[str, Any]:
        ti, app = context["ti"], self.fleet.app
        group = f"deploy_{self.region}"
        states = self.task_states(context, [f"{group}.{step}" for step in STEPS])
        if not any(state == "failed" for state in states.values()):
            # one_failed also fires when the whole group is upstream_failed: an earlier wave
            # or this region's replication failed and nothing here ran or changed.
            raise AirflowSkipException(f"{self.region}: no step of this region failed; nothing to roll back")
        failure = next(
            (f for step in STEPS if (f := ti.xcom_pull(task_ids=f"{group}.{step}", key="failure"))),
            {"region": self.region, "gate": "unknown", "cause": "a step failed without saying why; see its log"},
        )
        deployed = ti.xcom_pull(task_ids=f"{group}.helm_deploy") or {}
        drained = ti.xcom_pull(task_ids=f"{group}.drain") or {}
        outcome: dict[str, Any] = {**failure, "rolled_back_to": None, "traffic": "drained"}
        previous = deployed.get("previous_revision")
        if deployed.get("changed") and previous:
            self.log.info("%s: rolling back to helm revision %s", self.region, previous)
            done = self.hook.helm(self.region).rollback(app.name, app.namespace, previous, wait=True)
            outcome["rolled_back_to"] = previous
            self.log.info("%s: now at revision %s (%s)", self.region, done.revision, done.status)
        elif deployed.get("changed"):
            self.log.warning("%s: first install failed; nothing to roll back to, the region stays drained", self.region)
        healthy, serving, detail = self.probe(self.region)
        known_good = bool(outcome["rolled_back_to"]) or (bool(deployed) and not deployed.get("changed"))
        if traffic_after_failure(
            was_enabled=bool(drained.get("was_enabled")), healthy=healthy, runs_known_good=known_good
        ):
            weight = self.fleet.region(self.region).endpoint.weight
            self.hook.traffic_manager().set_endpoint(self.endpoint_name(), enabled=True, weight=weight)
            outcome["traffic"] = "enabled"
        elif not drained:
            outcome["traffic"] = "unchanged (this run did not drain it)"
        elif not drained.get("was_enabled"):
            outcome["traffic"] = "drained (it was drained before this run)"
        outcome["serving"] = serving
        self.log.error(
            "%s: %s failed: %s — rolled back to %s, traffic %s (%s)",
            self.region, failure["gate"], failure["cause"], outcome["rolled_back_to"], outcome["traffic"], detail,
        )  # fmt: skip
        return outcome


class RollbackAllOperator(FanoutOperator):
    """failure_policy rollback-all: once every started region has finished, roll back each one
    this run upgraded, so a failed release leaves the whole fleet on what it ran before."""

    ui_color = "#fbe8e8"

    def run(self, context: Context) -> dict[str, Any]:
        failures = self.failures(context)
        if not failures:
            raise AirflowSkipException("nothing failed: nothing to roll back")
        ti, app = context["ti"], self.fleet.app
        regions = self.fleet.region_names
        deploys = {r: ti.xcom_pull(task_ids=f"deploy_{r}.helm_deploy") for r in regions}
        own = {r: ti.xcom_pull(task_ids=f"deploy_{r}.rollback") for r in regions}
        outcome: dict[str, Any] = {}
        for region, previous in rollback_all_targets(deploys, own).items():
            if previous is None:
                outcome[region] = {"rolled_back_to": None, "note": "first install: nothing older to return to"}
                self.log.warning("%s: first install in this run; nothing older to roll back to", region)
                continue
            self.log.info("%s: rolling back to helm revision %s (rollback-all)", region, previous)
            done = self.hook.helm(region).rollback(app.name, app.namespace, previous, wait=True)
            healthy, serving, detail = self.probe(region)
            outcome[region] = {"rolled_back_to": previous, "revision": done.revision, "serving": serving}
            self.log.info("%s: now at revision %s (%s); %s", region, done.revision, done.status, detail)
            if not healthy:
                self._drain_if_allowed(region)
        causes = "; ".join(f"{f['region']}: {f['gate']}: {f['cause']}" for f in failures)
        self.log.error("rollback-all after: %s — rolled back %s", causes, ", ".join(outcome) or "nothing")
        return {"rolled_back": outcome}

    def _drain_if_allowed(self, region: str) -> None:
        tm = self.hook.traffic_manager()
        try:
            check_drain(self.fleet, tm.endpoints(), region)
        except PolicyError as err:
            # Old code served beats NXDOMAIN: keep it enabled and say so.
            self.log.warning("%s is unhealthy after its rollback but stays enabled: %s", region, err)
            return
        tm.set_endpoint(self.fleet.region(region).endpoint.name, enabled=False)
        self.log.warning("%s is unhealthy after its rollback: drained", region)


class BakeOperator(FanoutOperator):
    """Wait the fleet's bake time between two waves (deferred)."""

    def __init__(self, *, wave_regions: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wave_regions = wave_regions

    def run(self, context: Context) -> None:
        # A run for a few regions (a repair, say) must not bake after waves it did not touch.
        if not any(targeted(context["params"], r) for r in self.wave_regions):
            self.log.info("no region of this wave (%s) is in this run: no bake", ", ".join(self.wave_regions))
            return
        self.pause(self.fleet.rollout.bake_seconds, "done", context)

    def done(self, context: Context, event: Any = None) -> None:
        self.log.info("baked %s s", self.fleet.rollout.bake_seconds)


class RebalanceOperator(FanoutOperator):
    """Set every endpoint's final weight and status from policy and health; fail a failed run loudly."""

    def run(self, context: Context) -> dict[str, Any]:
        params, ti = context["params"], context["ti"]
        if ti.xcom_pull(task_ids="validate") is None:
            # A refused run must change nothing, not even the traffic floor.
            raise AirflowSkipException("validate refused this run: nothing was changed")
        built = ti.xcom_pull(task_ids="build") or {}
        digest = built.get("digest")
        failures = self.failures(context)
        wanted = params.get("regions") or self.fleet.region_names
        serving = {r: self.probe(r)[1] for r in self.fleet.region_names}
        tm = self.hook.traffic_manager()
        current = tm.endpoints()
        ok = digest is not None and not failures and all(serving.get(r) == digest for r in wanted)
        desired, warnings = final_traffic(
            self.fleet, current, serving, digest if ok else None, scope=wanted if ok else []
        )
        # Enable before disabling, so no moment has every endpoint disabled.
        changes = sorted(desired.items(), key=lambda kv: not kv[1].enabled)
        for region, want in changes:
            have = current[want.name]
            if (have.enabled, have.weight) != (want.enabled, want.weight):
                tm.set_endpoint(want.name, enabled=want.enabled, weight=want.weight)
                self.log.info("%s: endpoint %s -> %s weight %s", region, want.name, want.enabled, want.weight)
        for line in warnings:
            self.log.warning("%s", line)
        summary = {
            r: {"serving": serving[r], "enabled": desired[r].enabled, "weight": desired[r].weight}
            for r in self.fleet.region_names
        }
        if failures:
            causes = "; ".join(f"{f['region'] or 'release'}: {f['gate']}: {f['cause']}" for f in failures)
            rolled = (ti.xcom_pull(task_ids="rollback_all") or {}).get("rolled_back") or {}
            if rolled:
                causes += "; rollback-all: " + ", ".join(
                    f"{r} to revision {o['rolled_back_to']}" if o.get("rolled_back_to") else f"{r} ({o['note']})"
                    for r, o in rolled.items()
                )
            raise AirflowFailException(f"release of {self.fleet.app.name} {digest} failed — {causes}")
        return {"regions": summary, "warnings": warnings}


class RecordReleaseOperator(FanoutOperator):
    """Emit the release Asset event the consistency DAG reads."""

    def run(self, context: Context) -> dict[str, Any]:
        from fanout.airflow.dags import release_asset

        built = self.release(context)
        balance = context["ti"].xcom_pull(task_ids="rebalance") or {}
        extra = {
            "app": self.fleet.app.name,
            "digest": built["digest"],
            "repository": built["repository"],
            "chart_version": self.fleet.app.chart.version,
            "git_sha": context["params"]["git_sha"],
            "source_ref": context["params"]["source_ref"],
            "run_id": context["run_id"],
            "regions": context["params"].get("regions") or self.fleet.region_names,
            "outcome": balance.get("regions", {}),
        }
        context["outlet_events"][release_asset(self.fleet.app.name)].extra = extra
        self.log.info("recorded release %s of %s", built["digest"], self.fleet.app.name)
        return extra


class MetricGateOperator(_GateOperator):
    """A Prometheus-style instant query stays at or under its threshold."""

    def run(self, context: Context) -> dict[str, Any]:
        gate = self.fleet.gates.metric
        url = f"{gate.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': gate.query})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                result = json.loads(response.read())["data"]["result"]
            value = max(float(sample["value"][1]) for sample in result) if result else None
        except (OSError, ValueError, KeyError, IndexError) as err:
            self.fail(context, f"metric query failed: {err}")
        if value is None:
            self.fail(context, f"metric query returned no samples: {gate.query}")
        if value > gate.max_value:
            self.fail(context, f"{gate.query} = {value:g}, above {gate.max_value:g}")
        return {"value": value}
