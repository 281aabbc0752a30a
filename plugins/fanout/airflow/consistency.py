"""The consistency check's operators: desired state, what each region runs, the verdict, repair."""

from __future__ import annotations

from fanout.airflow.operators import FanoutOperator


class ReadDesiredStateOperator(FanoutOperator):
    """The last successful release of the app (its Asset event)."""


class ObserveRegionOperator(FanoutOperator):
    """What the region really runs and serves."""


class ClassifyFleetOperator(FanoutOperator):
    """in-sync / stale / drifted / stuck / unreachable / traffic-mismatch per region."""


class RepairFleetOperator(FanoutOperator):
    """Roll back stuck releases, then trigger a targeted release run."""
