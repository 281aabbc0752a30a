"""The compose test's engine, images and local fleet (module scope: one of each per run)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import AIRFLOW_UID, AIRFLOW_VERSION, FANOUT_IMAGE, SIZES, TIMINGS, say, timing
from docker_engine import REPO, Engine, base_images, mounts_under, sizes

from localfleet import cli, procs, tokens
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
    try:
        yield fleet, state
    finally:
        cli.down(fleet, state, progress=lambda _: None)


@pytest.fixture(scope="module")
def container_kubeconfig(compose_fleet, fleet_dir: Path) -> Path:
    """The fleet's kubeconfig as the containers run it. Its exec plugin (the local Entra ID
    stand-in's client, localfleet.tokens) names this machine's venv python and the state
    folder's client secret; in the containers it runs on the image's python3, from the work tree
    mounted at the same path, with a copy of the secret the Airflow user may read (0600, as one
    would mount a secret for it). AKS kubeconfigs need none of this: Fanout fetches their tokens."""
    fleet, state = compose_fleet
    config = json.loads(Path(fleet.regions[0].cluster.kubeconfig.path).read_text())
    secret = fleet_dir / "client.secret"
    secret.write_text(tokens.secret_file(state).read_text())
    secret.chmod(0o600)
    os.chown(secret, AIRFLOW_UID, 0)
    for user in config["users"]:
        run = user["user"]["exec"]
        run["command"] = "python3"
        run["args"][run["args"].index("--secret-file") + 1] = str(secret)
    path = fleet_dir / "kubeconfig.container"
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    os.chown(path, AIRFLOW_UID, 0)
    return path
