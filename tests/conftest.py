"""Test-wide settings. Airflow reads its configuration at import, so set it first."""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("FANOUT_FLEETS", str(REPO / "include" / "fleets" / "local.yaml"))
# Test fleets live in tmp folders and name this repository's app and chart by absolute path.
os.environ.setdefault("FANOUT_PROJECT_DIR", str(REPO))

from fanout.fleet import Fleet  # noqa: E402  (after the Airflow settings above)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """make test's two workers (pytest-xdist, --dist loadfile): a test file's tests stay together (they
    build on each other's fleet state), and the end-to-end files share one worker, since two real
    Airflow stacks at once overload a 2-core machine and slow every test. (Not `--dist loadgroup`:
    with pytest 9.2 it silently stops grouping, pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class EndToEndTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/e2e" if nodeid.startswith("tests/e2e/") else super()._split_scope(nodeid)

    return EndToEndTogether(config, log)


@pytest.fixture(scope="session")
def local_fleet(tmp_path_factory):
    """The local fleet on free ports in a private folder, up once per test session."""
    from localfleet import cli
    from localfleet.testing import start_test_fleet

    folder = tmp_path_factory.mktemp("localfleet")
    fleet, state = start_test_fleet(folder)
    yield LocalFleet(fleet, state)
    cli.down(fleet, state, progress=lambda _: None)


@pytest.fixture(scope="session")
def metered_fleet(local_fleet, tmp_path_factory) -> Iterator[Fleet]:
    """The session fleet with the local fleet file's metric gates (the session's own file has none:
    its releases run without users) and their Prometheus up, scraping the session fleet's edges."""
    import yaml

    from fanout.fleet import load_fleet
    from localfleet import procs
    from localfleet.metrics import prometheus
    from localfleet.testing import LOCAL_FLEET

    data = yaml.safe_load(local_fleet.path.read_text())
    data["gates"]["metrics"] = yaml.safe_load(LOCAL_FLEET.read_text())["gates"]["metrics"]
    data["gates"]["metrics"]["source"]["url"] = f"http://127.0.0.1:{procs.free_port()}"
    path = tmp_path_factory.mktemp("metered") / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet = load_fleet(path)
    prometheus.start(fleet, local_fleet.state)
    yield fleet
    prometheus.stop(local_fleet.state)


@dataclass
class LocalFleet:
    fleet: Fleet
    state: Path

    @property
    def path(self) -> Path:
        return self.fleet.source_path


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory, local_fleet):
    """A private AIRFLOW_HOME with a migrated SQLite database, seeing the test fleet's DAGs."""
    from localfleet.testing import airflow_env, migrate

    home = tmp_path_factory.mktemp("airflow")
    migrate(airflow_env(home, local_fleet.path))
    return home


@pytest.fixture
def run_dag(airflow_home, local_fleet):
    """run_dag(dag_id, conf) -> CompletedProcess of `airflow dags test` (stdout+stderr in .stdout)."""
    from localfleet.testing import dags_test

    def run(dag_id: str, conf: dict, fleet_path: Path | None = None, timeout: float = 600):
        return dags_test(airflow_home, fleet_path or local_fleet.path, dag_id, conf, timeout)

    return run


@pytest.fixture
def faults(local_fleet) -> Iterator[Callable[..., dict[str, Any]]]:
    """faults(edge_unhealthy=[...], replica_lag={...}, …) sets fleet fault knobs; every knob a test
    set is cleared afterwards, pass or fail, so the next test finds a healthy fleet."""
    from localfleet.faults import update_faults

    touched: set[str] = set()

    def set_faults(**knobs: Any) -> dict[str, Any]:
        touched.update(knobs)
        return update_faults(local_fleet.state, **knobs)

    yield set_faults
    if touched:
        update_faults(local_fleet.state, **dict.fromkeys(touched))
