"""Fanout's DAGs: for each fleet file in FANOUT_FLEETS, `release_<app>` and `fleet_consistency_<app>`."""

from fanout.airflow.dags import build_all

globals().update(build_all())
