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
from airflow.sdk import DAG, Asset, Param, TaskGroup, TriggerRule

from fanout.airflow import consistency as cc
from fanout.airflow import dns_waits
from fanout.airflow import operators as op
from fanout.airflow.supersede import CheckSupersededOperator
from fanout.fleet import Fleet, load_fleet
from fanout.planner import plan_waves
from fanout.trigger import GIT_SHA, IMAGE  # one definition: the trigger checks what these Params accept

REPO = Path(__file__).resolve().parents[3]
DEFAULT_FLEET = REPO / "include" / "fleets" / "local.yaml"


def fleet_paths() -> list[Path]:
    """Fleet files named by FANOUT_FLEETS (os.pathsep-separated), else the local fleet."""
    setting = os.environ.get("FANOUT_FLEETS", "")
    paths = [Path(p) for p in setting.split(os.pathsep) if p.strip()]
    return paths or [DEFAULT_FLEET]


def release_asset(app: str) -> Asset:
    return Asset(name=f"fanout_release_{app}", uri=f"fanout://{app}/release")


def release_params(fleet: Fleet) -> dict[str, Param]:
    return {
        "git_sha": Param(
            type="string", pattern=GIT_SHA.pattern, description="commit being released (7–40 lowercase hex characters)"
        ),
        "source_ref": Param("main", type="string", minLength=1, description="branch or tag the commit came from"),
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
    }


def _deploy_group(fleet: Fleet, path: str, region: str) -> tuple[TaskGroup, op.FanoutOperator]:
    with TaskGroup(group_id=f"deploy_{region}", tooltip=f"drain, deploy, gate and restore {region}") as group:
        kw = {"fleet_path": path, "region": region}
        drain = op.DrainRegionOperator(task_id="drain", **kw)
        # Resolvers hold the old answer for the TTL: wait it out and see users gone before Helm starts.
        settle = dns_waits.DnsSettleOperator(task_id="dns_settle", **kw)
        confirm = dns_waits.ConfirmDrainedOperator(task_id="confirm_drained", **kw)
        deploy = op.HelmDeployOperator(task_id="helm_deploy", **kw)
        gates = [
            op.RolloutGateOperator(task_id="gate_rollout", **kw),
            op.HttpGateOperator(task_id="gate_http", **kw),
            op.SoakGateOperator(task_id="gate_soak", **kw),
        ]
        if fleet.gates.metric is not None:
            gates.append(op.MetricGateOperator(task_id="gate_metric", **kw))
        restore = op.RestoreRegionOperator(task_id="restore", **kw)
        rollback = op.RollbackRegionOperator(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED, **kw)
        drain >> settle >> confirm >> deploy
        prev = deploy
        for gate in gates:
            prev >> gate
            prev = gate
        prev >> restore
        # The next wave drains only once this region is back in Traffic Manager's answers.
        restore >> dns_waits.WaitOnlineOperator(task_id="wait_online", **kw)
        [deploy, *gates] >> rollback
    return group, restore


def build_release_dag(fleet: Fleet, path: str) -> DAG:
    plan = plan_waves(fleet)
    app = fleet.app.name
    with DAG(
        dag_id=f"release_{app}",
        description=f"Release {app} to {len(fleet.regions)} regions in {len(plan.waves)} waves",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        params=release_params(fleet),
        tags=["fanout", app],
        doc_md=f"```\n{plan.explain()}\n```",
    ) as dag:
        kw = {"fleet_path": path}
        check = CheckSupersededOperator(task_id=op.SUPERSEDING_TASK, **kw)
        validate = op.ValidateReleaseOperator(task_id="validate", **kw)
        build = op.BuildImageOperator(task_id="build", **kw)
        check >> validate >> build
        waits = {
            r: op.WaitForReplicationOperator(task_id=f"wait_replication_{r}", region=r, **kw) for r in plan.regions
        }
        build >> list(waits.values())

        restores, all_groups = [], []
        previous = None
        for wave in plan.waves:
            groups = []
            for region in wave.regions:
                group, restore = _deploy_group(fleet, path, region)
                waits[region] >> group
                groups.append(group)
                restores.append(restore)
            all_groups.extend(groups)
            if previous is not None:
                previous >> groups
            if wave.number < len(plan.waves):
                # Skipped regions (not in the run's subset) must not stop later waves.
                bake = op.BakeOperator(
                    task_id=f"bake_after_wave_{wave.number}",
                    trigger_rule=TriggerRule.NONE_FAILED,
                    wave_regions=list(wave.regions),
                    **kw,
                )
                groups >> bake
                previous = bake
                if wave.canary and fleet.rollout.manual_approval:
                    approve = ApprovalOperator(
                        task_id="approve_after_canary",
                        subject=f"Continue the release of {app} after the canary wave?",
                        response_timeout=timedelta(minutes=fleet.rollout.approval_timeout_minutes),
                        fail_on_reject=True,
                    )
                    bake >> approve
                    previous = approve

        # Traffic must end in a defined state whatever happened above.
        rebalance = op.RebalanceOperator(task_id="rebalance", trigger_rule=TriggerRule.ALL_DONE, **kw)
        record = op.RecordReleaseOperator(
            task_id="record", trigger_rule=TriggerRule.NONE_FAILED, outlets=[release_asset(app)], **kw
        )
        all_groups >> rebalance
        if fleet.failure_policy == "rollback-all":
            # all_done, not one_failed: one_failed fires at the first failure, while the other
            # regions of that wave are still deploying; the task itself skips when nothing failed.
            rollback_all = op.RollbackAllOperator(task_id="rollback_all", trigger_rule=TriggerRule.ALL_DONE, **kw)
            all_groups >> rollback_all >> rebalance
        [*restores, rebalance] >> record
    return dag


def build_consistency_dag(fleet: Fleet, path: str) -> DAG:
    app = fleet.app.name
    with DAG(
        dag_id=f"fleet_consistency_{app}",
        description=f"Check every region of {app} against its last release ({fleet.consistency.mode})",
        schedule=fleet.consistency.schedule,
        catchup=False,
        max_active_runs=1,
        tags=["fanout", app, "consistency"],
    ) as dag:
        kw = {"fleet_path": path}
        desired = cc.ReadDesiredStateOperator(task_id="read_desired", inlets=[release_asset(app)], **kw)
        observe = [cc.ObserveRegionOperator(task_id=f"observe_{r}", region=r, **kw) for r in fleet.region_names]
        classify = cc.ClassifyFleetOperator(task_id="classify", trigger_rule=TriggerRule.ALL_DONE, **kw)
        repair = cc.RepairFleetOperator(task_id="repair", **kw)
        desired >> observe >> classify >> repair
    return dag


def build_all() -> dict[str, DAG]:
    """Every fleet's DAGs by dag_id. A broken fleet file raises FleetError, naming every problem."""
    dags: dict[str, DAG] = {}
    for path in fleet_paths():
        fleet = load_fleet(path)
        for dag in (build_release_dag(fleet, str(path)), build_consistency_dag(fleet, str(path))):
            if dag.dag_id in dags:
                raise ValueError(f"{path}: app.name '{fleet.app.name}' is used by another fleet file")
            dags[dag.dag_id] = dag
    return dags
