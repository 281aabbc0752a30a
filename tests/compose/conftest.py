"""The compose test's engine, images and local fleet (module scope: one of each per run)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import AIRFLOW_UID, AIRFLOW_VERSION, FANOUT_IMAGE, SIZES, TIMINGS, say, timing
from docker_engine import REPO, Engine, base_images, mounts_under, sizes

from localfleet import cli, procs
from localfleet.testing import start_test_fleet


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Not part of `make test`: it builds images (about 25 min cold on a loaded 2-core machine);
    `make compose-test` selects it with `-m compose`, and CI runs that as its own step."""
    if "compose" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="builds and runs images on a private Docker engine: make compose-test")
    for item in items:
        if "compose" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = Engine(progress=say)
    try:
        with timing("dockerd start"):
            engine.start()
        yield engine
    finally:
        engine.stop()
        say("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
        say("image sizes: " + ", ".join(f"{k} {v}" for k, v in SIZES.items()))
    # Nothing of the engine is left: no process, no mount, no run folder.
    assert procs.pids_mentioning(engine.run_dir) == []
    assert mounts_under(engine.run_dir, engine.data_root) == []
    assert not engine.run_dir.exists()


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, str]:
    """The local base images and Fanout's image, built from the real Dockerfile on them."""
    started = time.monotonic()
    bases = base_images(engine, AIRFLOW_VERSION)
    TIMINGS["base images (built now)" if time.monotonic() - started > 60 else "base images (cached)"] = (
        time.monotonic() - started
    )
    with timing("fanout image build (docker build of ./Dockerfile)"):
        engine.build(FANOUT_IMAGE, REPO, AIRFLOW_IMAGE=bases["airflow"], GO_IMAGE=bases["golang"])
    SIZES.update(sizes(engine, [*bases.values(), FANOUT_IMAGE]))
    say(f"image sizes: {SIZES}")
    return {**bases, "fanout": FANOUT_IMAGE}


@pytest.fixture(scope="module")
def fleet_dir() -> Iterator[Path]:
    """A folder the containers can read (group 0, as they run): pytest's own are root-only."""
    folder = Path(tempfile.mkdtemp(prefix="fanout-compose-fleet-", dir="/tmp"))
    folder.chmod(0o750)
    yield folder
    # Files the fleet wrote stay for a failed run's post-mortem only when asked.
    if not os.environ.get("FANOUT_KEEP"):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def compose_fleet(fleet_dir: Path):
    fleet, state = start_test_fleet(fleet_dir)
    kubeconfig = Path(fleet.regions[0].cluster.kubeconfig.path)
    # The kubeconfig carries admin tokens (0600): hand it to the user Airflow runs as, as one
    # would mount a secret for it.
    os.chown(kubeconfig, AIRFLOW_UID, 0)
    try:
        yield fleet, state
    finally:
        os.chown(kubeconfig, 0, 0)
        cli.down(fleet, state, progress=lambda _: None)
