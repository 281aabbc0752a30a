"""Fanout reaches each local cluster as AKS would let it: a namespace-bound identity whose bearer
tokens expire within minutes, checked by the API server through the local Entra ID stand-in.

- the identity may do a release's work in the app's namespace and nothing else, and an expired
  token is refused (so the fleet is as strict as AKS);
- a Helm step that outlives the first token still succeeds: Fanout asks for a new token whenever
  the current one would not outlive the command (the rule the AKS path follows);
- a region where the identity lacks one permission is refused by `validate`, naming region and
  permission, before any region is drained.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from release_checks import history, tm_client

from fanout.adapters.aks import KubeconfigDir
from fanout.adapters.cluster import Cluster, ClusterError
from fanout.adapters.kube_exec import run_exec
from fanout.airflow.hooks import FleetHook
from fanout.fleet import load_fleet
from fanout.policy import chart_values
from fanout.preflight import RELEASE_PERMISSIONS
from localfleet import cli, kube, tokens

pytestmark = pytest.mark.localfleet
APP = NS = "hello"


def traffic(fleet) -> dict[str, tuple[bool, int | None]]:
    return {name: (ep.enabled, ep.weight) for name, ep in tm_client(fleet).endpoints().items()}


def fanout_api(fleet, region: str) -> client.ApiClient:
    """A client exactly as Fanout's kubeconfig logs in (the exec plugin of the fleet's kubeconfig)."""
    return config.new_client_from_config(config_file=str(cli.kubeconfig_path(fleet)), context=region)


def test_fanout_may_release_in_its_namespace_and_nothing_else(local_fleet):
    api = fanout_api(local_fleet.fleet, "eastus")
    core = client.CoreV1Api(api)
    core.list_namespaced_secret(NS)  # Helm's release records
    refused = {
        "create a namespace": lambda: core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="x"))),
        "read kube-system": lambda: core.list_namespaced_secret("kube-system"),
        "list nodes": lambda: core.list_node(),
    }
    for what, call in refused.items():
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, f"{what}: {err.value.status}"


def test_an_expired_token_is_refused(local_fleet, faults):
    faults(token_lifetime=3)
    user = yaml.safe_load(cli.kubeconfig_path(local_fleet.fleet).read_text())["users"][0]["user"]
    token, expires = run_exec(user["exec"])
    assert expires - time.time() <= 3
    region = kube.Region("eastus", local_fleet.fleet.region("eastus").local.apiserver_port)
    ca = kube.serving_ca(kube.region_dir(local_fleet.state, "eastus"))
    url = f"{region.server}/api/v1/namespaces/{NS}/secrets"
    assert kube.kube_files.http(url, token=token, ca=ca)[0] == 200
    time.sleep(3 + 10 + 1)  # its life, the API server's 10 s cache of a good token, a second to spare
    assert kube.kube_files.http(url, token=token, ca=ca)[0] == 401


def test_a_helm_step_that_outlives_the_first_token_succeeds(local_fleet, faults, tmp_path):
    # Fanout asks for a token that outlives each command plus a margin (60 s in production; 10 s
    # here, so the test waits for a 45 s token to age rather than a 100 s one).
    region, lifetime, timeout, margin = "northeurope", 45, 25, 10.0
    data = yaml.safe_load(local_fleet.path.read_text())
    data["gates"]["rollout_timeout_seconds"] = timeout  # Helm's --timeout: the step lasts at most that
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet = load_fleet(path)
    faults(token_lifetime=lifetime)  # the first token, and every one after it, lives 45 s
    hook = FleetHook(fleet)
    hook._kubeconfigs = KubeconfigDir(margin_seconds=margin)
    helm = hook.helm(region)
    history = helm.history(APP, NS)  # fetches the first token
    token_file = Path(hook.kubeconfig(region, timeout)[0])
    first = yaml.safe_load(token_file.read_text())["users"][0]["user"]["token"]
    first_expiry = int(first.split(".")[1])
    # Age it until it has 5 s left: not enough for a 25 s Helm step plus the margin.
    time.sleep(max(0.0, first_expiry - 5 - time.time()))

    # A Helm step of about 20 s: the new pods stay unready until the fault is cleared. It ends well
    # after the first token expired and the API server's 10 s cache of it ran out.
    cli.apply_fault(fleet, local_fleet.state, "rollout-unhealthy", region, None, clear=False)
    heal = threading.Timer(16, cli.apply_fault, (fleet, local_fleet.state, "rollout-unhealthy", region, None, True))
    heal.start()
    try:
        values = chart_values(fleet, region, "sha256:" + "7" * 64, f"token-test-{time.time():.0f}", "0" * 12)
        done = helm.upgrade_install(APP, fleet.chart_ref, NS, values, wait=True)
    finally:
        heal.join()
        cli.apply_fault(fleet, local_fleet.state, "rollout-unhealthy", region, None, clear=True)
    ended = time.time()
    try:
        assert done.status == "deployed", done
        assert ended > first_expiry + 10, "the step outlived the first token (and the API server's cache of it)"
        assert yaml.safe_load(token_file.read_text())["users"][0]["user"]["token"] != first
        # The first token really is dead: the fleet would have refused the step's last writes with it.
        stale = tmp_path / "first.kubeconfig"
        config_ = yaml.safe_load(token_file.read_text())
        config_["users"][0]["user"]["token"] = first
        stale.write_text(yaml.safe_dump(config_))
        with pytest.raises(ClusterError, match="401"):
            Cluster(str(stale), region).deployment(NS, APP)
    finally:
        # Leave the region as it was for the tests after this one.
        previous = [h.revision for h in history if h.status in ("deployed", "superseded")]
        if previous:
            helm.rollback(APP, NS, previous[-1], wait=True)
        else:
            helm.uninstall(APP, NS)
        hook.close()


def test_validate_refuses_a_region_missing_a_permission_before_any_drain(local_fleet, run_dag):
    fleet, state = local_fleet.fleet, local_fleet.state
    region = kube.Region("westus", fleet.region("westus").local.apiserver_port)
    grant = list(RELEASE_PERMISSIONS)
    without_patch = [
        (g, r, tuple(v for v in verbs if not (r == "deployments" and v == "patch"))) for g, r, verbs in grant
    ]
    before, helm_before = traffic(fleet), history(fleet, "westus")
    kube.grant_namespace(region, state, NS, tokens.USERNAME, without_patch)
    try:
        done = run_dag("release_hello", {"git_sha": "0123abcd"})
    finally:
        kube.grant_namespace(region, state, NS, tokens.USERNAME, grant)
    assert done.returncode != 0
    assert "preflight: westus: the identity Fanout uses may not patch deployments.apps in namespace 'hello'" in (
        done.stdout
    ), done.stdout[-3000:]
    assert traffic(fleet) == before, "nothing was drained"
    assert history(fleet, "westus") == helm_before, "no Helm step ran"
