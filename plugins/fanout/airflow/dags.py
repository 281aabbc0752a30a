"""Build the two DAGs of each fleet: `release_<app>` and `fleet_consistency_<app>`.

The release graph is fixed by the fleet file's plan over all regions; a run that
targets a subset skips the other regions' tasks. A subset of a valid wave is still
valid (fewer regions drained, no pair added), so the static waves stay safe.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, BaseOperator, Param, TaskGroup, TriggerRule

from fanout import names
from fanout.airflow import consistency as cc
from fanout.airflow import dns_waits
from fanout.airflow import fleet_steps as fs
from fanout.airflow import notify as notifications
from fanout.airflow import region_steps as rs
from fanout.airflow.base import release_asset
from fanout.airflow.hotfix import HotfixApprovalOperator
from fanout.airflow.supersede import CheckSupersededOperator
from fanout.fleet import Fleet, FleetError, load_fleet
from fanout.planner import PlanError, plan_waves
from fanout.records import release_shape
from fanout.trigger import GIT_SHA, IMAGE, SOURCE_REF  # one definition: the trigger checks what these Params accept

REPO = Path(__file__).resolve().parents[3]
DEFAULT_FLEET = REPO / "include" / "fleets" / "local.yaml"


def fleet_paths() -> list[Path]:
    """Fleet files named by FANOUT_FLEETS (os.pathsep-separated), else the local fleet."""
    setting = os.environ.get("FANOUT_FLEETS", "")
    paths = [Path(p) for p in setting.split(os.pathsep) if p.strip()]
    return paths or [DEFAULT_FLEET]


def release_params(fleet: Fleet) -> dict[str, Param]:
    return {
        "git_sha": Param(
            type="string", pattern=GIT_SHA.pattern, description="commit being released (7–40 lowercase hex characters)"
        ),
        "source_ref": Param(
            "main", type="string", pattern=SOURCE_REF.pattern, description="branch or tag the commit came from"
        ),
        "image": Param(
            None,
            type=["null", "string"],
            pattern=IMAGE.pattern,
            description="skip the build and release this digest (sha256:…), or build with this tag",
        ),
        "regions": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "enum": fleet.region_names},
            uniqueItems=True,
            minItems=1,
            description="release only these regions (default: all)",
        ),
        "dry_run": Param(False, type="boolean", description="print the plan and change nothing"),
        "hotfix": Param(
            False, type="boolean", description="the emergency path: approved by a named approver, may pass a freeze"
        ),
        "hotfix_reason": Param(
            None, type=["null", "string"], maxLength=500, description="why this is a hotfix (required with hotfix)"
        ),
    }


def _deploy_group(fleet: Fleet, path: str, region: str) -> tuple[TaskGroup, BaseOperator]:
    """The region's group, and its last step a good release passes (what `record` waits for)."""
    with TaskGroup(group_id=names.deploy_group(region), tooltip=f"drain, deploy, gate and restore {region}") as group:
        kw = {"fleet_path": path, "region": region}
        drain = rs.DrainRegionOperator(task_id=names.DRAIN, **kw)
        # Resolvers hold the old answer for the TTL: wait it out and see users gone before Helm starts.
        settle = dns_waits.DnsSettleOperator(task_id=names.DNS_SETTLE, **kw)
        deploy = rs.HelmDeployOperator(task_id=names.HELM_DEPLOY, **kw)
        gates = rs.GatesOperator(task_id=names.GATES, **kw)
        # Enables the endpoint and waits until it is Online: the next wave drains only after that.
        restore = rs.RestoreRegionOperator(task_id=names.RESTORE, **kw)
        rollback = rs.RollbackRegionOperator(task_id=names.ROLLBACK, trigger_rule=TriggerRule.ONE_FAILED, **kw)
        drain >> settle >> deploy >> gates >> restore
        judged: list[BaseOperator] = [deploy, gates]
        last: BaseOperator = restore
        if fleet.gates.metrics is not None:
            # Users feel a build only once they reach it: measured with the region back online.
            last = rs.MetricGatesOperator(task_id=names.GATE_METRICS, **kw)
            restore >> last
            judged.append(last)
        judged >> rollback
    return group, last


def build_release_dag(fleet: Fleet, path: str) -> DAG:
    plan = plan_waves(fleet)
    app = fleet.app.name
    with DAG(
        dag_id=names.release_dag(app),
        description=f"Release {app} to {len(fleet.regions)} regions in {len(plan.waves)} waves",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        auto_register=False,  # only what build_all returns is a DAG: not a half-built fleet's
        params=release_params(fleet),
        tags=["fanout", app],
        doc_md=f"```\n{plan.explain()}\n```",
    ) as dag:
        kw = {"fleet_path": path}
        check = CheckSupersededOperator(task_id=names.CHECK_SUPERSEDED, **kw)
        validate = fs.ValidateReleaseOperator(task_id=names.VALIDATE, graph=release_shape(fleet, plan), **kw)
        build = fs.BuildImageOperator(task_id=names.BUILD, **kw)
        check >> validate >> build
        waits = {
            r: rs.WaitForReplicationOperator(task_id=names.wait_replication(r), region=r, **kw) for r in plan.regions
        }
        build >> list(waits.values())

        all_ends = []
        previous = None
        if fleet.rollout.hotfix is not None:
            # Before the first change: a hotfix run waits here for its approver (others pass at once).
            previous = HotfixApprovalOperator(
                task_id=names.APPROVE_HOTFIX, app=app, approvers=fleet.rollout.hotfix.approvers,
                response_timeout=timedelta(minutes=fleet.rollout.approval_timeout_minutes),
            )  # fmt: skip
            validate >> previous
        for wave in plan.waves:
            groups, wave_lasts = [], []
            for region in wave.regions:
                group, last = _deploy_group(fleet, path, region)
                waits[region] >> group
                groups.append(group)
                wave_lasts.append(last)
            # A metric gate is not a leaf of its group (the rollback follows it), so what comes
            # after the wave names it: the wave's verdict waits for every region's users to be judged.
            ends = [*groups, *wave_lasts]
            all_ends.extend(ends)
            if previous is not None:
                previous >> groups
            if wave.number < len(plan.waves):
                # all_done: the bake judges the wave itself (rollout.wave_quorum), failed regions and all.
                bake = fs.BakeOperator(
                    task_id=names.bake_after_wave(wave.number),
                    trigger_rule=TriggerRule.ALL_DONE,
                    wave_number=wave.number,
                    wave_regions=list(wave.regions),
                    **kw,
                )
                ends >> bake
                previous = bake
                if wave.canary and fleet.rollout.manual_approval:
                    approve = ApprovalOperator(
                        task_id=names.APPROVE_AFTER_CANARY,
                        subject=f"Continue the release of {app} after the canary wave?",
                        response_timeout=timedelta(minutes=fleet.rollout.approval_timeout_minutes),
                        fail_on_reject=True,
                    )
                    bake >> approve
                    previous = approve

        # Traffic must end in a defined state whatever happened above.
        rebalance = fs.RebalanceOperator(task_id=names.REBALANCE, trigger_rule=TriggerRule.ALL_DONE, **kw)
        # Rebalance fails a failed release (a failure outside the held-back regions); a refused run
        # skips it, so the build's state is named too: a run refused or never built ends failed.
        record = fs.RecordReleaseOperator(
            task_id=names.RECORD, trigger_rule=TriggerRule.NONE_FAILED, outlets=[release_asset(app)], **kw
        )
        all_ends >> rebalance
        if fleet.failure_policy == "rollback-all":
            # all_done, not one_failed: one_failed fires at the first failure, while the other
            # regions of that wave are still deploying; the task itself skips when nothing failed.
            rollback_all = fs.RollbackAllOperator(task_id=names.ROLLBACK_ALL, trigger_rule=TriggerRule.ALL_DONE, **kw)
            all_ends >> rollback_all >> rebalance
        [build, rebalance] >> record
    notifications.attach(fleet, dag.task_dict)
    return dag


def build_consistency_dag(fleet: Fleet, path: str) -> DAG:
    app = fleet.app.name
    with DAG(
        dag_id=names.consistency_dag(app),
        description=f"Check every region of {app} against its last release ({fleet.consistency.mode})",
        schedule=fleet.consistency.schedule,
        catchup=False,
        max_active_runs=1,
        auto_register=False,
        tags=["fanout", app, "consistency"],
    ) as dag:
        kw = {"fleet_path": path}
        desired = cc.ReadDesiredStateOperator(task_id=names.READ_DESIRED, inlets=[release_asset(app)], **kw)
        observe = [cc.ObserveRegionOperator(task_id=names.observe(r), region=r, **kw) for r in fleet.region_names]
        classify = cc.ClassifyFleetOperator(task_id=names.CLASSIFY, trigger_rule=TriggerRule.ALL_DONE, **kw)
        repair = cc.RepairFleetOperator(task_id=names.REPAIR, **kw)
        desired >> observe >> classify >> repair
    notifications.attach(fleet, dag.task_dict)
    return dag


def build_all() -> tuple[dict[str, DAG], list[str]]:
    """Every fleet's DAGs by dag_id, and one error line per fleet file that could not be built.
    Each fleet is built on its own, so one broken file costs only its own DAGs."""
    dags: dict[str, DAG] = {}
    errors: list[str] = []
    for path in fleet_paths():
        try:
            fleet = load_fleet(path)
            built = [build_release_dag(fleet, str(path)), build_consistency_dag(fleet, str(path))]
            for dag in built:
                dag.validate()  # what Airflow checks before it keeps a DAG (the schedule, say), per fleet
        except (FleetError, PlanError) as err:
            errors.append(f"{path}: {err}" if isinstance(err, PlanError) else str(err))
            continue
        except Exception as err:  # whatever else a fleet file makes fail (an invalid schedule, say)
            errors.append(f"{path}: {type(err).__name__}: {err}")
            continue
        taken = [d.dag_id for d in built if d.dag_id in dags]
        if taken:
            errors.append(f"{path}: app.name '{fleet.app.name}' is used by another fleet file")
            continue
        dags.update({d.dag_id: d for d in built})
    return dags, errors


class BrokenFleet(DAG):
    """Stands in for a fleet file whose DAGs cannot be built. Airflow validates each DAG before it
    keeps it and records what that raises as an import error of the DAG file, while the other
    fleets' DAGs are kept: so a broken fleet file shows up, named, without hiding the others."""

    def validate(self) -> None:
        raise FleetError([str(self.description)])


def dags_and_errors() -> dict[str, DAG]:
    """What dags/fanout_dags.py exposes: every fleet's DAGs, plus one BrokenFleet per broken file."""
    dags, errors = build_all()
    for number, error in enumerate(errors, 1):
        broken = BrokenFleet(dag_id=f"fanout_broken_fleet_{number}", description=error, schedule=None)
        dags[broken.dag_id] = broken
    return dags
