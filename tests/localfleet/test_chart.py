"""The app's chart installs with Helm 4 `--wait` in every region of the local fleet, as Fanout's
namespace-bound identity, in the app's namespace (the only one it may write to)."""

import pytest
from kubernetes import client, config

from fanout.adapters.helm import Helm, helm_binary
from fanout.policy import chart_values

pytestmark = pytest.mark.localfleet
DIGEST = "sha256:" + "c" * 64  # kwok runs no containers: any digest rolls out


def test_chart_installs_with_wait_in_every_region(local_fleet):
    fleet = local_fleet.fleet
    for region in fleet.regions:
        access = region.cluster.kubeconfig
        kubeconfig = str(fleet.resolve(access.path))
        helm = Helm(helm_binary(), kubeconfig, access.context, timeout_seconds=120)
        values = chart_values(fleet, region.name, DIGEST, "chart-test", "0123abc")
        ns = fleet.app.namespace
        try:
            done = helm.upgrade_install("chartcheck", fleet.chart_ref, ns, values, wait=True)
            assert (done.revision, done.status) == (1, "deployed")
            apps = client.AppsV1Api(config.new_client_from_config(kubeconfig, context=access.context))
            status = apps.read_namespaced_deployment("chartcheck", ns).status
            # --wait returned only once the rollout was complete
            assert status.available_replicas == status.replicas == values["replicaCount"]
            assert (
                f"@{DIGEST}" in apps.read_namespaced_deployment("chartcheck", ns).spec.template.spec.containers[0].image
            )
        finally:
            helm.uninstall("chartcheck", ns)
