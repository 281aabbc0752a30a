"""Fanout's operators: each does one step of a release for one fleet (and one region).

Every operator knows its fleet file and, where it acts on one region, that region.
The base class decides, before any work, whether this task has anything to do in
this run: a region outside the run's `regions` subset is skipped, and on a dry run
every task that would change something is skipped. So a dry run and a partial run
use the same graph as a full one.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowSkipException

from fanout.fleet import Fleet, load_fleet
from fanout.planner import plan_waves


@cache
def fleet_at(path: str) -> Fleet:
    return load_fleet(path)


def targeted(params: dict[str, Any], region: str) -> bool:
    chosen = params.get("regions")
    return not chosen or region in chosen


class FanoutOperator(BaseOperator):
    """Base for every Fanout task. Subclasses implement `run`."""

    # Does this step change the fleet? Changing steps are skipped on a dry run.
    changes_fleet: ClassVar[bool] = True
    ui_color = "#e8f1fb"

    def __init__(self, *, fleet_path: str, region: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fleet_path = fleet_path
        self.region = region

    @property
    def fleet(self) -> Fleet:
        return fleet_at(self.fleet_path)

    def execute(self, context: Context) -> Any:
        params = context["params"]
        if self.region is not None and not targeted(params, self.region):
            raise AirflowSkipException(f"{self.region} is not in this run's regions {params.get('regions')}")
        if self.changes_fleet and params.get("dry_run"):
            raise AirflowSkipException("dry run: nothing is changed")
        return self.run(context)

    def run(self, context: Context) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} ({self.task_id}) has no implementation yet: the release issue fills it in"
        )


class ValidateReleaseOperator(FanoutOperator):
    """Refuse a run whose conf does not fit the fleet, and print the plan it will follow."""

    changes_fleet = False
    ui_color = "#fff7e0"

    def run(self, context: Context) -> dict[str, Any]:
        params = context["params"]
        plan = plan_waves(self.fleet, params.get("regions"))
        self.log.info("%s", plan.explain())
        return {"waves": [list(w.regions) for w in plan.waves], "dry_run": bool(params.get("dry_run"))}


class BuildImageOperator(FanoutOperator):
    """Build the app image once and pin the release to its digest."""


class WaitForReplicationOperator(FanoutOperator):
    """Wait (deferred) until the region's registry replica serves the release digest."""

    changes_fleet = False


class DrainRegionOperator(FanoutOperator):
    """Disable the region's Traffic Manager endpoint before changing it."""


class HelmDeployOperator(FanoutOperator):
    """`helm upgrade --install` the chart in the region, image pinned by digest."""


class RolloutGateOperator(FanoutOperator):
    """Wait (deferred) until the Deployment has rolled out the release."""

    changes_fleet = False


class HttpGateOperator(FanoutOperator):
    """The region's edge answers healthy and reports the release digest N times in a row."""

    changes_fleet = False


class SoakGateOperator(FanoutOperator):
    """Let the region run the release for the fleet's soak time before it takes traffic again."""

    changes_fleet = False


class MetricGateOperator(FanoutOperator):
    """A metric query stays under its threshold."""

    changes_fleet = False


class RestoreRegionOperator(FanoutOperator):
    """Enable the region's endpoint at its configured weight."""


class RollbackRegionOperator(FanoutOperator):
    """After a failed gate: helm rollback the region and leave traffic in a defined state."""


class BakeOperator(FanoutOperator):
    """Wait the fleet's bake time between two waves."""

    changes_fleet = False


class RebalanceOperator(FanoutOperator):
    """Set every endpoint's final weight and status from policy and health."""


class RecordReleaseOperator(FanoutOperator):
    """Emit the release Asset event (app, digest, chart version, per-region outcome)."""


class ObserveRegionOperator(FanoutOperator):
    """Consistency check: what the region really runs and serves."""

    changes_fleet = False


class ReadDesiredStateOperator(FanoutOperator):
    """Consistency check: the last successful release of the app."""

    changes_fleet = False


class ClassifyFleetOperator(FanoutOperator):
    """Consistency check: in-sync / stale / drifted / stuck / unreachable / traffic-mismatch per region."""

    changes_fleet = False


class RepairFleetOperator(FanoutOperator):
    """Consistency repair: roll back stuck releases, then trigger a targeted release run."""
