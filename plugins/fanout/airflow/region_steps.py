"""The steps of one region: wait for its replica, then in its group drain, deploy, gate,
restore — or roll back when a step failed (the DNS wait after the drain is in dns_waits)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from fanout import names
from fanout.adapters.helm import HelmError
from fanout.airflow.base import FanoutOperator, current_hold
from fanout.airflow.triggers import (
    HoldTrigger,
    HttpGateTrigger,
    MetricGatesTrigger,
    MonitorOnlineTrigger,
    PhasesTrigger,
    ReplicationTrigger,
    RolloutTrigger,
    phase,
)
from fanout.airflow.waits import SETTLE_SECONDS, WaitingOperator
from fanout.metric_gates import SCRAPE_SLACK_SECONDS, baselines
from fanout.policy import (
    PolicyError,
    chart_values,
    check_drain,
    helm_description,
    rollout_status,
    traffic_after_failure,
)
from fanout.records import DeployOutcome, DrainOutcome, RollbackOutcome, StepFailure

HOLD_POLL_SECONDS = 5.0  # how soon `fanout unfreeze` or `resume` lets a held drain go on


class _RegionStep(FanoutOperator):
    def endpoint_name(self) -> str:
        return self.fleet.region(self.region).endpoint.name

    def trigger_kwargs(self, context: Context) -> dict[str, Any]:
        """What every FleetTrigger of this region needs: the run's snapshot and the region."""
        return {
            "fleet": self.snapshot(context).to_xcom(),
            "hook_options": self.hook.trigger_options(),
            "region": self.region,
        }


class _RegionWait(_RegionStep, WaitingOperator):
    pass


class WaitForReplicationOperator(_RegionWait):
    """Wait, deferred, until this region's registry replica serves the release digest."""

    step = names.WAIT_REPLICATION

    def run(self, context: Context) -> Any:
        release = self.release(context)
        digest, where = release.digest, self.hook.registry_endpoint(str(self.region))
        self.log.info("waiting for %s's replica (%s) to serve %s", self.region, where, digest)
        # Replication began when the build pushed the digest, so the first try's clock starts
        # there: regions waited one after another (as `airflow dags test` runs them) share one
        # deadline instead of adding up. A region re-run by hand waits its full time again.
        first_try = context["ti"].try_number <= 1
        trigger = ReplicationTrigger(
            **self.trigger_kwargs(context),
            digest=digest,
            timeout_seconds=self.fleet.registry.replication_timeout_seconds,
            poll_seconds=self.hook.replication_poll_seconds(),
            started_at=release.pinned_at if first_try else None,
        )
        lacks = f"the registry replica still lacks {digest} after {{waited:.0f}} s "
        return self.wait(
            context, trigger, self.ending(cause=lacks + "(registry.replication_timeout_seconds): {detail}")
        )


class DrainRegionOperator(_RegionStep):
    """Disable the region's Traffic Manager endpoint, if the drain rules allow it."""

    step = names.DRAIN

    def run(self, context: Context, held_since: float | None = None) -> dict[str, Any]:
        # The first change a run makes to a region: a freeze, a pause or the region's deploy window
        # holds it here, before anything changed (a region already mid-change finishes its steps,
        # and a rollback is never held). The wait is deferred and re-checked after it ends.
        hotfix = self.hotfix(context) is not None  # approved: approve_hotfix is upstream of every drain
        held, passed = current_hold(self.fleet, str(self.region), hotfix=hotfix)
        if held is not None:
            if held.refuse:
                self.fail(context, f"{held.line}; nothing was changed (`fanout unfreeze` lifts it)")
            self.log.warning("%s is held back, waiting (deferred): %s", self.region, held.line)
            trigger = HoldTrigger(
                **self.trigger_kwargs(context),
                hotfix=hotfix,
                timeout_seconds=self.fleet.rollout.hold_timeout_minutes * 60,
                poll_seconds=HOLD_POLL_SECONDS,
                started_at=held_since,
                not_before=time.time() + SETTLE_SECONDS,  # the drain resumes on a worker (see waits.py)
            )
            self.defer(trigger=trigger, method_name="after_hold")
        if passed is not None:
            self.log.warning("%s: %s; an approved hotfix passes it", self.region, passed.line())
        held_seconds = round(time.time() - held_since, 1) if held_since else 0.0
        if held_seconds:
            self.log.info("%s was held back %.0f s; draining now", self.region, held_seconds)
        # A digest quarantined after the run pinned it must not reach one more region.
        quarantined = self.quarantine(self.release(context).digest)
        if quarantined is not None:
            self.fail(context, f"{quarantined.line()}; nothing was changed")
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
        return DrainOutcome(was_enabled=current.enabled, held_seconds=held_seconds).to_xcom()

    def after_hold(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The hold's wait ended: drain (after looking again), or fail when it will not end."""
        if event["status"] == "failed":
            self.fail(context, f"{event['detail']}; nothing was changed (`fanout unfreeze` lifts it)")
        if event["status"] != "ok":
            limit = "rollout.hold_timeout_minutes"
            self.fail(context, f"still held back after {event['waited']:.0f} s ({limit}): {event['detail']}")
        return self.run(context, held_since=time.time() - event["waited"])


class HelmDeployOperator(_RegionStep):
    """`helm upgrade --install` the chart in the region with the image pinned by digest."""

    step = names.HELM_DEPLOY

    def __init__(self, **kwargs: Any) -> None:
        # A task process killed mid-upgrade (OOM, a lost node) leaves the release pending-upgrade and
        # the region drained: one retry, soon, takes the way out below. A failure this step foresaw
        # (`fail`, AirflowFailException) is never retried.
        kwargs.setdefault("retries", 1)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(**kwargs)

    def run(self, context: Context) -> dict[str, Any]:
        release, app = self.release(context), self.fleet.app
        helm = self.hook.helm(self.region)
        history = helm.history(app.name, app.namespace)
        deployed = [h for h in history if h.status in ("deployed", "superseded")]
        current = history[-1] if history else None
        if current and current.status.startswith("pending-") and deployed:
            # A killed helm leaves the release locked; the last good revision is the way out.
            self.log.warning("%s: release stuck in %s; rolling back to %s", self.region, current.status, deployed[-1])
            helm.rollback(app.name, app.namespace, deployed[-1].revision, wait=False)
        elif current and current.status == "deployed" and self._live(release.digest):
            self.log.info("%s already runs %s (revision %s): no upgrade", self.region, release.digest, current.revision)
            return DeployOutcome(False, current.revision, current.revision).to_xcom()
        previous = next((h.revision for h in reversed(history) if h.status == "deployed"), None)
        sha, ref = release.git_sha or context["params"]["git_sha"], release.source_ref or ""
        values = chart_values(self.fleet, str(self.region), release.digest, context["run_id"], sha, ref)
        try:
            done = helm.upgrade_install(
                app.name, self.fleet.chart_ref, app.namespace, values, version=app.chart.version,
                description=helm_description(context["run_id"], sha, ref),
            )  # fmt: skip
        except HelmError as err:
            context["ti"].xcom_push(key="return_value", value=DeployOutcome(True, previous).to_xcom())
            self.fail(context, str(err))
        self.log.info("%s: helm revision %s (%s), previous %s", self.region, done.revision, done.status, previous)
        return DeployOutcome(True, previous, done.revision).to_xcom()

    def _live(self, digest: str) -> bool:
        deployment = self.hook.cluster(self.region).deployment(self.fleet.app.namespace, self.fleet.app.name)
        return rollout_status(deployment, digest).done


class _GateOperator(_RegionWait):
    ui_color = "#e6f5e6"


class GatesOperator(_GateOperator):
    """Wait, deferred, through the region's gates one after another: the Deployment rolled out
    the digest on every replica; the edge answers healthy on it N times in a row; after the soak
    time it still does. One deferral for all three; a failure names its gate."""

    step = names.GATES

    def run(self, context: Context) -> Any:
        kw, digest, gates = self.trigger_kwargs(context), self.release(context).digest, self.fleet.gates
        hotfix = self.hotfix(context)
        soak = hotfix.soak_seconds if hotfix else gates.soak_seconds
        rollout = RolloutTrigger(**kw, digest=digest, timeout_seconds=gates.rollout_timeout_seconds, poll_seconds=1.0)
        http = HttpGateTrigger(
            **kw,
            digest=digest if gates.http.expect_release_digest else None,
            needed=gates.http.consecutive_successes,
            timeout_seconds=gates.http.timeout_seconds,
            poll_seconds=gates.http.interval_seconds,
        )
        # The soak: one probe of the edge once the soak time is over.
        soaked = HttpGateTrigger(**kw, digest=digest, needed=1, timeout_seconds=soak)
        trigger = PhasesTrigger(
            phases=[
                phase(rollout, self.ending(names.GATE_ROLLOUT)),
                phase(http, self.ending(names.GATE_HTTP)),
                phase(soaked, self.ending(names.GATE_SOAK, cause=f"after {soak} s of soak: {{detail}}"), delay=soak),
            ]
        )
        return self.wait(context, trigger, self.ending(result={"soaked_seconds": soak}), look_first=False)


class MetricGatesOperator(_GateOperator):
    """After the region is back online: measure its users on the release digest for the window,
    then judge them with the fleet's metric gates (deferred the whole time)."""

    step = names.GATE_METRICS
    READ_RETRY_SECONDS = 120.0  # how long an unreadable metric source is retried

    def run(self, context: Context) -> Any:
        gates, region = self.fleet.gates.metrics, self.fleet.region(str(self.region))
        assert gates is not None, "the DAG has this task only when the fleet has metric gates"
        if region.traffic_weight == 0:
            self.log.info("%s is a warm standby: no users, nothing to measure", region.name)
            return {"skipped": "warm standby: no users"}
        waves, subset = self.snapshot(context).waves, context["params"].get("regions")
        compared_with = baselines(self.fleet, gates, waves, region.name, subset)
        # Resolvers still hold answers without this region for up to a TTL: its users are back after it.
        ttl = self.fleet.traffic_manager.dns_ttl_seconds
        start = time.time() + ttl
        end = start + gates.window_seconds + SCRAPE_SLACK_SECONDS
        self.log.info(
            "measuring %s's users on the release for %d s, from one DNS TTL (%d s) after it is back; baselines: %s",
            region.name, gates.window_seconds, ttl, compared_with or "none",
        )  # fmt: skip
        trigger = MetricGatesTrigger(
            **self.trigger_kwargs(context),
            digest=self.release(context).digest,
            window_start=start,
            baselines=compared_with,
            timeout_seconds=end - time.time() + self.READ_RETRY_SECONDS,
            poll_seconds=5.0,
            not_before=end,
        )
        ending = self.ending(cause=f"{gates.source.url} could not be read: {{detail}}")
        return self.wait(context, trigger, ending, look_first=False)


class RestoreRegionOperator(_RegionWait):
    """Enable the region's endpoint at its configured weight, then wait, deferred, until Traffic
    Manager's monitor reports it Online: the next wave drains only once this region is back in the
    answers."""

    step = names.RESTORE

    def run(self, context: Context) -> Any:
        region = self.fleet.region(str(self.region))
        drained = DrainOutcome.from_xcom(context["ti"].xcom_pull(task_ids=names.region_task(region.name, names.DRAIN)))
        if region.standby and not (drained and drained.was_enabled):
            self.log.info("%s is a warm standby: its endpoint stays disabled, as the profile has it", region.name)
            return {"enabled": False, "standby": True}
        weight = region.endpoint.weight
        state = self.hook.traffic_manager().set_endpoint(self.endpoint_name(), enabled=True, weight=weight)
        self.log.info("restored %s: enabled at weight %s", self.region, state.weight)
        trigger = MonitorOnlineTrigger(**self.trigger_kwargs(context), timeout_seconds=300, poll_seconds=1.0)
        ending = self.ending(
            names.WAIT_ONLINE,
            cause="Traffic Manager never reported it Online: {detail}",
            result={"enabled": state.enabled, "weight": state.weight},
        )
        return self.wait(context, trigger, ending)


class RollbackRegionOperator(_RegionStep):
    """After a failed deploy or gate: helm rollback, then put traffic back if the region is healthy."""

    step = names.ROLLBACK
    ui_color = "#fbe8e8"

    def run(self, context: Context) -> dict[str, Any]:
        ti, app, region = context["ti"], self.fleet.app, str(self.region)
        steps = [names.region_task(region, step) for step in names.FAILING_STEPS]
        states = self.task_states(context, steps)
        if not any(state == "failed" for state in states.values()):
            # one_failed also fires when the whole group is upstream_failed: an earlier wave
            # or this region's replication failed and nothing here ran or changed.
            raise AirflowSkipException(f"{region}: no step of this region failed; nothing to roll back")
        failure = next(
            (f for task in steps if (f := StepFailure.from_xcom(ti.xcom_pull(task_ids=task, key=names.FAILURE_KEY)))),
            StepFailure(region, "unknown", "a step failed without saying why; see its log"),
        )
        deployed = DeployOutcome.from_xcom(ti.xcom_pull(task_ids=names.region_task(region, names.HELM_DEPLOY)))
        drained = DrainOutcome.from_xcom(ti.xcom_pull(task_ids=names.region_task(region, names.DRAIN)))
        rolled_back_to = None
        if deployed and deployed.changed and deployed.previous_revision:
            self._take_users_off(region)
            self.log.info("%s: rolling back to helm revision %s", region, deployed.previous_revision)
            done = self.hook.helm(region).rollback(app.name, app.namespace, deployed.previous_revision, wait=True)
            rolled_back_to = deployed.previous_revision
            self.log.info("%s: now at revision %s (%s)", region, done.revision, done.status)
        elif deployed and deployed.changed:
            self.log.warning("%s: first install failed; nothing to roll back to, the region stays drained", region)
        probe = self.hook.edge(region).probe()
        known_good = bool(rolled_back_to) or (deployed is not None and not deployed.changed)
        traffic = "drained"
        was_enabled = drained is not None and drained.was_enabled
        if traffic_after_failure(was_enabled=was_enabled, healthy=probe.healthy, runs_known_good=known_good):
            weight = self.fleet.region(region).endpoint.weight
            self.hook.traffic_manager().set_endpoint(self.endpoint_name(), enabled=True, weight=weight)
            traffic = "enabled"
        elif drained is None:
            traffic = "unchanged (this run did not drain it)"
        elif not drained.was_enabled:
            traffic = "drained (it was drained before this run)"
        outcome = RollbackOutcome(failure.region, failure.gate, failure.cause, rolled_back_to, traffic, probe.digest)
        self.log.error(
            "%s: %s failed: %s — rolled back to %s, traffic %s (%s)",
            region, failure.gate, failure.cause, rolled_back_to, traffic, probe.detail,
        )  # fmt: skip
        return outcome.to_xcom()

    def _take_users_off(self, region: str) -> None:
        """A region that failed after its restore (a metric gate) has users on the bad build: drain it
        again before the rollback changes it, unless the drain rules forbid it now."""
        tm = self.hook.traffic_manager()
        endpoints = tm.endpoints()
        if not endpoints[self.endpoint_name()].enabled:
            return
        try:
            check_drain(self.fleet, endpoints, region)
        except PolicyError as err:
            self.log.warning("%s: rolling back with users on it (the drain is refused: %s)", region, err)
            return
        tm.set_endpoint(self.endpoint_name(), enabled=False)
        self.log.info("%s: drained again before the rollback", region)
