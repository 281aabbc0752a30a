"""Thin adapters over the outside world (Traffic Manager, registries, clusters), each behind a
small interface so that the planner and the Airflow operators never see an SDK directly.

Import the submodule you need (``from fanout.adapters.traffic import ...``): this package
imports nothing itself, so loading one adapter never drags in every vendor SDK.
"""
