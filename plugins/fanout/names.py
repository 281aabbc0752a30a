"""Every name the DAGs are made of, in one place: DAG ids, task and group ids, XCom keys and the
release Asset. The DAG builder, the operators, the consistency DAG, `fanout trigger` and the
tests all ask here, so a task id is never spelt twice and no code parses one to learn a region.

Plain strings only: this module imports nothing from Airflow.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime

# -- DAGs ------------------------------------------------------------------------------


def release_dag(app: str) -> str:
    return f"release_{app}"


def consistency_dag(app: str) -> str:
    return f"fleet_consistency_{app}"


# -- the release Asset (its event is the record the consistency DAG reads) -------------


def release_asset_name(app: str) -> str:
    return f"fanout_release_{app}"


def release_asset_uri(app: str) -> str:
    # "x-": a scheme Airflow leaves alone. Any other makes the Asset look up every provider's URI
    # normalizer, importing their asset modules (and Airflow's ORM) in each task's DAG-file parse:
    # about 0.2 s a task (airflow/sdk/definitions/asset/__init__.py, _sanitize_uri).
    return f"x-fanout://{app}/release"


# -- release DAG tasks -----------------------------------------------------------------

CHECK_SUPERSEDED = "check_superseded"
VALIDATE = "validate"
BUILD = "build"
APPROVE_AFTER_CANARY = "approve_after_canary"
APPROVE_HOTFIX = "approve_hotfix"
REBALANCE = "rebalance"
ROLLBACK_ALL = "rollback_all"
RECORD = "record"

# The steps of a region's group, in the order they run; `rollback` follows a failed one. Each wait
# step is one deferral (one task boundary on the critical path):
# - `dns_settle` waits the DNS TTL, then until the edge sees no user request (`confirm_drained`);
# - `gates` runs the gate checks one after another (`gate_rollout`, `gate_http`, `gate_soak`);
# - `restore` enables the endpoint, then waits until the monitor reports it Online (`wait_online`).
# A failure names its check (StepFailure.gate), not only its task.
DRAIN, DNS_SETTLE, HELM_DEPLOY, GATES, RESTORE = "drain", "dns_settle", "helm_deploy", "gates", "restore"
ROLLBACK, GATE_METRICS = "rollback", "gate_metrics"  # metrics: after restore, with users back on the region
GATE_ROLLOUT, GATE_HTTP, GATE_SOAK = "gate_rollout", "gate_http", "gate_soak"
GATE_CHECKS = (GATE_ROLLOUT, GATE_HTTP, GATE_SOAK)
CONFIRM_DRAINED, WAIT_ONLINE = "confirm_drained", "wait_online"
# Steps whose failure a region's rollback answers (StepFailure records why), in order. A failed
# dns_settle deployed nothing, so there is nothing to roll back: the region stays drained.
FAILING_STEPS = (DRAIN, HELM_DEPLOY, GATES, GATE_METRICS)
RECORDING_STEPS = (DRAIN, DNS_SETTLE, HELM_DEPLOY, GATES, RESTORE, GATE_METRICS)
WAIT_REPLICATION = "wait_replication"


def final_step(metric_gates: bool) -> str:
    """The step a region passed the release with, once it succeeded: every earlier one did too."""
    return GATE_METRICS if metric_gates else RESTORE


def deploy_group(region: str) -> str:
    return f"deploy_{region}"


def region_task(region: str, step: str) -> str:
    """A step of a region's group, e.g. `deploy_eastus.helm_deploy`."""
    return f"{deploy_group(region)}.{step}"


def wait_replication(region: str) -> str:
    return f"{WAIT_REPLICATION}_{region}"


def bake_after_wave(number: int) -> str:
    return f"bake_after_wave_{number}"


def failing_tasks(regions: list[str]) -> dict[str, tuple[str, str]]:
    """task id → (region, step) for every task of a release that can fail on a region's account."""
    found = {wait_replication(r): (r, WAIT_REPLICATION) for r in regions}
    for region in regions:
        found.update({region_task(region, step): (region, step) for step in RECORDING_STEPS})
    return found


# -- consistency DAG tasks ---------------------------------------------------------------

READ_DESIRED = "read_desired"
CLASSIFY = "classify"
REPAIR = "repair"


def observe(region: str) -> str:
    return f"observe_{region}"


def freeze_variable(app: str) -> str:
    """The Variable that holds the app's freeze (fanout.controls)."""
    return f"fanout_freeze_{app}"


def pause_variable(app: str) -> str:
    """The Variable that pauses the app's releases between waves (fanout.controls)."""
    return f"fanout_pause_{app}"


def quarantine_variable(app: str, digest: str) -> str:
    """The Variable that quarantines one digest of the app (fanout.controls)."""
    return f"fanout_quarantine_{app}_{digest.removeprefix('sha256:')}"


def audit_variable_prefix(app: str) -> str:
    """The app's audit records are Variables named this plus a UTC time and a random tag."""
    return f"fanout_audit_{app}_"


def audit_record(app: str, by: str, now: datetime) -> tuple[str, str]:
    """A new audit record's Variable key and value. The key is new each time (a UTC time and a random
    tag), so a record is created once and never changed."""
    key = f"{audit_variable_prefix(app)}{now.strftime('%Y%m%dT%H%M%S%fZ')}_{secrets.token_hex(3)}"
    return key, json.dumps({"at": now.isoformat(timespec="seconds"), "by": by})


def first_seen_variable(app: str) -> str:
    """The Variable that carries first-seen times from one consistency check to the next."""
    return f"fanout_consistency_{app}"


# -- XCom keys (return values use Airflow's own `return_value`) --------------------------

FAILURE_KEY = "failure"  # a StepFailure: why a step failed
SUPERSEDED_KEY = "superseded"  # who superseded a run, and why
RUN_FAILURES_KEY = "release_failures"  # rebalance: the StepFailures that fail the run (its notification)
