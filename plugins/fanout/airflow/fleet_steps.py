"""The fleet-wide steps of a release: validate (and snapshot), build, bake between waves,
rebalance, rollback-all, record."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any, NoReturn

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from fanout import names
from fanout.adapters.azure_credentials import AzureAdapterError
from fanout.adapters.builder import BuildError
from fanout.adapters.git_source import Commit, SourceError
from fanout.adapters.helm import HelmError, helm_binary, render_chart
from fanout.adapters.registry import RegistryError
from fanout.adapters.release_image import build_commit, ci_image, context_path, previous_build
from fanout.airflow.base import SNAPSHOT_KEY, FanoutOperator, release_asset, targeted
from fanout.airflow.triggers import AcrRunTrigger
from fanout.airflow.waits import SETTLE_SECONDS, WaitingOperator
from fanout.fleet import Fleet, FleetError
from fanout.planner import Plan, PlanError, plan_waves
from fanout.policy import DIGEST, PolicyError, chart_values, check_drain, final_traffic, rollback_all_targets
from fanout.provenance import build_labels
from fanout.records import FleetSnapshot, Release, release_shape, shape_changes
from fanout.routing import RoutingError, check_wave, explain_waves, nested_mismatches, profile_mismatches


class ValidateReleaseOperator(FanoutOperator):
    """Refuse a run whose conf or fleet does not fit the DAG, or whose chart does not render;
    record the fleet snapshot every later task decides from; print the plan."""

    needs_snapshot = False

    runs_on_dry_run = True
    ui_color = "#fff7e0"

    def __init__(self, *, graph: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.graph = graph  # what the DAG was built from: release_shape() at parse time

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
            snapshot = FleetSnapshot.of_file(self.fleet_path)
            fleet = self._fleet = snapshot.fleet()
            full = plan_waves(fleet)
        except FleetError as err:  # its lines name the file already
            raise AirflowFailException(str(err)) from None
        except PlanError as err:
            raise AirflowFailException(f"{self.fleet_path}: {err}") from None
        changes = shape_changes(self.graph, release_shape(fleet, full))
        if changes:
            raise AirflowFailException(
                f"{self.fleet_path} changed since this DAG was built ({'; '.join(changes)}): nothing was changed; "
                "trigger again once Airflow has re-parsed the DAG"
            )
        try:
            plan = plan_waves(fleet, params.get("regions"))
        except PlanError as err:
            raise AirflowFailException(f"regions: {err}") from None
        if params.get("hotfix"):
            if fleet.rollout.hotfix is None:
                raise AirflowFailException(
                    f"hotfix: {self.fleet_path} has no hotfix path (rollout.hotfix); nothing was changed"
                )
            if not (params.get("hotfix_reason") or "").strip():
                raise AirflowFailException("hotfix_reason: say why this release is a hotfix; nothing was changed")
        image = params.get("image")
        if image and DIGEST.match(image) and (quarantined := self.quarantine(image)):
            raise AirflowFailException(f"image: {quarantined.line()}; nothing was changed")
        self.log.info("fleet %s (sha256 %s)\n%s", self.fleet_path, snapshot.sha256[:12], plan.explain())
        self.check_routing(plan, dry_run=bool(params.get("dry_run")))
        # Chart values are input too: a chart that will not render is refused here, before
        # any region is drained, not in the middle of wave 2.
        for region, error in self.render_errors(fleet, list(plan.regions), context["run_id"], params["git_sha"]):
            raise AirflowFailException(f"app.values / app.chart ({region}): {error}")
        self.log.info("chart %s renders for every region of the plan", fleet.chart_ref)
        if not params.get("dry_run"):  # a dry run needs neither a cluster nor Azure
            try:
                self.hook.preflight(list(plan.regions))
            except (RuntimeError, ValueError) as err:  # PreflightError, RegistryError, AzureAdapterError, …
                raise AirflowFailException(f"preflight: {err}") from None
            self.log.info("namespace %s and every release permission are there in each region", fleet.app.namespace)
        waves = [list(w.regions) for w in full.waves]
        recorded = FleetSnapshot(snapshot.path, snapshot.sha256, snapshot.text, waves)
        context["ti"].xcom_push(key=SNAPSHOT_KEY, value=recorded.to_xcom())
        if params.get("dry_run"):
            self.log.info("dry run: the plan above is all this run does")
        return {"waves": [list(w.regions) for w in plan.waves], "dry_run": bool(params.get("dry_run"))}

    @staticmethod
    def render_errors(fleet: Fleet, regions: list[str], run_id: str, git_sha: str) -> list[tuple[str, str]]:
        """(region, why) for each region whose values the chart does not render, in plan order.
        `helm template` runs for all regions at once: on the critical path, one process at a time
        cost a Helm start per region."""
        binary, app, probe_digest = helm_binary(), fleet.app, "sha256:" + "0" * 64

        def render(region: str) -> str | None:
            values = chart_values(fleet, region, probe_digest, run_id, git_sha)
            try:
                render_chart(binary, app.name, fleet.chart_ref, app.namespace, values, app.chart.version)
            except HelmError as err:
                return str(err)
            return None

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(regions)))) as pool:
            return [(r, error) for r, error in zip(regions, pool.map(render, regions), strict=True) if error]

    def check_routing(self, plan: Plan, dry_run: bool) -> None:
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
        problems = profile_mismatches(self.fleet, tm.profile_status().routing_method, types)
        if self.fleet.traffic_manager.nested:
            parent, children = tm.profile_tree()
            problems += nested_mismatches(self.fleet, parent.endpoints, children)
        return problems


def pinned(release: Release) -> dict[str, Any]:
    """The build's XCom: `release`, stamped with the moment this run pinned it."""
    return replace(release, pinned_at=time.time()).to_xcom()


class BuildImageOperator(FanoutOperator):
    """Pin the release to the digest of exactly `git_sha`: built, reused or CI's (see fanout.adapters.release_image)."""

    def run(self, context: Context) -> dict[str, Any]:
        params, registry, allow = context["params"], self.fleet.registry, self.fleet.app.source.allow_unlabelled_images
        home, image, source = self.hook.registry(registry.home), params.get("image"), self.hook.source()
        try:
            commit = source.resolve(params["git_sha"], params["source_ref"])
            self.log.info("git_sha %s is commit %s of %s (%s)", params["git_sha"], commit.sha, commit.url, commit.ref)
            if image and DIGEST.match(image):
                given = ci_image(home, registry.repository, image, commit, allow)
                self.log.info("releasing the CI-built %s (no build): its revision label is the commit", image)
                return pinned(given)
            if found := previous_build(home, registry.repository, commit):
                self.log.info("reusing %s, built from %s by an earlier run: no build", found.digest, commit.sha)
                return pinned(found)
        except (SourceError, RegistryError) as err:
            raise AirflowFailException(str(err)) from None
        destination = f"{registry.pull_host(registry.home)}/{registry.repository}:{commit.sha}"
        if registry.kind == "acr":
            self.start_acr_build(context, commit, destination)
        started, builder, extra = time.monotonic(), self.hook.builder(), (image,) if image else ()
        try:
            built = build_commit(
                source, self.fleet.app.source, commit, registry.repository,
                lambda ctx, labels: builder.build_and_push(ctx, destination, labels, extra),
            )  # fmt: skip
        except SourceError as err:
            raise AirflowFailException(str(err)) from None
        self.log.info("built and pushed %s as %s in %.1f s", destination, built.digest, time.monotonic() - started)
        return pinned(built)

    def start_acr_build(self, context: Context, commit: Commit, destination: str) -> NoReturn:
        """Upload exactly `commit`, schedule the ACR Tasks run and defer: a build takes minutes, and
        they are spent in ACR, not in a worker slot."""
        builder = self.hook.acr_tasks()
        try:
            with self.hook.source().export(commit, context_path(self.fleet.app.source)) as tree:
                run_id = builder.start(tree, destination, build_labels(commit.sha, commit.url))
        except AzureAdapterError as err:
            raise BuildError(str(err)) from None
        except SourceError as err:
            raise AirflowFailException(str(err)) from None
        self.log.info("ACR Tasks run %s builds %s; log: %s", run_id, destination, builder.run_link(run_id))
        trigger = AcrRunTrigger(
            fleet=self.snapshot(context).to_xcom(),
            hook_options=self.hook.trigger_options(),
            run_id=run_id,
            # The run's own timeout plus time to queue and push, as ACR allows.
            timeout_seconds=builder.build_timeout_seconds + 300,
            poll_seconds=builder.poll_seconds,
            not_before=time.time() + SETTLE_SECONDS,
        )
        kwargs = {"destination": destination, "commit": asdict(commit)}
        self.defer(trigger=trigger, method_name="acr_build_done", kwargs=kwargs)

    def acr_build_done(
        self, context: Context, event: dict[str, Any], destination: str, commit: dict[str, str]
    ) -> dict[str, Any]:
        digest = event.get("digest") or ""
        if event["status"] != "ok" or not DIGEST.match(digest):
            raise AirflowFailException(f"build of {destination}: {event['detail']}")
        run_id, waited = event["run_id"], event["waited"]
        self.log.info("built and pushed %s as %s in %.0f s (ACR Tasks run %s)", destination, digest, waited, run_id)
        c = Commit(**commit)
        return pinned(Release(digest, self.fleet.registry.repository, c.sha, c.sha, c.ref, c.url, built=True))


class BakeOperator(WaitingOperator):
    """Judge the wave (rollout.wave_quorum of its regions passed), then wait the fleet's bake
    time before the next one (deferred). It runs once every region of the wave is done, failed
    or not: a region that failed has been rolled back by then, and is held back if the wave passes."""

    def __init__(self, *, wave_number: int, wave_regions: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wave_number, self.wave_regions = wave_number, wave_regions

    def run(self, context: Context) -> None:
        # A run for a few regions (a repair, say) must not bake after waves it did not touch.
        if not any(targeted(context["params"], r) for r in self.wave_regions):
            self.log.info("no region of this wave (%s) is in this run: no bake", ", ".join(self.wave_regions))
            return
        verdict = next(v for v in self.wave_verdicts(context) if v.number == self.wave_number)
        if not verdict.ok:
            # The regions' own failures are the causes the run reports; this only stops the next wave.
            self.fail(context, verdict.line(), consequence=True)
        if verdict.held_back:
            self.log.warning("%s (rollout.wave_quorum %s)", verdict.line(), self.fleet.rollout.wave_quorum)
        else:
            self.log.info("%s", verdict.line())
        hotfix = self.hotfix(context)
        self.pause(hotfix.bake_seconds if hotfix else self.fleet.rollout.bake_seconds)


class RollbackAllOperator(FanoutOperator):
    """failure_policy rollback-all: once every started region has finished, roll back each one
    this run upgraded, so a failed release leaves the whole fleet on what it ran before."""

    ui_color = "#fbe8e8"

    def run(self, context: Context) -> dict[str, Any]:
        failures, _ = self.judged_failures(context)
        if not failures:
            raise AirflowSkipException("the release did not fail: nothing to roll back")
        ti, app = context["ti"], self.fleet.app
        regions = self.fleet.region_names
        deploys = {r: ti.xcom_pull(task_ids=names.region_task(r, names.HELM_DEPLOY)) for r in regions}
        own = {r: ti.xcom_pull(task_ids=names.region_task(r, names.ROLLBACK)) for r in regions}
        outcome: dict[str, Any] = {}
        for region, previous in rollback_all_targets(deploys, own).items():
            if previous is None:
                outcome[region] = {"rolled_back_to": None, "note": "first install: nothing older to return to"}
                self.log.warning("%s: first install in this run; nothing older to roll back to", region)
                continue
            self.log.info("%s: rolling back to helm revision %s (rollback-all)", region, previous)
            done = self.hook.helm(region).rollback(app.name, app.namespace, previous, wait=True)
            probe = self.hook.edge(region).probe()
            outcome[region] = {"rolled_back_to": previous, "revision": done.revision, "serving": probe.digest}
            self.log.info("%s: now at revision %s (%s); %s", region, done.revision, done.status, probe.detail)
            if not probe.healthy:
                self._drain_if_allowed(region)
        causes = "; ".join(f.line() for f in failures)
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


class RebalanceOperator(FanoutOperator):
    """Set every endpoint's final weight and status from policy and health; fail a failed run loudly."""

    def run(self, context: Context) -> dict[str, Any]:
        params, ti = context["params"], context["ti"]
        built = Release.from_xcom(ti.xcom_pull(task_ids=names.BUILD))
        digest = built.digest if built else None
        failures, held_back = self.judged_failures(context)
        # A held-back region keeps its traffic: its rollback put it back on the build it ran before.
        wanted = [r for r in params.get("regions") or self.fleet.region_names if r not in held_back]
        serving = {r: self.hook.edge(r).probe().digest for r in self.fleet.region_names}
        tm = self.hook.traffic_manager()
        current = tm.endpoints()
        ok = digest is not None and not failures and all(serving.get(r) == digest for r in wanted)
        desired, warnings = final_traffic(
            self.fleet, current, serving, digest if ok else None, scope=wanted if ok else []
        )
        # Enable before disabling, so no moment has every endpoint disabled.
        for region, want in sorted(desired.items(), key=lambda kv: not kv[1].enabled):
            have = current[want.name]
            if (have.enabled, have.weight) != (want.enabled, want.weight):
                tm.set_endpoint(want.name, enabled=want.enabled, weight=want.weight)
                self.log.info("%s: endpoint %s -> %s weight %s", region, want.name, want.enabled, want.weight)
        for line in warnings:
            self.log.warning("%s", line)
        for region, cause in held_back.items():
            self.log.warning("%s is held back on %s: %s", region, serving.get(region), cause)
        summary = {
            r: {"serving": serving[r], "enabled": desired[r].enabled, "weight": desired[r].weight}
            for r in self.fleet.region_names
        }
        if failures:
            causes = "; ".join(f.line() for f in failures)
            rolled = (ti.xcom_pull(task_ids=names.ROLLBACK_ALL) or {}).get("rolled_back") or {}
            if rolled:
                causes += "; rollback-all: " + ", ".join(
                    f"{r} to revision {o['rolled_back_to']}" if o.get("rolled_back_to") else f"{r} ({o['note']})"
                    for r, o in rolled.items()
                )
            # The run's failure notification names these (fanout.airflow.notify).
            ti.xcom_push(key=names.RUN_FAILURES_KEY, value=[f.to_xcom() for f in failures])
            raise AirflowFailException(f"release of {self.fleet.app.name} {digest} failed — {causes}")
        return {"regions": summary, "warnings": warnings, "held_back": held_back}


class RecordReleaseOperator(FanoutOperator):
    """Emit the release Asset event the consistency DAG reads."""

    def run(self, context: Context) -> dict[str, Any]:
        built = self.release(context)
        balance = context["ti"].xcom_pull(task_ids=names.REBALANCE) or {}
        extra = {
            "app": self.fleet.app.name,
            **built.to_xcom(),
            "chart_version": self.fleet.app.chart.version,
            "fleet_sha256": self.snapshot(context).sha256,
            "run_id": context["run_id"],
            "regions": context["params"].get("regions") or self.fleet.region_names,
            "outcome": balance.get("regions", {}),
            # Regions a wave's quorum let the release go on without; the consistency check leaves them be.
            "held_back": balance.get("held_back", {}),
        }
        context["outlet_events"][release_asset(self.fleet.app.name)].extra = extra
        self.log.info("recorded release %s of %s", built.digest, self.fleet.app.name)
        return extra
