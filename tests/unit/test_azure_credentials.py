"""The Azure credential comes from Airflow's `azure` connection through the provider's
AzureBaseHook; shared SDK options and the scrubbing of secrets from messages."""

from __future__ import annotations

import json
import logging

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.identity import ClientSecretCredential, DefaultAzureCredential

from fanout.adapters.azure_credentials import (
    AzureAdapterError,
    access_from_connection,
    call,
    client_options,
    scrub,
)


def connection(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "azure", **fields}))


def test_client_secret_connection_gives_an_azure_identity_credential(monkeypatch, caplog):
    secret = "s3cr3t-value-of-the-app"
    connection(
        monkeypatch, "az_secret", login="11111111-aaaa-bbbb-cccc-000000000001", password=secret,
        extra={"tenantId": "72f988bf-0000-0000-0000-000000000000", "subscriptionId": "sub-1"},
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        access = access_from_connection("az_secret")
    # Without `use_azure_identity_object` the provider would return a legacy msrest credential.
    assert isinstance(access.credential, ClientSecretCredential)
    assert access.credential._client_id == "11111111-aaaa-bbbb-cccc-000000000001"
    assert access.credential._tenant_id == "72f988bf-0000-0000-0000-000000000000"
    assert access.subscription == "sub-1" and access.cloud == "AzurePublicCloud"
    assert access.arm_url == "https://management.azure.com"
    assert secret not in caplog.text


def test_workload_or_managed_identity_connection_gives_default_azure_credential(monkeypatch):
    extra = {
        "managed_identity_client_id": "22222222-0000-0000-0000-000000000002",
        "workload_identity_tenant_id": "72f988bf-0000-0000-0000-000000000000",
        "use_azure_identity_object": True,
    }
    connection(monkeypatch, "az_wi", extra=extra)
    access = access_from_connection("az_wi")
    assert isinstance(access.credential, DefaultAzureCredential)
    kinds = [type(c).__name__ for c in access.credential.credentials]
    assert "ManagedIdentityCredential" in kinds


def test_sovereign_cloud_changes_arm_and_acr_audience(monkeypatch):
    connection(monkeypatch, "az_cn", extra={"cloud_environment": "AzureChinaCloud"})
    access = access_from_connection("az_cn")
    assert access.arm_url == "https://management.chinacloudapi.cn"
    assert access.acr_audience == "https://management.chinacloudapi.cn"


def test_unknown_cloud_is_refused_naming_the_connection(monkeypatch):
    connection(monkeypatch, "az_mars", extra={"cloud_environment": "MarsCloud"})
    with pytest.raises(AzureAdapterError, match="connection 'az_mars': cloud_environment 'MarsCloud'"):
        access_from_connection("az_mars")


def test_client_options_refuse_plain_http_and_carry_retry_settings():
    with pytest.raises(ValueError, match="https only"):
        client_options(base_url="http://127.0.0.1:1")
    options = client_options(base_url="https://127.0.0.1:1", connection_verify="/ca.pem", retry_total=2, timeout=3)
    assert options == {
        "retry_total": 2, "retry_backoff_factor": 0.8, "retry_backoff_max": 30, "connection_timeout": 3,
        "read_timeout": 3, "base_url": "https://127.0.0.1:1", "connection_verify": "/ca.pem",
        "credential_scopes": ["https://management.azure.com/.default"],
    }  # fmt: skip
    assert "base_url" not in client_options(base_url=None)


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("token eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln in body", "eyJzdWIiOiJ4In0"),
        ("PUT https://s.blob.core.windows.net/c/b?sv=2024&sig=Zm9vYmFy%3D&se=2026", "Zm9vYmFy"),
        ('{"access_token": "acr-access-1", "refresh_token": "r-2"}', "acr-access-1"),
        ("client-key-data: S0VZ", "S0VZ"),
        ("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", "MIIE"),
    ],
)
def test_scrub_removes_credentials(text, leak):
    assert leak not in scrub(text)


def test_call_names_the_resource_and_drops_the_sdk_error_chain():
    def boom():
        raise ServiceRequestError("connection refused for Bearer xyz")

    with pytest.raises(AzureAdapterError) as caught:
        call("registry 'r'", "listing replications", boom)
    assert (
        str(caught.value)
        == "registry 'r': listing replications failed: ServiceRequestError: connection refused for Bearer ***"
    )
    assert caught.value.__context__ is None


def test_call_keeps_status_and_code():
    class FakeResponse:
        status_code, reason, headers = 409, "Conflict", {}

        def text(self):
            return '{"error": {"code": "Conflict", "message": "busy"}}'

    def conflict():
        raise HttpResponseError(message="Conflict", response=FakeResponse())

    with pytest.raises(AzureAdapterError) as caught:
        call("x", "y", conflict)
    assert caught.value.status_code == 409
