"""AKS user credentials through the real SDK (azure-mgmt-containerservice 41.8.0, api-version
2026-08-01) against a contract-checking local server: Entra ID kubeconfigs get a token instead
of kubelogin, files are private and removed, nothing secret reaches an error message."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import yaml
from azure.core.credentials import AccessToken

from fanout.adapters import aks as aks_module
from fanout.adapters.aks import AksCluster, KubeconfigDir, temporary_kubeconfig
from fanout.adapters.azure_credentials import AzureAdapterError
from tests.contract.azure_server import AKS_SCOPE, ARM_SCOPE, FakeCredential, Request, Response, arm_error

SUB, RG, CLUSTER = "0b8e2f4a-7d19-4c55-8e0b-93a1d2c4e602", "rg-storefront-neu", "aks-storefront-neu"
CREDS = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerService/managedClusters/{CLUSTER}"
    "/listClusterUserCredential"
)
FAST = {"retry_backoff_factor": 0.01}


def kubeconfig(user: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER,
                "cluster": {
                    "server": "https://aks-neu.hcp.northeurope.azmk8s.io:443",
                    "certificate-authority-data": "Q0E=",
                },
            }
        ],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": "clusterUser"}}],
        "current-context": CLUSTER,
        "users": [{"name": "clusterUser", "user": user}],
    }


KUBELOGIN = {
    "exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "kubelogin",
        "args": ["get-token", "--environment", "AzurePublicCloud", "--server-id",
                 "6dae42f8-4368-4678-94ff-3960e28e3630", "--client-id", "80faf920-1908-4b52-b5ef-a8e7bedfc67a",
                 "--tenant-id", "72f988bf-0000-0000-0000-000000000000", "--login", "devicecode"],
    }
}  # fmt: skip
LOCAL_ACCOUNT = {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZLXNlY3JldA==", "token": "local-secret"}


def serve_credentials(server, user: dict):
    def handler(req: Request, _m) -> Response:
        assert req.query.get("format") == "exec", f"format {req.query.get('format')!r}"
        assert not req.body or req.json() in (None, {}), "listClusterUserCredential takes no body"
        value = base64.b64encode(yaml.safe_dump(kubeconfig(user)).encode()).decode()
        return Response(200, {"kubeconfigs": [{"name": "clusterUser", "value": value}]})

    server.route("POST", CREDS, handler, api_version="2026-08-01", token=FakeCredential.token_for(ARM_SCOPE))


def cluster(server, credential, ca, **options) -> AksCluster:
    return AksCluster(credential, SUB, RG, CLUSTER, base_url=server.url, connection_verify=ca, **FAST, **options)


def test_entra_id_cluster_gets_a_token_instead_of_kubelogin(server, credential, ca):
    serve_credentials(server, KUBELOGIN)
    config, context = cluster(server, credential, ca).kubeconfig()
    assert context == CLUSTER
    assert config["users"][0]["user"] == {"token": FakeCredential.token_for(AKS_SCOPE)}
    assert (AKS_SCOPE,) in credential.scopes
    server.assert_clean()


def test_server_id_from_kubelogin_args_is_the_scope(server, credential, ca):
    other = {"exec": {**KUBELOGIN["exec"], "args": ["get-token", "--server-id=11111111-2222-3333-4444-555555555555"]}}
    serve_credentials(server, other)
    config, _ = cluster(server, credential, ca).kubeconfig()
    assert config["users"][0]["user"]["token"] == FakeCredential.token_for(
        "11111111-2222-3333-4444-555555555555/.default"
    )


def test_legacy_azure_auth_provider_is_replaced_too(server, credential, ca):
    serve_credentials(server, {"auth-provider": {"name": "azure", "config": {"apiserver-id": AKS_SCOPE.split("/")[0]}}})
    config, _ = cluster(server, credential, ca).kubeconfig()
    assert config["users"][0]["user"] == {"token": FakeCredential.token_for(AKS_SCOPE)}


def test_local_account_cluster_is_used_as_it_comes(server, credential, ca):
    serve_credentials(server, LOCAL_ACCOUNT)
    config, _ = cluster(server, credential, ca).kubeconfig()
    assert config["users"][0]["user"] == LOCAL_ACCOUNT
    assert (AKS_SCOPE,) not in credential.scopes


def test_kubeconfig_file_is_private_and_removed_after_use(server, credential, ca):
    serve_credentials(server, KUBELOGIN)
    with temporary_kubeconfig(cluster(server, credential, ca)) as (path, context):
        file = Path(path)
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
        assert yaml.safe_load(file.read_text())["users"][0]["user"]["token"] == FakeCredential.token_for(AKS_SCOPE)
        assert context == CLUSTER
    assert not file.exists() and not file.parent.exists()


class CachingCredential:
    """Tokens that expire, handed out as azure-identity does: the cached token until its last
    five minutes (GetTokenMixin), whatever the caller needs. The clock is the test's."""

    def __init__(self, clock: list[float], lifetime: float = 3600) -> None:
        self.clock, self.lifetime, self.issued = clock, lifetime, 0
        self._cached: AccessToken | None = None

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        if scopes[0] != AKS_SCOPE:  # ARM: what the contract server accepts
            return FakeCredential().get_token(*scopes)
        if self._cached is None or self._cached.expires_on - self.clock[0] < 300:
            self.issued += 1
            self._cached = AccessToken(f"tok-{id(self)}-{self.issued}", int(self.clock[0] + self.lifetime))
        return self._cached


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1_800_000_000.0]
    monkeypatch.setattr(aks_module.time, "time", lambda: now[0])
    return now


def _token(path: str) -> str:
    return yaml.safe_load(Path(path).read_text())["users"][0]["user"]["token"]


def test_a_token_is_replaced_when_it_would_not_outlive_the_operation(server, ca, clock):
    serve_credentials(server, KUBELOGIN)
    credential = CachingCredential(clock)
    aks = AksCluster(credential, SUB, RG, CLUSTER, base_url=server.url, connection_verify=ca, **FAST)
    renewed: list[CachingCredential] = []

    def renew() -> CachingCredential:
        renewed.append(CachingCredential(clock))
        return renewed[-1]

    folder = KubeconfigDir()
    produce = lambda needed: aks.credentials(needed, renew)  # noqa: E731
    first, _ = folder.path_for("neu", produce, valid_for=600)
    clock[0] += 2000  # 1600 s left: enough for a 600 s Helm upgrade plus the margin
    assert folder.path_for("neu", produce, valid_for=600)[0] == first
    assert len(server.calls("POST", CREDS)) == 1 and not renewed
    clock[0] += 1000  # 600 s left: less than 600 s + margin; the cached token has more than 5 min left
    second, _ = folder.path_for("neu", produce, valid_for=600)
    assert len(server.calls("POST", CREDS)) == 2
    assert len(renewed) == 1, "the cached credential would hand out the same short token: a new one asked"
    assert _token(second) != f"tok-{id(credential)}-1"
    assert _token(second) == f"tok-{id(renewed[0])}-1"


def test_a_token_that_cannot_outlive_the_operation_is_refused_before_it_starts(server, ca, clock):
    serve_credentials(server, KUBELOGIN)
    credential = CachingCredential(clock, lifetime=900)  # shorter than a 1800 s Helm timeout
    aks = AksCluster(credential, SUB, RG, CLUSTER, base_url=server.url, connection_verify=ca, **FAST)
    with pytest.raises(AzureAdapterError, match=r"valid for 900 s more, less than the 1860 s"):
        KubeconfigDir().path_for("neu", lambda needed: aks.credentials(needed), valid_for=1800)


def test_kubeconfig_dir_cleans_up_when_collected(server, credential, ca):
    serve_credentials(server, KUBELOGIN)
    aks = cluster(server, credential, ca)
    folder = KubeconfigDir()
    first, _ = folder.path_for("neu", aks.credentials)
    path = folder.path
    del folder
    assert not path.exists(), "the folder goes with its owner"
    assert not os.path.exists(first)


@pytest.mark.parametrize(
    ("status", "code", "expect"),
    [
        (404, "ResourceNotFound", "HTTP 404 ResourceNotFound"),
        (403, "AuthorizationFailed", "HTTP 403 AuthorizationFailed"),
        (409, "OperationNotAllowed", "HTTP 409 OperationNotAllowed"),
    ],
)
def test_arm_errors_name_the_cluster(server, credential, ca, status, code, expect):
    serve_credentials(server, KUBELOGIN)
    # ARM may echo the caller's token in an error; it must not reach our message.
    echo = f"denied for Bearer {FakeCredential.token_for(ARM_SCOPE)}"
    server.fail_next("POST", CREDS, arm_error(status, code, echo))
    with pytest.raises(AzureAdapterError) as caught:
        cluster(server, credential, ca).kubeconfig()
    message = str(caught.value)
    assert f"AKS cluster '{CLUSTER}' (resource group '{RG}'): reading user credentials failed: {expect}" in message
    assert FakeCredential.token_for(ARM_SCOPE) not in message
    assert caught.value.status_code == status


def test_throttling_and_server_errors_are_retried(server, credential, ca):
    serve_credentials(server, KUBELOGIN)
    server.fail_next(
        "POST", CREDS,
        arm_error(429, "TooManyRequests", "slow down", {"Retry-After": "1"}),
        arm_error(500, "InternalServerError", "oops"),
    )  # fmt: skip
    config, _ = cluster(server, credential, ca).kubeconfig()
    assert config["users"][0]["user"]["token"]
    assert len(server.calls("POST", CREDS)) == 3


def test_expired_arm_token_is_a_401_error(server, credential, ca):
    serve_credentials(server, KUBELOGIN)
    server.fail_next("POST", CREDS, arm_error(401, "ExpiredAuthenticationToken", "The access token expiry has passed."))
    with pytest.raises(AzureAdapterError, match="HTTP 401 ExpiredAuthenticationToken"):
        cluster(server, credential, ca).kubeconfig()


def test_unusable_kubeconfig_is_refused_without_quoting_it(server, credential, ca):
    secret = "client-key-data: c2VjcmV0LWtleQ=="

    def broken(_req, _m):
        value = base64.b64encode(f"users: [\n{secret}\n".encode()).decode()
        return Response(200, {"kubeconfigs": [{"name": "clusterUser", "value": value}]})

    server.route("POST", CREDS, broken, api_version="2026-08-01", token=FakeCredential.token_for(ARM_SCOPE))
    with pytest.raises(AzureAdapterError, match="not usable") as caught:
        cluster(server, credential, ca).kubeconfig()
    assert "c2VjcmV0" not in str(caught.value)


def test_read_timeout_is_bounded(server, credential, ca):
    serve_credentials(server, KUBELOGIN)
    server.fail_next("POST", CREDS, Response(200, b"{}", delay=3))
    with pytest.raises(AzureAdapterError, match="ServiceResponse"):
        cluster(server, credential, ca, timeout=0.5).kubeconfig()
    # A POST that timed out is not sent again: azure-core retries only idempotent methods on timeouts.
    assert len(server.calls("POST", CREDS)) == 1
