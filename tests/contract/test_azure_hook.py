"""FleetHook wiring for a fleet with `acr` / `aks` / `azure`: which client each call builds, that
nothing reaches Azure before a client is asked for, that trigger kwargs carry no credential, and
the Traffic Manager, ACR and AKS clients it builds talking to the contract server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from fanout.adapters.acr import AcrReplica
from fanout.adapters.acr_tasks import AcrTasksBuilder
from fanout.adapters.azure_credentials import AzureAccess
from fanout.adapters.traffic import AzureTrafficManager
from fanout.airflow.hooks import FleetHook
from fanout.airflow.triggers import ReplicationTrigger, RolloutTrigger
from fanout.fleet import parse_fleet
from fanout.records import FleetSnapshot, content_hash
from tests.contract import test_azure_acr as acr
from tests.contract import test_azure_aks as aks
from tests.contract.azure_server import ARM_SCOPE, FakeCredential, Request, Response, arm_error

EXAMPLE = Path(__file__).resolve().parents[2] / "include" / "fleets" / "azure-example.yaml"


def example(**changes) -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    for key, value in changes.items():
        data[key].update(value)
    return data


def hook_for(data: dict, server=None, ca=None, credential=None) -> FleetHook:
    fleet = parse_fleet(data, EXAMPLE)
    return FleetHook(
        fleet,
        access=AzureAccess(credential or FakeCredential()),
        arm_url=server.url if server else None,
        connection_verify=ca,
        azure_options={"retry_backoff_factor": 0.01},
    )


def test_nothing_reaches_azure_or_the_connection_until_a_client_is_asked_for(monkeypatch):
    monkeypatch.setattr(
        "fanout.adapters.azure_credentials.access_from_connection", lambda conn_id: pytest.fail("read the connection")
    )
    hook = FleetHook(parse_fleet(example(registry={"replica_check": "replica-status"}), EXAMPLE))
    assert hook.registry_endpoint("westeurope") == "contosoprod.azurecr.io"
    assert hook.trigger_options() == {}, "the triggerer takes ARM from the connection"


def test_acr_fleet_gets_acr_clients(server, ca):
    acr.serve_acr(server)  # the regional host names come from ARM
    hook = hook_for(example(), server, ca)
    replica = hook.registry("westeurope")
    assert isinstance(replica, AcrReplica) and replica.endpoint == "contosoprod.westeurope.geo.azurecr.io"
    assert isinstance(hook.acr_tasks(), AcrTasksBuilder)
    assert isinstance(hook.traffic_manager(), AzureTrafficManager)
    fallback = hook_for(example(registry={"replica_check": "replica-status"}))
    assert fallback.registry("westeurope").endpoint == "contosoprod.azurecr.io"


def test_acr_without_arm_coordinates_is_refused_naming_the_field():
    data = example()
    del data["registry"]["resource_group"]
    with pytest.raises(ValueError, match=r"registry.resource_group: required to reach ACR 'contosoprod'"):
        hook_for(data).acr_tasks()


def snapshot(data: dict) -> dict:
    """A run's snapshot of the example fleet changed to `data` (as if read from the example's path)."""
    text = yaml.safe_dump(data, sort_keys=False)
    return FleetSnapshot(str(EXAMPLE), content_hash(text), text).to_xcom()


def test_trigger_kwargs_are_plain_serializable_and_secret_free(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "tok-secret")  # what a worker may hold; it must not travel
    fleet = snapshot(example())
    digest = "sha256:" + "c" * 64
    for trigger in (
        ReplicationTrigger(fleet=fleet, region="westeurope", digest=digest, timeout_seconds=60),
        RolloutTrigger(fleet=fleet, region="westeurope", digest=digest, timeout_seconds=60),
    ):
        _, kwargs = trigger.serialize()
        text = json.dumps(kwargs)
        assert kwargs["region"] == "westeurope" and kwargs["fleet"] == fleet
        assert "tok-" not in text and "token" not in text.lower()
        assert type(trigger)(**json.loads(text)).serialize()[1] == kwargs


def test_hook_traffic_manager_drains_through_arm(server, ca):
    profile = (
        "/subscriptions/6f1c1d6e-0c3a-4d8e-9a57-2f5e8d1c0a01/resourceGroups/rg-storefront-global/providers/"
        "Microsoft.Network/trafficmanagerprofiles/tm-storefront"
    )

    def patch(req: Request, _m) -> Response:
        assert req.json() == {"properties": {"endpointStatus": "Disabled"}}, req.json()
        assert req.headers.get("content-type", "").startswith("application/json")
        return Response(200, {
            "id": f"{profile}/ExternalEndpoints/westeurope", "name": "westeurope",
            "type": "Microsoft.Network/trafficManagerProfiles/ExternalEndpoints",
            "properties": {"endpointStatus": "Disabled", "weight": 200, "target": "weu.storefront.contoso.com"},
        })  # fmt: skip

    server.route(
        "PATCH", f"{profile}/ExternalEndpoints/westeurope", patch,
        api_version="2026-09-01", token=FakeCredential.token_for(ARM_SCOPE),
    )  # fmt: skip
    hook = hook_for(example(), server, ca)
    state = hook.traffic_manager().set_endpoint("westeurope", enabled=False)
    assert state.enabled is False and state.weight == 200
    server.assert_clean()


def test_hook_registry_and_kubeconfig_through_the_contract_server(server, ca):
    acr.serve_acr(server)
    aks.serve_credentials(server, aks.KUBELOGIN)
    data = example()
    data["registry"].update(subscription=acr.SUB, resource_group=acr.RG)
    data["regions"][4]["cluster"]["aks"].update(
        subscription=aks.SUB, resource_group=aks.RG, cluster=aks.CLUSTER
    )  # northeurope
    hook = hook_for(data, server, ca)
    # No fleet file may name a non-ACR host (the token goes there); the hook's test override allows
    # the contract server, so put it in after validation.
    registry = hook.fleet.registry.model_copy(update={"endpoints": {"westeurope": server.host}})
    hook.fleet = hook.fleet.model_copy(update={"registry": registry})
    assert hook.registry("westeurope").has_manifest(acr.REPO, acr.DIGEST) is True
    path, context = hook.kubeconfig("northeurope")
    assert context == aks.CLUSTER and Path(path).stat().st_mode & 0o777 == 0o600
    assert hook.kubeconfig("northeurope") == (path, context)  # reused while fresh
    hook.close()
    assert not Path(path).exists()
    server.assert_clean()


def test_replication_trigger_checks_acr_with_a_credential_from_the_connection(server, ca, monkeypatch, tmp_path):
    acr.serve_acr(server)
    credential = FakeCredential()
    monkeypatch.setattr(
        "fanout.adapters.azure_credentials.access_from_connection", lambda conn_id: AzureAccess(credential)
    )
    data = example(registry={"repository": acr.REPO})
    data["registry"].update(subscription=acr.SUB, resource_group=acr.RG)
    # The hook the triggerer builds asks the host ARM reports, which the contract server answers for.
    server.resolve_to(monkeypatch, "contosoprod.westeurope.geo.azurecr.io")
    trigger = ReplicationTrigger(
        fleet=snapshot(data), hook_options={"arm_url": server.url, "connection_verify": ca},
        region="westeurope", digest=acr.DIGEST, timeout_seconds=30, poll_seconds=0.1,
    )  # fmt: skip

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "ok", event
    server.assert_clean()


TM_PROFILE = (
    "/subscriptions/6f1c1d6e-0c3a-4d8e-9a57-2f5e8d1c0a01/resourceGroups/rg-storefront-global/providers/"
    "Microsoft.Network/trafficmanagerprofiles/tm-storefront"
)


def serve_tm_endpoint(server):
    def patch(req: Request, _m) -> Response:
        props = req.json()["properties"]
        return Response(200, {
            "id": f"{TM_PROFILE}/ExternalEndpoints/eastus2", "name": "eastus2",
            "type": "Microsoft.Network/trafficManagerProfiles/ExternalEndpoints",
            "properties": {"endpointStatus": props["endpointStatus"], "weight": props.get("weight", 250)},
        })  # fmt: skip

    pattern = f"{TM_PROFILE}/ExternalEndpoints/eastus2"
    server.route("PATCH", pattern, patch, api_version="2026-09-01", token=FakeCredential.token_for(ARM_SCOPE))
    return pattern


def test_hook_traffic_manager_waits_out_throttling_and_reports_conflicts(server, ca):
    from fanout.adapters.traffic import TrafficManagerError

    pattern = serve_tm_endpoint(server)
    tm = hook_for(example(), server, ca).traffic_manager()
    server.fail_next("PATCH", pattern, arm_error(429, "TooManyRequests", "throttled", {"Retry-After": "1"}))
    assert tm.set_endpoint("eastus2", enabled=True, weight=250).enabled is True
    assert len(server.calls("PATCH", pattern)) == 2
    server.fail_next("PATCH", pattern, arm_error(409, "Conflict", "The profile is being updated"))
    with pytest.raises(TrafficManagerError, match="endpoint 'eastus2': disabling failed: HTTP 409 Conflict") as caught:
        tm.set_endpoint("eastus2", enabled=False)
    assert caught.value.status_code == 409
    server.assert_clean()
