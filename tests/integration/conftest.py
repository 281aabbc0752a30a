"""Fixtures for release tests on the session's local fleet."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from release_checks import Run, new_commit, serving

Release = Callable[..., Run]


@pytest.fixture
def release(run_dag, airflow_home) -> Release:
    """release(conf, fleet_path=None, timeout=480) -> Run of `airflow dags test release_hello`."""

    def run(conf: dict[str, Any], fleet_path: Path | None = None, timeout: float = 480) -> Run:
        started = time.monotonic()
        done = run_dag("release_hello", conf, fleet_path=fleet_path, timeout=timeout)
        print(f"\n[timing] airflow dags test release_hello: {time.monotonic() - started:.1f} s", flush=True)
        return Run(done.stdout, done.returncode, airflow_home / "airflow.db")

    return run


@pytest.fixture
def serving_fleet(local_fleet, release):
    """The session fleet with the app in every region, whichever test runs first: a rollback needs
    a revision to return to, and users of an empty region only get errors."""
    if any(serving(local_fleet.fleet, r) is None for r in local_fleet.fleet.region_names):
        first = release({"git_sha": new_commit(local_fleet.fleet)})
        assert first.returncode == 0, first.tail()
    return local_fleet
