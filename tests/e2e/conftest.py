"""A real Airflow on PostgreSQL (localfleet.airflow_stack) over the session's local fleet.

One stack for the release tests: starting one costs about 20 s and a database, and the tests here
are what teams do with one Airflow (merge triggers, bursts, clearing a region, waiting for
the schedule), in that order."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_checks import CONSISTENCY_SCHEDULE, Rest
from fanout_page import FanoutPage
from release_checks import variant_fleet

from localfleet import procs
from localfleet.airflow_stack import AirflowStack


@pytest.fixture(scope="session")
def e2e_fleet(local_fleet, tmp_path_factory) -> Path:
    """The session fleet (each test releases its own new commit of its git server) with a consistency
    check every two minutes, so the scheduler runs one by itself while the tests watch."""
    folder = tmp_path_factory.mktemp("e2e-fleet")
    return variant_fleet(local_fleet.fleet, folder, **{"consistency.schedule": CONSISTENCY_SCHEDULE})


@pytest.fixture(scope="module")
def airflow_executor() -> str:
    """The stack's executor: LocalExecutor unless a module overrides this fixture (the release
    module runs under CeleryExecutor, with LocalExecutor as a matrix variant)."""
    return "local"


# Module scope: the stack (and its scheduled checks) stops before the next test module's work.
@pytest.fixture(scope="module")
def airflow_stack(e2e_fleet, airflow_executor, tmp_path_factory) -> Iterator[AirflowStack]:
    folder = tmp_path_factory.mktemp(f"airflow-stack-{airflow_executor}")
    stack = AirflowStack(folder, e2e_fleet, procs.free_port(), executor=airflow_executor)
    started = time.monotonic()
    try:
        stack.up(progress=lambda line: print(f"[airflow] {line}", flush=True))
        print(f"\n[timing] airflow stack up ({airflow_executor}): {time.monotonic() - started:.1f} s", flush=True)
        yield stack
    finally:
        stack.down(progress=lambda line: print(f"[airflow] {line}", flush=True), remove=True)
        # The folder, not only AIRFLOW_HOME: Redis and the workers' folders are in it too.
        assert procs.pids_mentioning(stack.folder) == [], "processes of the stack survived its down"


@pytest.fixture(scope="module")
def rest(airflow_stack) -> Rest:
    return Rest(airflow_stack)


@pytest.fixture
def fanout_page(airflow_stack, rest, tmp_path_factory) -> Iterator[FanoutPage]:
    """The Fanout page in headless Chromium, signed in as the stack's admin; screenshots go to
    <basetemp>/fanout-page/. Closed after its test: an open page keeps polling the api-server."""
    page = FanoutPage(airflow_stack, rest, tmp_path_factory.getbasetemp() / "fanout-page")
    try:
        yield page
    finally:
        page.close()
