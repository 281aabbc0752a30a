"""What every Fanout task shares: the run's fleet snapshot, the skip rules, and failure records.

A task decides from the fleet snapshot its run recorded (`validate` for a release, `read_desired`
for a consistency check), never from the fleet file as it is now. Before any work it decides
whether it has anything to do in this run: a region outside the run's `regions` subset is
skipped, and a dry run skips every task but those marked `runs_on_dry_run`. Outside systems are
reached only through FleetHook; decisions come from fanout.policy.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn

from airflow.sdk import Asset, BaseOperator, Context, Variable, get_current_context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from fanout import names
from fanout.airflow.hooks import FleetHook
from fanout.controls import Freeze, Hold, Quarantine, hold, parse_freeze, parse_pause, parse_quarantine
from fanout.fleet import Fleet, Hotfix
from fanout.policy import DIGEST, WaveVerdict, tolerated_failures, wave_verdict
from fanout.records import FleetSnapshot, Release, StepFailure
from fanout.redact import scrub

SNAPSHOT_KEY = "snapshot"


def release_asset(app: str) -> Asset:
    return Asset(name=names.release_asset_name(app), uri=names.release_asset_uri(app))


def current_hold(fleet: Fleet, region: str, hotfix: bool = False) -> tuple[Hold | None, Freeze | None]:
    """(what holds `region` back from a change now, the freeze an approved `hotfix` passes): a
    freeze, a pause (Airflow Variables, read as they are now) or its deploy window. The drain asks
    in the worker and its wait in the triggerer."""
    app, spec, now = fleet.app.name, fleet.region(region).deploy_window, datetime.now(UTC)
    freeze = parse_freeze(Variable.get(names.freeze_variable(app), default=None))
    passed = freeze if hotfix and freeze is not None and freeze.covers(region, now) else None
    held = hold(
        region,
        now,
        freeze=None if hotfix else freeze,
        pause=parse_pause(Variable.get(names.pause_variable(app), default=None)),
        window=spec.window if spec else None,
        on_freeze=fleet.rollout.on_freeze,
    )
    return held, passed


def targeted(params: dict[str, Any], region: str) -> bool:
    chosen = params.get("regions")
    return not chosen or region in chosen


class FanoutOperator(BaseOperator):
    """Base for every Fanout task. Subclasses implement `run`; region steps set `step`."""

    runs_on_dry_run: ClassVar[bool] = False
    # The task of this DAG that records the run's fleet snapshot.
    snapshot_task: ClassVar[str] = names.VALIDATE
    step: ClassVar[str | None] = None
    # False for the tasks that run before the snapshot exists (the supersede check, the snapshot's own task).
    needs_snapshot: ClassVar[bool] = True
    ui_color = "#e8f1fb"

    def __init__(self, *, fleet_path: str, region: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)  # a failed gate must fail now, not be retried into a pass
        super().__init__(**kwargs)
        self.fleet_path = fleet_path
        self.region = region
        self._fleet: Fleet | None = None
        self._hook: FleetHook | None = None

    # -- the run's fleet -------------------------------------------------------------
    def snapshot(self, context: Context) -> FleetSnapshot:
        recorded = FleetSnapshot.from_xcom(context["ti"].xcom_pull(task_ids=self.snapshot_task, key=SNAPSHOT_KEY))
        if recorded is None:
            raise AirflowFailException(f"{self.snapshot_task} recorded no fleet snapshot: this run cannot decide")
        return recorded

    @property
    def fleet(self) -> Fleet:
        # A resumed deferral calls its method on a fresh operator, without execute(): load lazily.
        if self._fleet is None:
            self._fleet = self.snapshot(get_current_context()).fleet()
        return self._fleet

    @property
    def hook(self) -> FleetHook:
        if self._hook is None:
            self._hook = FleetHook(self.fleet)
        return self._hook

    def execute(self, context: Context) -> Any:
        params = context["params"]
        if self.region is not None and not targeted(params, self.region):
            raise AirflowSkipException(f"{self.region} is not in this run's regions {params.get('regions')}")
        if params.get("dry_run") and not self.runs_on_dry_run:
            raise AirflowSkipException("dry run: nothing is changed")
        if self.needs_snapshot and context["ti"].xcom_pull(task_ids=self.snapshot_task, key=SNAPSHOT_KEY) is None:
            # The run was refused (or never validated): there is nothing to act on or undo.
            raise AirflowSkipException(f"{self.snapshot_task} refused this run: nothing was changed")
        try:
            return self.run(context)
        except AirflowFailException as err:
            self.record_refusal(context, err)
            raise
        except AirflowException:
            raise  # Airflow's own flow: a skip
        except Exception as err:
            self.record_unforeseen(context, err)
            raise
        finally:
            self.close_hook()

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowFailException as err:
            self.record_refusal(context, err)
            raise
        except AirflowException:
            raise
        except Exception as err:
            self.record_unforeseen(context, err)
            raise
        finally:
            self.close_hook()

    def record_failure(self, context: Context, failure: dict[str, Any]) -> None:
        """Push why this step failed (a StepFailure's XCom), once: record_refusal then leaves it."""
        context["ti"].xcom_push(key=names.FAILURE_KEY, value=failure)
        self._failure_recorded = True

    def record_refusal(self, context: Context, err: AirflowFailException) -> None:
        """A step that failed with its own AirflowFailException but not through `fail` (the build's
        "registry … unreachable", validate's refusals): record it too, unless `fail` did."""
        if not getattr(self, "_failure_recorded", False):
            self._record(context, scrub(str(err), limit=800))

    def record_unforeseen(self, context: Context, err: Exception) -> None:
        """An outside system failed in a way no step foresaw (Traffic Manager still throttling after
        every retry, a cluster gone mid-step): record why, as `fail` does, so that the rollback and
        the run's message name region, step and cause instead of "see its log". The error is still
        raised as it was, so Airflow's retries (helm_deploy's) still apply."""
        self._record(context, scrub(f"{type(err).__name__}: {err}", limit=800))

    def _record(self, context: Context, cause: str) -> None:
        failure = StepFailure(self.region, self.step or self.task_id, cause)
        with contextlib.suppress(Exception):  # recording must never hide the error itself
            context["ti"].xcom_push(key=names.FAILURE_KEY, value=failure.to_xcom())

    def close_hook(self) -> None:
        """Close the hook's clients and remove its AKS kubeconfigs (short-lived tokens on disk) when the
        task ends or defers, instead of whenever the worker collects it."""
        if self._hook is not None:
            self._hook.close()
            self._hook = None

    def run(self, context: Context) -> Any:
        raise NotImplementedError(f"{type(self).__name__} ({self.task_id}) has no implementation")

    def fail(self, context: Context, cause: str, consequence: bool = False) -> NoReturn:
        """Record why this step failed (rollback and the run's final message read it), then fail."""
        failure = StepFailure(self.region, self.step or self.task_id, cause, consequence)
        self.record_failure(context, failure.to_xcom())
        raise AirflowFailException(f"{self.region or 'release'}: {failure.gate} failed: {cause}")

    def freeze(self) -> Freeze | None:
        """The app's freeze as Airflow holds it now (read at the moment of the change, not at run start)."""
        return parse_freeze(Variable.get(names.freeze_variable(self.fleet.app.name), default=None))

    def hotfix(self, context: Context) -> Hotfix | None:
        """The fleet's hotfix settings when this run is a hotfix (validate refuses one the fleet has none for)."""
        return self.fleet.rollout.hotfix if context["params"].get("hotfix") else None

    def quarantine(self, digest: str) -> Quarantine | None:
        """The digest's quarantine as Airflow holds it now."""
        key = names.quarantine_variable(self.fleet.app.name, digest)
        return parse_quarantine(Variable.get(key, default=None), digest)

    # -- shared facts of the run -------------------------------------------------------
    def release(self, context: Context) -> Release:
        built = Release.from_xcom(context["ti"].xcom_pull(task_ids=names.BUILD))
        if built is None or not DIGEST.match(built.digest):
            raise AirflowFailException("no release digest: the build task did not record one")
        return built

    def task_states(self, context: Context, task_ids: list[str] | None = None) -> dict[str, str | None]:
        """The state of tasks of this run by task id (every task when `task_ids` is None).

        Trigger rules cannot tell a step that failed from one that never ran because an
        earlier wave failed (both count for one_failed), so the steps that react to a
        failure ask the run which tasks really failed.
        """
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[ti.run_id])
        return {task: (str(state) if state is not None else None) for task, state in states.get(ti.run_id, {}).items()}

    def failures(self, context: Context) -> list[StepFailure]:
        """What failed in this run, one entry per failed task, each naming region, step and cause;
        a task that failed only as the consequence of another is left out."""
        ti = context["ti"]
        known = names.failing_tasks(self.fleet.region_names)
        found = []
        for task_id, state in sorted(self.task_states(context).items()):
            if state != "failed":
                continue
            recorded = StepFailure.from_xcom(ti.xcom_pull(task_ids=task_id, key=names.FAILURE_KEY))
            region, step = known.get(task_id, (None, task_id))
            if not (recorded and recorded.consequence):
                found.append(recorded or StepFailure(region, step, f"task {task_id} failed; see its log"))
        return found

    def wave_verdicts(self, context: Context) -> list[WaveVerdict]:
        """The verdict on each wave this run targets, from its regions' task states (policy.wave_verdict)."""
        params, fleet = context["params"], self.fleet
        states = self.task_states(context)
        final = names.final_step(fleet.gates.metrics is not None)
        canary, quorum, verdicts = bool(fleet.rollout.canary), fleet.rollout.wave_quorum, []
        never = (None, "upstream_failed", "skipped")
        for number, wave in enumerate(self.snapshot(context).waves, 1):
            regions = [r for r in wave if targeted(params, r)]
            if not regions:
                continue
            passed = [r for r in regions if states.get(names.region_task(r, final)) == "success"]
            # Not started: no region of it got as far as its drain (the build, the wave before it,
            # or every region's replica failed); its regions were never changed, so none is held back.
            started = any(states.get(names.region_task(r, names.DRAIN)) not in never for r in regions)
            verdicts.append(wave_verdict(number, regions, passed, started, quorum, canary=number == 1 and canary))
        return verdicts

    def judged_failures(self, context: Context) -> tuple[list[StepFailure], dict[str, str]]:
        """(the failures that fail the release, {held-back region: why}): a region that failed in
        a wave that still passed (rollout.wave_quorum) is held back, and its failure tolerated."""
        tolerated = tolerated_failures(self.wave_verdicts(context))
        fatal, held_back = [], {r: "did not pass; see its tasks" for r in sorted(tolerated)}
        for failure in self.failures(context):
            if failure.region in tolerated:
                held_back[failure.region] = f"{failure.gate}: {failure.cause}"
            else:
                fatal.append(failure)
        return fatal, held_back
