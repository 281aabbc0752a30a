"""The consistency check's operators: desired state, what each region runs, the verdict, repair.

Facts are gathered here through FleetHook; every judgement is a plain function in fanout.drift.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Context, Variable
from airflow.sdk.exceptions import AirflowFailException, DagRunTriggerException

from fanout import names
from fanout.adapters.cluster import ClusterError
from fanout.adapters.helm import HelmError
from fanout.adapters.registry import RegistryError
from fanout.airflow.base import SNAPSHOT_KEY, FanoutOperator, release_asset
from fanout.controls import frozen_regions
from fanout.drift import classify_fleet, first_seen, redact, repair_plan, table
from fanout.policy import DIGEST, deployment_facts, digest_of
from fanout.records import FleetSnapshot, Observation

RELEASES_LOOKED_BACK = 20  # older releases named in the report ("runs git 1a2b3c4")
ACTIVE = ["queued", "running"]


def recorded_by_release(event: Any, app: str) -> bool:
    """An Asset event that the release DAG's `record` task emitted. Anyone allowed to POST asset
    events over the REST API could otherwise name any digest, and repair mode would release it."""
    extra = event.extra or {}
    return (
        event.source_dag_id == names.release_dag(app)
        and event.source_task_id == names.RECORD
        and not extra.get("from_rest_api")
        and extra.get("app") == app
        and bool(DIGEST.match(str(extra.get("digest", ""))))
    )


class _ConsistencyStep(FanoutOperator):
    snapshot_task = names.READ_DESIRED


class ReadDesiredStateOperator(_ConsistencyStep):
    """The last successful release of the app (its Asset event); records the check's fleet snapshot."""

    needs_snapshot = False

    ui_color = "#f3ecfb"

    def run(self, context: Context) -> dict[str, Any]:
        snapshot = FleetSnapshot.of_file(self.fleet_path)
        self._fleet = snapshot.fleet()
        context["ti"].xcom_push(key=SNAPSHOT_KEY, value=snapshot.to_xcom())
        app = self.fleet.app.name
        # Only assets declared as the task's inlets can be read; newest first.
        events = context["inlet_events"][release_asset(app)].ascending(False).limit(RELEASES_LOOKED_BACK)
        releases = []
        for event in events:
            if recorded_by_release(event, app):
                releases.append({**(event.extra or {}), "recorded_at": event.timestamp.isoformat()})
            else:
                self.log.warning("ignored an event of %s not recorded by %s: %s", release_asset(app).name,
                                 names.release_dag(app), redact(str(event.extra)))  # fmt: skip
        if not releases:
            self.log.warning("no release of %s recorded yet: nothing to compare the fleet against", app)
            return {"desired": None, "releases": {}}
        latest = releases[0]
        keys = ("digest", "git_sha", "source_ref", "chart_version", "repository", "run_id", "held_back")
        desired = {k: latest.get(k) for k in keys}
        desired["recorded_at"] = latest["recorded_at"]
        self.log.info("desired: %s (git %s) recorded by %s", desired["digest"], desired["git_sha"], desired["run_id"])
        older = {r["digest"]: r["git_sha"] for r in reversed(releases[1:]) if r["digest"] != desired["digest"]}
        return {"desired": desired, "releases": older}


class ObserveRegionOperator(_ConsistencyStep):
    """What the region really runs and serves. Never fails for the region's sake: an
    unreachable region is a finding, and must not hide what the other regions show."""

    ui_color = "#eef7ee"

    def run(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        read = context["ti"].xcom_pull(task_ids=names.READ_DESIRED) or {}
        digest = (read.get("desired") or {}).get("digest")
        app, region = self.fleet.app, self.region
        out = Observation(str(region)).to_xcom()
        try:
            deployment = self.hook.cluster(region).deployment(app.namespace, app.name)
            out["deployment"] = deployment_facts(deployment)
            if deployment is not None:
                out["pods"] = self._pod_digests(deployment)
            out["helm"] = self._helm_facts()
        except Exception as err:  # whatever stops us reading the region is the finding, not a crash
            out.update(reachable=False, error=redact(_message(err)))
        if digest:
            try:
                out["replica_has_digest"] = self.hook.registry(region).has_manifest(
                    self.fleet.registry.repository, digest
                )
            except Exception as err:  # informative only: the registry's own outage is not the region's state
                self.log.warning("%s: cannot ask the registry replica: %s", region, redact(_message(err)))
        try:
            name = self.fleet.region(region).endpoint.name
            endpoint = self.hook.traffic_manager().endpoints().get(name)
            if endpoint is not None:
                out["endpoint"] = {k: getattr(endpoint, k) for k in ("name", "enabled", "weight", "monitor_status")}
            else:
                out["traffic_error"] = f"Traffic Manager has no endpoint {name!r}"
        except Exception as err:  # Traffic Manager down: the traffic columns say unknown
            out["traffic_error"] = redact(_message(err))
        self.log.info("%s observed in %.1f s: %s", region, time.monotonic() - started, out)
        return Observation(**out).to_xcom()

    def _helm_facts(self) -> dict[str, Any] | None:
        app = self.fleet.app
        helm = self.hook.helm(self.region)
        history = helm.history(app.name, app.namespace)
        if not history:
            return None
        current = history[-1]
        # `helm get values` reads the newest revision, the same one `current` is.
        values = helm.values(app.name, app.namespace)
        good = [h.revision for h in history[:-1] if h.status in ("deployed", "superseded")]
        return {
            "revision": current.revision,
            "status": current.status,
            "digest": (values.get("image") or {}).get("digest"),
            "rollback_to": good[-1] if good else None,
        }

    def _pod_digests(self, deployment: dict[str, Any]) -> list[str] | None:
        """The images the Deployment's live pods run; None when they cannot be listed (the
        Deployment's own image is the main evidence, this only catches pods edited directly)."""
        labels = (deployment.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        if not labels:
            return None
        try:
            images = self.hook.cluster(str(self.region)).pod_images(self.fleet.app.namespace, labels)
        except ClusterError as err:  # an answer we cannot use is not worth failing the observation
            self.log.warning("%s: cannot list pods: %s", self.region, redact(str(err)))
            return None
        return sorted(digest_of(image) or image for image in images)


def _message(err: Exception) -> str:
    from fanout.adapters.traffic import TrafficManagerError

    # Adapter errors carry a readable message; anything else is named by its type too.
    known = (ClusterError, HelmError, RegistryError, TrafficManagerError)
    return str(err) if isinstance(err, known) else f"{type(err).__name__}: {err}"


class ClassifyFleetOperator(_ConsistencyStep):
    """in-sync / stale / drifted / stuck / unreachable / traffic-mismatch per region."""

    ui_color = "#fff7e0"

    def run(self, context: Context) -> dict[str, Any]:
        ti, fleet = context["ti"], self.fleet
        read = ti.xcom_pull(task_ids=names.READ_DESIRED)
        if read is None:
            raise AirflowFailException("read_desired recorded nothing: the fleet cannot be compared with a release")
        observations = {r: ti.xcom_pull(task_ids=names.observe(r)) for r in fleet.region_names}
        # First-seen times live in a Variable: it outlives cleared and deleted runs, and a task
        # cannot query the previous run's XCom reliably (manual runs have no logical date to
        # order by). max_active_runs=1 keeps two checks from writing it at once.
        key = names.first_seen_variable(fleet.app.name)
        stored = Variable.get(key, default={}, deserialize_json=True) or {}
        report = classify_fleet(
            read.get("desired"),
            observations,
            {r.name: r.endpoint.weight for r in fleet.regions},
            fleet.min_serving_regions,
            stored.get("first_seen", {}),
            datetime.now(UTC),
            read.get("releases"),
            standby=[r.name for r in fleet.regions if r.standby],
        )
        Variable.set(key, {"checked_at": report["checked_at"], "first_seen": first_seen(report)}, serialize_json=True)
        report["app"], report["mode"] = fleet.app.name, fleet.consistency.mode
        # One log line per table row, so `make check` can lift the table out of `airflow dags test`.
        self.log.info("fleet %s, %s mode, checked %s", fleet.app.name, report["mode"], report["checked_at"])
        for line in table(report).splitlines():
            self.log.info("%s", line)
        return report


class RepairFleetOperator(_ConsistencyStep):
    """Trigger a targeted release run for the regions that are not in sync.

    The repair never changes a region itself: the release run does, so drains, pairs, gates
    and rollback apply, and since release runs go one at a time (max_active_runs=1) no region
    is ever changed by two runs at once. That run's helm_deploy also rolls a stuck release
    back to its last good revision before upgrading."""

    ui_color = "#fbe8e8"

    def run(self, context: Context) -> dict[str, Any]:
        ti, app = context["ti"], self.fleet.app
        report = ti.xcom_pull(task_ids=names.CLASSIFY)
        if report is None:
            raise AirflowFailException("classify recorded no report: nothing to repair from")
        plan = repair_plan(report, frozen_regions(self.freeze(), list(report["regions"]), datetime.now(UTC)))
        for region, why in plan["skipped"].items():
            self.log.warning("%s: not repaired: %s", region, why)
        outcome: dict[str, Any] = {"mode": self.fleet.consistency.mode, **plan, "action": "none"}
        if not plan["release"]:
            self.log.info("nothing to repair: %s", report["message"])
            return outcome
        desired = report["desired"]
        if quarantined := self.quarantine(desired["digest"]):
            # The last release was quarantined after it was recorded: never repair toward it.
            self.log.warning("not repairing toward the last release: %s", quarantined.line())
            return {**outcome, "action": "quarantined", "quarantine": quarantined.line()}
        release_dag = names.release_dag(app.name)
        conf = {"git_sha": desired["git_sha"], "image": desired["digest"], "regions": plan["release"]}
        for rb in plan["rollback"]:
            self.log.info("%s is stuck: the release run rolls it back to Helm revision %s first",
                          rb["region"], rb["revision"])  # fmt: skip
        if self.fleet.consistency.mode != "repair":
            self.log.info("report mode: would trigger %s with conf %s", release_dag, conf)
            return {**outcome, "action": "report-only", "conf": conf}
        # Piling another run behind an active one would only redo its work (or be superseded
        # by it): the next check repairs whatever that run leaves behind.
        active = ti.get_dr_count(dag_id=release_dag, states=ACTIVE)
        if active:
            self.log.warning(
                "%s has %s queued or running run(s): the next check repairs what is left", release_dag, active
            )
            return {**outcome, "action": "waiting", "active_release_runs": active}
        run_id = repair_run_id(desired["digest"], plan["release"], context["run_id"])
        self.log.info("triggering %s run %s with conf %s", release_dag, run_id, conf)
        ti.xcom_push(key="return_value", value={**outcome, "action": "triggered", "run_id": run_id, "conf": conf})
        # The Task SDK's own trigger (what TriggerDagRunOperator raises): the API server creates
        # the run; the same run_id again (this task cleared and re-run) is refused and skipped.
        raise DagRunTriggerException(
            trigger_dag_id=release_dag,
            dag_run_id=run_id,
            conf=conf,
            logical_date=None,
            reset_dag_run=False,
            skip_when_already_exists=True,
            wait_for_completion=False,
            allowed_states=["success"],
            failed_states=["failed"],
            poke_interval=60,
            deferrable=False,
            note=f"repair by {context['dag'].dag_id}: {report['message']}",
        )


def repair_run_id(digest: str, regions: list[str], check_run_id: str) -> str:
    """One run id per check run, digest and region set: a retried repair task cannot trigger twice."""
    tag = hashlib.sha256(f"{check_run_id}|{digest}|{','.join(sorted(regions))}".encode()).hexdigest()[:10]
    return f"repair__{digest[7:19]}__{tag}"
