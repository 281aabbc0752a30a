"""Shared helpers for tests on the local fleet: a fleet file on free ports, and image pushes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanout.fleet import Fleet, load_fleet
from localfleet import procs

ROOT = Path(__file__).resolve().parents[2]


def write_fleet(folder: Path, lags: dict[str, int] | None = None, kubeconfig: Path | None = None, **top: Any) -> Fleet:
    """include/fleets/local.yaml moved to free ports (registries, edges) so tests never collide
    with a running fleet; `lags` overrides replication lags, `kubeconfig` every region's
    kubeconfig path, `top` top-level keys."""
    data = yaml.safe_load((ROOT / "include/fleets/local.yaml").read_text())
    data["app"]["source"] = str(ROOT / "include/app")
    data["app"]["chart"]["path"] = str(ROOT / "include/charts/hello")
    data["registry"]["endpoints"] = {r: f"127.0.0.1:{procs.free_port()}" for r in data["registry"]["endpoints"]}
    for region in data["regions"]:
        region["edge_url"] = f"http://127.0.0.1:{procs.free_port()}"
        if kubeconfig:
            region["cluster"]["kubeconfig"]["path"] = str(kubeconfig)
        if lags and region["name"] in lags:
            region["local"]["replication_lag_seconds"] = lags[region["name"]]
    data.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_fleet(path)


@pytest.fixture(scope="session")
def make_fleet() -> Callable[..., Fleet]:
    """write_fleet, for test modules (they cannot import conftest)."""
    return write_fleet


@pytest.fixture(scope="session")
def push_image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], str]:
    """push_image("host:port/repo:tag", version) builds include/app with VERSION=version and
    pushes it; returns the digest. Distinct versions give distinct digests."""
    from localfleet.registry import ensure_debian_packages

    ensure_debian_packages(["docker-registry", "skopeo", "buildah"])
    work = tmp_path_factory.mktemp("buildah")
    store = ["--root", str(work / "storage"), "--runroot", str(work / "run")]

    def push(target: str, version: str) -> str:
        context = work / f"ctx-{version}"
        context.mkdir(exist_ok=True)
        (context / "index.html").write_bytes((ROOT / "include/app/index.html").read_bytes())
        (context / "VERSION").write_text(version + "\n")
        containerfile = str(ROOT / "include/app/Containerfile")
        run = ["buildah", *store, "bud", "-q", "--timestamp", "0", "-f", containerfile, "-t", version, str(context)]
        subprocess.run(run, check=True, capture_output=True)
        digestfile = work / f"{version}.digest"
        run = ["buildah", *store, "push", "-q", "--tls-verify=false", "--digestfile", str(digestfile)]
        subprocess.run([*run, version, f"docker://{target}"], check=True, capture_output=True)
        return digestfile.read_text().strip()

    return push
