"""A real two-region control plane: rollouts, the region-down fault, clean teardown.

Runs the real binaries (built and cached by localfleet.binaries on first use).
The tests share one plane and run in file order; the last one tears it down.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from localfleet import kube
from localfleet.kube import Region
from localfleet.testing import wait_until

pytestmark = pytest.mark.localfleet


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Region], Path]]:
    state = tmp_path_factory.mktemp("kube")
    regions = [Region("alpha", kube.free_port()), Region("beta", kube.free_port())]
    kubeconfig = state / "kubeconfig"
    try:
        kube.start_fleet(
            regions,
            state,
            kubeconfig,
            etcd_client_port=kube.free_port(),
            etcd_peer_port=kube.free_port(),
            nodes=1,
        )
        yield state, regions, kubeconfig
    finally:
        kube.stop_all(state)


def _api(kubeconfig: Path, context: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig), context=context)


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="example.invalid/app:1")]),
            ),
        ),
    )


def _wait_available(apps: client.AppsV1Api, name: str, replicas: int, timeout: float = 90) -> client.V1Deployment:
    def available() -> client.V1Deployment | None:
        dep = apps.read_namespaced_deployment(name, "default")
        return dep if (dep.status.available_replicas or 0) == replicas else None

    return wait_until(available, timeout, 0.5, f"deployment {name} has {replicas} available replicas")


def _port_bound(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_deployment_rolls_out_in_every_region(plane: tuple[Path, list[Region], Path]) -> None:
    _, regions, kubeconfig = plane
    for region in regions:
        api = _api(kubeconfig, region.name)
        version = client.VersionApi(api).get_code()
        assert version.git_version == "v1.35.4"
        apps = client.AppsV1Api(api)
        apps.create_namespaced_deployment("default", _deployment("web", 2))
        dep = _wait_available(apps, "web", 2)
        assert dep.status.ready_replicas == 2
        pods = client.CoreV1Api(api).list_namespaced_pod("default", label_selector="app=web").items
        assert len(pods) == 2
        assert all(p.status.phase == "Running" and p.spec.node_name for p in pods)


def test_regions_are_separate_clusters(plane: tuple[Path, list[Region], Path]) -> None:
    _, regions, kubeconfig = plane
    core = client.CoreV1Api(_api(kubeconfig, regions[0].name))
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="only-alpha"), data={"k": "v"})
    )
    other = client.CoreV1Api(_api(kubeconfig, regions[1].name))
    names = {cm.metadata.name for cm in other.list_namespaced_config_map("default").items}
    assert "only-alpha" not in names
    nodes = {n.metadata.name for n in other.list_node().items}
    assert nodes == {f"{regions[1].name}-node-0"}


def test_start_region_is_idempotent(plane: tuple[Path, list[Region], Path]) -> None:
    state, regions, _ = plane
    before = kube.region_pids(state, regions[0].name)
    assert set(before) == set(kube.COMPONENTS)
    kube.start_region(regions[0], state, nodes=1)
    assert kube.region_pids(state, regions[0].name) == before


def test_region_down_and_back(plane: tuple[Path, list[Region], Path]) -> None:
    state, (alpha, beta), kubeconfig = plane
    stopped = kube.stop_region(beta, state)
    assert set(stopped) == set(kube.COMPONENTS)
    assert kube.region_pids(state, beta.name) == {}

    down = kube.region_health(beta, state)
    assert not down.apiserver_ready
    assert not down.ok
    assert not _port_bound(beta.port)
    up = kube.region_health(alpha, state)
    assert up.ok, up
    assert up.nodes_ready == 1
    # The surviving region still serves its workload.
    _wait_available(client.AppsV1Api(_api(kubeconfig, alpha.name)), "web", 2)

    # Back up: same data (it lives in the shared etcd), same kubeconfig works.
    kube.start_region(beta, state, nodes=1)
    assert kube.region_health(beta, state).ok
    _wait_available(client.AppsV1Api(_api(kubeconfig, beta.name)), "web", 2)


def test_stop_all_leaves_no_process_or_port(plane: tuple[Path, list[Region], Path]) -> None:
    state, regions, _ = plane
    etcd_port = kube.etcd_client_port(state)
    assert _port_bound(etcd_port)
    pids = kube.all_pids(state)
    assert len(pids) == 1 + len(kube.COMPONENTS) * len(regions)
    kube.stop_all(state)
    assert kube.all_pids(state) == {}
    alive = {
        key: Path(f"/proc/{pid}/stat").read_text()[:60] for key, pid in pids.items() if Path(f"/proc/{pid}").exists()
    }
    assert alive == {}
    assert not any(_port_bound(r.port) for r in regions)
    assert not _port_bound(etcd_port)
