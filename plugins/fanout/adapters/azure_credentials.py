"""What every Azure adapter shares: the credential from Airflow's `azure` connection, the SDK
client options (retries, timeouts, base URL for tests), and turning SDK errors into messages
that name the resource and the cause but never a token, a SAS signature or a kubeconfig.

The Airflow import is lazy so the adapters stay importable (and testable) without Airflow.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from fanout.redact import scrub

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

# The AAD server application every AKS cluster with Entra ID integration trusts (what kubelogin's
# --server-id says); a token for it is what `kubectl` sends after kubelogin.
AKS_SERVER_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"

# ARM endpoint and ACR token audience per cloud, keyed like the provider's `cloud_environment` extra.
CLOUDS: dict[str, dict[str, str]] = {
    "AzurePublicCloud": {"arm": "https://management.azure.com", "acr_audience": "https://containerregistry.azure.net"},
    "AzureUSGovernment": {
        "arm": "https://management.usgovcloudapi.net",
        "acr_audience": "https://management.usgovcloudapi.net",
    },
    "AzureChinaCloud": {
        "arm": "https://management.chinacloudapi.cn",
        "acr_audience": "https://management.chinacloudapi.cn",
    },
}

T = TypeVar("T")


class AzureAdapterError(RuntimeError):
    """An Azure call failed. The message names the resource and the cause, never a credential."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status_code, self.code = status_code, code


@dataclass(frozen=True)
class AzureAccess:
    """A credential plus where to send it: what one Airflow `azure` connection gives."""

    credential: TokenCredential
    cloud: str = "AzurePublicCloud"
    subscription: str | None = None  # the connection's default subscription, if it names one

    @property
    def arm_url(self) -> str:
        return CLOUDS[self.cloud]["arm"]

    @property
    def acr_audience(self) -> str:
        return CLOUDS[self.cloud]["acr_audience"]


def access_from_connection(conn_id: str) -> AzureAccess:
    """The credential of Airflow connection `conn_id` (type `azure`), built by the provider's
    `AzureBaseHook.get_credential`: a client secret when login, password and `tenantId` are set,
    else `DefaultAzureCredential` (workload identity, managed identity — `managed_identity_client_id`
    and `workload_identity_tenant_id` extras —, environment, Azure CLI).

    The provider only returns an azure-identity object when the extra `use_azure_identity_object` is
    true (otherwise a legacy msrest credential the current SDKs cannot use), so we set it on a copy.
    """
    from airflow.providers.microsoft.azure.hooks.base_azure import AzureBaseHook

    hook = AzureBaseHook(conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    extra = dict(conn.extra_dejson)
    cloud = extra.get("cloud_environment") or "AzurePublicCloud"
    if cloud not in CLOUDS:
        raise AzureAdapterError(
            f"connection '{conn_id}': cloud_environment {cloud!r} is not one of {', '.join(CLOUDS)}"
        )
    if not extra.get("use_azure_identity_object"):
        conn = copy.copy(conn)
        conn.extra = json.dumps({**extra, "use_azure_identity_object": True})
    credential = hook.get_credential(conn=conn)
    return AzureAccess(credential, cloud, extra.get("subscriptionId") or None)  # type: ignore[arg-type]


def arm_scope(cloud: str) -> str:
    """The token scope of ARM in `cloud`. The management SDKs default to the public cloud's scope
    whatever their base_url, and a sovereign cloud's Entra ID refuses it."""
    return CLOUDS[cloud]["arm"] + "/.default"


def client_options(
    *,
    base_url: str | None,
    cloud: str = "AzurePublicCloud",
    connection_verify: str | bool | None = None,
    retry_total: int = 5,
    retry_backoff_factor: float = 0.8,
    retry_backoff_max: int = 30,
    timeout: float = 30,
) -> dict[str, Any]:
    """Keyword arguments every ARM client takes. `base_url` None means public-cloud ARM; `cloud`
    gives the token scope (send `base_url` too for a sovereign cloud).

    azure-core's RetryPolicy retries 408/429/500/502/503/504 and connection/read errors, sleeping
    for Retry-After when the service sends it, else exponential backoff.
    """
    options: dict[str, Any] = {
        "credential_scopes": [arm_scope(cloud)],
        "retry_total": retry_total,
        "retry_backoff_factor": retry_backoff_factor,
        "retry_backoff_max": retry_backoff_max,
        "connection_timeout": timeout,
        "read_timeout": timeout,
    }
    if base_url is not None:
        if urlsplit(base_url).scheme != "https":
            raise ValueError(f"base_url {base_url!r}: Azure clients send bearer tokens, so https only")
        options["base_url"] = base_url
    if connection_verify is not None:
        # A CA bundle path: how the contract tests trust their self-signed loopback server.
        options["connection_verify"] = connection_verify
    return options


def describe(err: Exception) -> tuple[str, int | None, str | None]:
    """(cause, HTTP status, service error code) of an SDK exception."""
    # azure.core is imported where it is used: the triggers module imports this one, and every
    # task's DAG-file parse imports the triggers.
    from azure.core.exceptions import AzureError, HttpResponseError

    if isinstance(err, HttpResponseError):
        code = getattr(getattr(err, "error", None), "code", None)
        detail = getattr(getattr(err, "error", None), "message", None) or err.reason or "no details"
        return f"HTTP {err.status_code}" + (f" {code}" if code else "") + f": {detail}", err.status_code, code
    if isinstance(err, AzureError):
        return f"{type(err).__name__}: {err.message}", None, None
    return f"{type(err).__name__}: {err}", None, None


def call(where: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one SDK call; on failure raise AzureAdapterError naming `where` and `what`."""
    from azure.core.exceptions import AzureError

    try:
        return fn(*args, **kwargs)
    except (AzureError, OSError) as err:
        cause, status, code = describe(err)
    # Raised outside the except block on purpose: the SDK error holds the request, Authorization
    # header included, and must not travel along as __context__ into tracebacks and logs.
    raise AzureAdapterError(scrub(f"{where}: {what} failed: {cause}"), status_code=status, code=code)
