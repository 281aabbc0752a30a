"""Azure Container Registry: does one region's replica serve a digest?

Two questions, two APIs:

- `AcrReplicas` (ARM, azure-mgmt-containerregistry `replications.list`): does the registry have a
  replica in the region, and is it Ready? A precondition only: a Ready replica can still lack
  an image pushed seconds ago, because geo-replication is eventually consistent.
- `AcrReplica` (registry data plane, azure-containerregistry): GET `/v2/<repo>/manifests/<digest>`
  on the regional endpoint `<registry>.<region>.geo.azurecr.io`, which answers from that replica
  only. The client does ACR's token exchange on the 401 challenge (AAD token → `/oauth2/exchange`
  refresh token → `/oauth2/token` access token scoped `repository:<repo>:pull`) and checks that
  the manifest's bytes hash to the digest asked for.

Fallback for a registry without regional endpoints (`registry.replica_check: replica-status`):
ask the login server `<registry>.azurecr.io` instead, plus the replica's Ready status. That proves
the registry has the digest and the region's replica is healthy; it cannot prove that replica has
synced this digest — the login server answers from whichever replica is nearest to Airflow.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from azure.containerregistry import ContainerRegistryClient, DigestValidationError
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerregistry import ContainerRegistryManagementClient

from fanout.adapters.azure_credentials import CLOUDS, AzureAdapterError, call, client_options, describe
from fanout.adapters.registry import RegistryError, RegistryUnusable, unknown_host
from fanout.provenance import config_labels
from fanout.redact import scrub

READY = "Ready"
# Replica readiness is an ARM read, and ARM throttles reads per subscription and principal (the
# classic limit: 12,000 an hour); a replica's status changes in minutes. So a wait asks ARM about
# every 30 s (2 reads a minute per region: 60 regions stay near 7,200 an hour) and the registry
# (the manifest GET, not an ARM call) every few seconds.
READY_RECHECK_SECONDS = 30.0


class ReplicaNotFound(RegistryUnusable):
    """The registry has no replica in the region: no amount of waiting will fix that."""


@dataclass(frozen=True)
class ReplicaState:
    region: str  # normalized location, e.g. "westeurope"
    name: str
    provisioning_state: str | None
    display_status: str | None  # Ready, Syncing, Unavailable, …
    message: str | None = None
    region_endpoint_enabled: bool | None = None  # None: ARM did not say (older api-versions)

    @property
    def ready(self) -> bool:
        return self.display_status == READY and self.provisioning_state in (None, "Succeeded")


def _location(value: str | None) -> str:
    # ARM returns locations either as names ("westeurope") or display names ("West Europe").
    return (value or "").replace(" ", "").lower()


def _str(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


class AcrReplicas:
    """The replicas of one registry, read through ARM."""

    def __init__(
        self,
        credential: TokenCredential,
        subscription: str,
        resource_group: str,
        registry: str,
        *,
        base_url: str | None = None,
        connection_verify: str | bool | None = None,
        **options: Any,
    ) -> None:
        self.resource_group, self.registry = resource_group, registry
        self._client = ContainerRegistryManagementClient(
            credential,
            subscription,
            **client_options(base_url=base_url, connection_verify=connection_verify, **options),
        )

    def close(self) -> None:
        self._client.close()

    def abac_mode(self) -> bool:
        """Whether the registry is in "RBAC Registry + ABAC Repository Permissions" mode."""
        where = f"registry '{self.registry}'"
        registry = call(where, "reading the registry", self._client.registries.get, self.resource_group, self.registry)
        return _str(getattr(registry, "role_assignment_mode", None)) == "AbacRepositoryPermissions"

    def replicas(self) -> dict[str, ReplicaState]:
        """Every replica by region (the home region is one of them)."""
        items = call(
            f"registry '{self.registry}'",
            "listing replications",
            lambda: list(self._client.replications.list(self.resource_group, self.registry)),
        )
        out = {}
        for rep in items:
            props = rep.properties
            status = props.status if props else None
            state = ReplicaState(
                region=_location(rep.location),
                name=rep.name,
                provisioning_state=_str(props.provisioning_state if props else None),
                display_status=status.display_status if status else None,
                message=status.message if status else None,
                region_endpoint_enabled=props.region_endpoint_enabled if props else None,
            )
            out[state.region] = state
        return out

    def require_ready(self, region: str) -> ReplicaState:
        """The region's replica, if it is Ready. Raises ReplicaNotFound if there is none and
        RegistryError if it is not Ready (yet)."""
        replicas = self.replicas()
        state = replicas.get(_location(region))
        if state is None:
            raise ReplicaNotFound(
                f"registry '{self.registry}' has no replica in {region} (replicas: {', '.join(sorted(replicas))}); "
                f"add one: az acr replication create -r {self.registry} -l {region}"
            )
        return self._ready(state, region)

    def require_regional_endpoints(self, regions: list[str]) -> None:
        """Every region has a replica whose regional endpoint is switched on; else one line naming
        the regions and the two ways out. Regional endpoints are a preview feature of Premium
        registries and off unless enabled: without them a regional-endpoint check waits in vain."""
        replicas = self.replicas()
        missing = [r for r in regions if _location(r) not in replicas]
        if missing:
            raise ReplicaNotFound(
                f"registry '{self.registry}' has no replica in {', '.join(missing)}; add one: "
                f"az acr replication create -r {self.registry} -l <region>"
            )
        off = [r for r in regions if replicas[_location(r)].region_endpoint_enabled is False]
        if off:
            raise RegistryUnusable(
                f"registry '{self.registry}': the regional endpoint of the replica in {', '.join(off)} is off, so "
                "registry.replica_check 'regional-endpoint' cannot ask that replica; enable regional endpoints "
                f"(Premium, preview: az acr update -n {self.registry} --regional-endpoints enabled, and per replica "
                "az acr replication update --region-endpoint-enabled true) "
                "or set registry.replica_check: replica-status"
            )

    def _ready(self, state: ReplicaState, region: str) -> ReplicaState:
        if not state.ready:
            raise RegistryError(
                f"registry '{self.registry}' replica in {region} is {state.display_status} "
                f"(provisioning {state.provisioning_state})" + (f": {state.message}" if state.message else "")
            )
        return state


class AcrReplica:
    """One region's replica of an ACR registry, asked by digest like a pull in that region would.

    `endpoint` is the host asked (the regional endpoint, or the login server for the fallback);
    `replicas`, when given, is checked first, and a replica that does not exist is an error while
    one that is not Ready yet simply does not serve the digest yet.
    """

    insecure = False  # ACR is https only; the attribute exists because triggers are built from it

    def __init__(
        self,
        credential: TokenCredential,
        endpoint: str,
        *,
        region: str,
        replicas: AcrReplicas | None = None,
        audience: str = CLOUDS["AzurePublicCloud"]["acr_audience"],
        connection_verify: str | bool | None = None,
        retry_total: int = 3,
        timeout: float = 10,
        owns_replicas: bool = False,
        **options: Any,
    ) -> None:
        self.endpoint, self.region, self._replicas, self._owns_replicas = endpoint, region, replicas, owns_replicas
        self._arm_answer: tuple[float, bool] | None = None  # (monotonic time, Ready?) of the last ARM read
        kwargs = client_options(
            base_url=None, connection_verify=connection_verify, retry_total=retry_total, timeout=timeout, **options
        )
        kwargs.pop("credential_scopes")  # the data plane's token is for `audience`, not for ARM
        self._client = ContainerRegistryClient(f"https://{endpoint}", credential, audience=audience, **kwargs)
        # The client caches ACR refresh tokens; it is not documented as thread-safe.
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()
        if self._owns_replicas and self._replicas is not None:
            self._replicas.close()

    def _replica_ready(self) -> bool:
        """Whether the region's replica is Ready, as ARM said at most READY_RECHECK_SECONDS ago."""
        now = time.monotonic()
        if self._arm_answer is not None and now - self._arm_answer[0] < READY_RECHECK_SECONDS:
            return self._arm_answer[1]
        try:
            self._replicas.require_ready(self.region)
            ready = True
        except RegistryUnusable:
            raise
        except RegistryError:
            ready = False  # not Ready yet
        except AzureAdapterError as err:
            if err.status_code in (401, 403):
                raise RegistryUnusable(str(err)) from None
            raise RegistryError(str(err)) from None
        self._arm_answer = (now, ready)
        return ready

    def has_manifest(self, repository: str, digest: str) -> bool:
        """True once this replica serves `repository@digest` with content matching the digest.
        RegistryUnusable when waiting cannot help: no replica, a refused credential, an unknown host."""
        if self._replicas is not None and not self._replica_ready():
            return False
        fatal = False
        try:
            with self._lock:
                result = self._client.get_manifest(repository, digest)
        except ResourceNotFoundError:
            return False  # MANIFEST_UNKNOWN: replication has not reached this replica yet
        except DigestValidationError:
            cause = "the manifest it returned does not hash to the digest asked for"
        except (AzureError, OSError, ValueError) as err:
            cause, dns = describe(err)[0], unknown_host(err)
            refused = isinstance(err, (ClientAuthenticationError, HttpResponseError)) and err.status_code in (401, 403)
            fatal, cause = refused or dns, f"unknown host: {cause}" if dns else cause
        else:
            return result.digest == digest
        # Raised outside the except block: the SDK error holds the request, Authorization included.
        error = RegistryUnusable if fatal else RegistryError
        raise error(scrub(f"registry {self.endpoint}: GET manifest {repository}@{digest}: {cause}"))

    async def has_manifest_async(self, repository: str, digest: str) -> bool:
        return await asyncio.to_thread(self.has_manifest, repository, digest)

    def image_labels(self, repository: str, reference: str) -> tuple[str, dict[str, str]] | None:
        """(digest, labels of the image config) of `repository:reference`; None when there is none."""
        try:
            with self._lock:
                result = self._client.get_manifest(repository, reference)
                manifest = dict(result.manifest)
                if "manifests" in manifest:  # a multi-platform index: its first image speaks for it
                    manifest = dict(self._client.get_manifest(repository, manifest["manifests"][0]["digest"]).manifest)
                config = (manifest.get("config") or {}).get("digest")
                blob = b"".join(self._client.download_blob(repository, config)) if config else b"{}"
        except ResourceNotFoundError:
            return None
        except (AzureError, OSError, ValueError, KeyError, IndexError) as err:
            cause = describe(err)[0] if isinstance(err, AzureError) else str(err)
            raise RegistryError(scrub(f"registry {self.endpoint}: reading {repository}:{reference}: {cause}")) from None
        return result.digest, config_labels(json.loads(blob))
