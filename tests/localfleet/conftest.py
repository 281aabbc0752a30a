"""Shared helpers for tests on the local fleet: a fleet file on free ports, and image pushes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fanout.fleet import Fleet
from localfleet import procs
from localfleet.testing import write_test_fleet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def make_fleet() -> Callable[..., Fleet]:
    """localfleet.testing.write_test_fleet: the local fleet moved to free ports."""
    return write_test_fleet


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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, make_fleet: Callable[..., Fleet]) -> Iterator[Fleet]:
    """One real region (westus) on free ports, and a fleet file whose kubeconfig points at it."""
    from localfleet import kube

    state = tmp_path_factory.mktemp("kube")
    region = kube.Region("westus", procs.free_port())
    # Only the admin kubeconfig here: the edge (fleet infrastructure) reads the one beside the fleet's.
    kubeconfig = state / "admin.kubeconfig"
    try:
        kube.start_fleet(
            [region], state, kubeconfig, etcd_client_port=procs.free_port(), etcd_peer_port=procs.free_port()
        )
        yield make_fleet(state / "fleet", kubeconfig=kubeconfig, metrics=True)
    finally:
        kube.stop_all(state)
