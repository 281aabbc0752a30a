"""FleetHook: the one place that turns a fleet file into clients for its outside systems.

Operators ask the hook for a client and never build one themselves, so the Azure
adapters replace the local ones here without any operator changing. Every Azure client
authenticates with the credential of the fleet's Airflow connection (`azure.conn_id`).
"""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from fanout.adapters.acr import AcrReplica, AcrReplicas
from fanout.adapters.acr_tasks import AcrTasksBuilder
from fanout.adapters.aks import AksCluster, KubeconfigDir, Produced
from fanout.adapters.azure_credentials import AzureAccess, AzureAdapterError, access_from_connection, arm_scope
from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.cluster import Cluster
from fanout.adapters.helm import Helm
from fanout.adapters.kube_exec import exec_kubeconfig, uses_exec
from fanout.adapters.registry import OciRegistry, RegistryError
from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential, TrafficManager
from fanout.fleet import Fleet, Registry
from fanout.preflight import check_release_access


def cache_dir() -> Path:
    return Path(os.environ.get("FANOUT_CACHE", Path.home() / ".cache" / "fanout"))


def helm_binary() -> str:
    """FANOUT_HELM, else `helm` on PATH, else the Helm 4 the local fleet built."""
    if explicit := os.environ.get("FANOUT_HELM"):
        return explicit
    if found := shutil.which("helm"):
        return found
    built = sorted(cache_dir().glob("bin/helm-v4*/helm"))
    if built:
        return str(built[-1])
    raise FileNotFoundError("no helm binary: set FANOUT_HELM, put Helm 4 on PATH, or run `make binaries`")


class FleetHook(BaseHook):
    """Clients for one fleet: Traffic Manager, each region's registry replica and cluster, Helm.

    `access` replaces the Airflow connection and `arm_url` / `connection_verify` the Azure
    endpoints and CA bundle: for tests against local contract servers. Call `close()` when done
    (kubeconfig files written for AKS clusters are removed then, or when the hook is collected).
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        access: AzureAccess | None = None,
        arm_url: str | None = None,
        connection_verify: str | bool | None = None,
        azure_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self._access = access
        self._arm_url = arm_url
        self._verify = connection_verify
        self._azure_options = dict(azure_options or {})
        self._kubeconfigs: KubeconfigDir | None = None
        self._replicas: AcrReplicas | None = None
        self._opened: list[Any] = []  # every client handed out, closed by close()

    # -- Azure plumbing ----------------------------------------------------------
    @cached_property
    def azure(self) -> AzureAccess:
        """The fleet's Azure credential, read once from its Airflow connection."""
        access = self._access or access_from_connection(self.fleet.azure.conn_id)
        if access.cloud != self.fleet.azure.cloud:
            raise ValueError(
                f"azure.cloud: the fleet says {self.fleet.azure.cloud} but connection '{self.fleet.azure.conn_id}' "
                f"is for {access.cloud} (its cloud_environment); they must agree"
            )
        return access

    def _arm(self, base_url: str | None = None) -> dict[str, Any]:
        """Options for every ARM client: endpoint, token scope and retries of the fleet's cloud."""
        url = base_url or self._arm_url
        if url is None and self.azure.cloud != "AzurePublicCloud":
            url = self.azure.arm_url
        options: dict[str, Any] = {**self._azure_options, "base_url": url, "cloud": self.azure.cloud}
        if self._verify is not None:
            options["connection_verify"] = self._verify
        return options

    def close(self) -> None:
        """Close every client this hook handed out and remove its kubeconfig files."""
        for client in reversed(self._opened):
            client.close()
        self._opened.clear()
        self._replicas = None
        if self._kubeconfigs is not None:
            self._kubeconfigs.close()
            self._kubeconfigs = None

    def _keep(self, client: Any) -> Any:
        self._opened.append(client)
        return client

    # -- clients -------------------------------------------------------------------
    def traffic_manager(self) -> TrafficManager:
        tm = self.fleet.traffic_manager
        types = {r.endpoint.name: r.endpoint.type for r in self.fleet.regions}
        if tm.kind == "local":
            return self._keep(AzureTrafficManager(
                StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile,
                endpoint_types=types, base_url=tm.base_url,
            ))  # fmt: skip
        options = self._arm(tm.base_url)
        options["credential_scopes"] = [arm_scope(options.pop("cloud"))]
        return self._keep(
            AzureTrafficManager(
                self.azure.credential, tm.subscription, tm.resource_group, tm.profile, endpoint_types=types, **options
            )
        )

    def _acr(self) -> Registry:
        reg = self.fleet.registry
        missing = [f"registry.{f}" for f in ("subscription", "resource_group") if not getattr(reg, f)]
        if missing:
            raise ValueError(f"{' and '.join(missing)}: required to reach ACR '{reg.name}' (replications, ACR Tasks)")
        return reg

    @property
    def _acr_replicas(self) -> AcrReplicas:
        if self._replicas is None:
            reg = self._acr()
            replicas = AcrReplicas(self.azure.credential, reg.subscription, reg.resource_group, reg.name, **self._arm())
            self._replicas = self._keep(replicas)
        return self._replicas

    def registry_endpoint(self, region: str) -> str:
        """The host asked whether `region`'s replica serves a digest."""
        reg = self.fleet.registry
        if reg.kind == "acr" and reg.replica_check == "replica-status" and region not in reg.endpoints:
            return reg.login_server
        return reg.endpoint(region)

    def registry(self, region: str) -> OciRegistry | AcrReplica:
        reg = self.fleet.registry
        if reg.kind == "oci":
            return OciRegistry(reg.endpoint(region), insecure=reg.insecure)
        options = {k: v for k, v in self._azure_options.items() if k.startswith("retry_") or k == "timeout"}
        return self._keep(AcrReplica(
            self.azure.credential,
            self.registry_endpoint(region),
            region=region,
            replicas=self._acr_replicas,
            audience=self.azure.acr_audience,
            connection_verify=self._verify,
            **options,
        ))  # fmt: skip

    def replication_trigger_kwargs(self, region: str) -> dict[str, Any]:
        """What ReplicationTrigger needs to ask `region`'s replica from the triggerer: plain values,
        never a credential (the trigger reads the connection itself)."""
        reg = self.fleet.registry
        if reg.kind == "oci":
            return {"endpoint": reg.endpoint(region), "insecure": reg.insecure, "poll_seconds": 1.0}
        self._acr()
        return {
            "endpoint": self.registry_endpoint(region),
            "insecure": False,
            # A manifest GET every 5 s; the replica's Ready status (ARM) every 30 s (acr.READY_RECHECK_SECONDS).
            "poll_seconds": 5.0,
            "registry_kind": "acr",
            "conn_id": self.fleet.azure.conn_id,
            "acr": {
                "subscription": reg.subscription,
                "resource_group": reg.resource_group,
                "registry": reg.name,
                "region": region,
            },
        }

    def acr_run_trigger_kwargs(self, run_id: str) -> dict[str, Any]:
        """What AcrRunTrigger needs to follow ACR Tasks run `run_id` from the triggerer: coordinates
        and the connection id, never a credential. `base_url` / `connection_verify` are this hook's
        test overrides (None in production: the trigger takes the ARM endpoint of the connection's cloud)."""
        reg = self._acr()
        return {
            "run_id": run_id,
            "conn_id": self.fleet.azure.conn_id,
            "subscription": reg.subscription,
            "resource_group": reg.resource_group,
            "registry": reg.name,
            "base_url": self._arm_url,
            "connection_verify": self._verify,
        }

    def aks(self, region: str) -> AksCluster:
        access = self.fleet.region(region).cluster.aks
        if access is None:
            raise ValueError(f"{region}: cluster access is not 'aks'")
        return AksCluster(
            self.azure.credential, access.subscription, access.resource_group, access.cluster, **self._arm()
        )

    def kubeconfig(self, region: str, valid_for: float = 30.0) -> tuple[str, str]:
        """(kubeconfig path, context) whose credential lasts `valid_for` seconds more (plus a margin):
        the next operation's timeout. For AKS and for exec-plugin logins a private 0600 file holding
        a token, fetched again whenever the current one would expire sooner."""
        access = self.fleet.region(region).cluster
        if self._kubeconfigs is None:
            self._kubeconfigs = KubeconfigDir()
        if access.kubeconfig is not None:
            path, context = str(self.fleet.resolve(access.kubeconfig.path)), access.kubeconfig.context
            if not uses_exec(path, context):
                return path, context
            return self._kubeconfigs.path_for(region, lambda _: exec_kubeconfig(path, context), valid_for)

        def fetch(needed: float) -> Produced:
            cluster = self.aks(region)
            # A second credential from the connection starts with an empty token cache.
            renew = None if self._access else (lambda: access_from_connection(self.fleet.azure.conn_id).credential)
            try:
                return cluster.credentials(needed, renew)
            finally:
                cluster.close()

        return self._kubeconfigs.path_for(region, fetch, valid_for)

    def preflight(self, regions: list[str]) -> None:
        """Before a release changes anything: each region's namespace exists and Fanout's identity may
        do there what a release does (fanout.preflight); with `replica_check: regional-endpoint`, each
        region's ACR replica exists with its regional endpoint on. Raises naming region and cause."""
        for region in regions:
            check_release_access(*self.kubeconfig(region), self.fleet.app.namespace, region)
        reg = self.fleet.registry
        if reg.kind == "acr" and reg.replica_check == "regional-endpoint":
            unnamed = [r for r in regions if r not in reg.endpoints]  # explicit endpoints are the fleet's call
            try:
                self._acr_replicas.require_regional_endpoints(unnamed)
            except AzureAdapterError as err:
                raise RegistryError(str(err)) from None

    def rollout_trigger_kwargs(self, region: str) -> dict[str, Any]:
        """What RolloutTrigger needs to reach `region`'s cluster from the triggerer. For AKS it is
        the cluster's coordinates, not a kubeconfig path: our file is gone when this process ends."""
        access = self.fleet.region(region).cluster
        if access.kubeconfig is not None:
            return {"kubeconfig": str(self.fleet.resolve(access.kubeconfig.path)), "context": access.kubeconfig.context}
        return {
            "kubeconfig": "",
            "context": "",
            "aks": {
                "subscription": access.aks.subscription,
                "resource_group": access.aks.resource_group,
                "cluster": access.aks.cluster,
                "conn_id": self.fleet.azure.conn_id,
            },
        }

    def cluster(self, region: str) -> Cluster:
        return Cluster(*self.kubeconfig(region))

    def helm(self, region: str) -> Helm:
        """Helm for `region`; before each command it asks for a credential outlasting the command."""
        kubeconfig, context = self.kubeconfig(region)
        return Helm(
            helm_binary(), kubeconfig, context, timeout_seconds=self.fleet.gates.rollout_timeout_seconds,
            credentials=lambda valid_for: self.kubeconfig(region, valid_for),
        )  # fmt: skip

    def builder(self) -> BuildahBuilder | AcrTasksBuilder:
        reg = self.fleet.registry
        if reg.kind == "oci":
            return BuildahBuilder(cache_dir() / "buildah", insecure=reg.insecure)
        self._acr()
        return self._keep(AcrTasksBuilder(
            self.azure.credential,
            reg.subscription,
            reg.resource_group,
            reg.name,
            progress=lambda line: self.log.info("ACR Tasks: %s", line),
            push_as_caller=lambda: self._acr_replicas.abac_mode(),
            **self._arm(),
        ))  # fmt: skip
