"""Fanout's DAGs: for each fleet file in FANOUT_FLEETS, `release_<app>` and `fleet_consistency_<app>`.
A fleet file that cannot be built shows as an import error naming it; the others still load."""

from fanout.airflow.dags import dags_and_errors

globals().update(dags_and_errors())
