"""Sovereign clouds: every ARM client asks Entra ID for the token scope of the fleet's cloud (the
management SDKs default to the public cloud's scope whatever their base_url), registries use the
cloud's host suffix, and a fleet and connection that disagree about the cloud are refused."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.credentials import AccessToken

from fanout.adapters.azure_credentials import CLOUDS, AzureAccess, arm_scope
from fanout.airflow.hooks import FleetHook
from fanout.fleet import parse_fleet
from tests.contract.test_azure_hook import EXAMPLE, example

SCOPES = {
    "AzurePublicCloud": "https://management.azure.com/.default",
    "AzureUSGovernment": "https://management.usgovcloudapi.net/.default",
    "AzureChinaCloud": "https://management.chinacloudapi.cn/.default",
}


class Recording:
    """Records the scopes asked for; the contract server refuses its tokens, which is fine here."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("not-a-real-token", 4_000_000_000)


@pytest.mark.parametrize("cloud", sorted(SCOPES))
def test_every_arm_client_asks_for_the_scope_of_the_fleets_cloud(server, ca, cloud):
    assert arm_scope(cloud) == SCOPES[cloud]
    credential = Recording()
    data = example()
    data["azure"]["cloud"] = cloud
    hook = FleetHook(
        parse_fleet(data, EXAMPLE), access=AzureAccess(credential, cloud), arm_url=server.url,
        connection_verify=ca, azure_options={"retry_total": 0},
    )  # fmt: skip
    calls = {
        "Traffic Manager": lambda: hook.traffic_manager().endpoints(),
        "ACR replications": lambda: hook._acr_replicas.replicas(),
        "AKS credentials": lambda: hook.aks("westeurope").kubeconfig(),
        "ACR Tasks": lambda: hook.acr_tasks().state("ca1"),
    }
    for what, call in calls.items():
        before = len(credential.scopes)
        with pytest.raises(Exception):  # noqa: B017 — the server refuses the fake token; the scope is the point
            call()
        assert credential.scopes[before:] and set(credential.scopes[before:]) == {SCOPES[cloud]}, what
    hook.close()


@pytest.mark.parametrize(
    ("cloud", "login_server"),
    [("AzurePublicCloud", "contosoprod.azurecr.io"), ("AzureUSGovernment", "contosoprod.azurecr.us"),
     ("AzureChinaCloud", "contosoprod.azurecr.cn")],
)  # fmt: skip
def test_registry_hosts_take_the_clouds_suffix(cloud, login_server, monkeypatch):
    data = example()
    data["azure"]["cloud"] = cloud
    fleet = parse_fleet(data, EXAMPLE)
    assert fleet.registry.login_server == login_server
    assert fleet.registry.endpoint("westeurope") == login_server.replace("contosoprod.", "contosoprod.westeurope.geo.")
    assert fleet.registry.pull_host("westeurope") == login_server
    hook = FleetHook(fleet, access=AzureAccess(Recording(), cloud))
    # As where ARM lacks the preview api-version that reports the hosts: the computed host is asked.
    monkeypatch.setattr("fanout.adapters.acr.AcrReplicas.regional_endpoints", lambda self: None)
    assert hook.registry("westeurope")._client._endpoint.endswith(login_server.split(".", 1)[1])
    assert CLOUDS[cloud]["acr_audience"]


def test_a_connection_for_another_cloud_is_refused():
    hook = FleetHook(parse_fleet(example(), EXAMPLE), access=AzureAccess(Recording(), "AzureUSGovernment"))
    with pytest.raises(ValueError, match=r"azure\.cloud: the fleet says AzurePublicCloud but connection"):
        hook.traffic_manager()
