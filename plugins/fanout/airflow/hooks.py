"""FleetHook: the one place that turns a fleet file into clients for its outside systems.

Operators ask the hook for a client and never build one themselves, so the Azure
adapters replace the local ones here without any operator changing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from airflow.sdk import BaseHook

from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.cluster import Cluster
from fanout.adapters.helm import Helm
from fanout.adapters.registry import OciRegistry
from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential, TrafficManager
from fanout.fleet import Fleet


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
    """Clients for one fleet: Traffic Manager, each region's registry replica and cluster, Helm."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet

    def traffic_manager(self) -> TrafficManager:
        tm = self.fleet.traffic_manager
        types = {r.endpoint.name: r.endpoint.type for r in self.fleet.regions}
        if tm.kind == "local":
            credential = StaticTokenCredential()
        else:
            raise NotImplementedError("traffic_manager.kind 'azure' needs the Azure connection (production adapters)")
        return AzureTrafficManager(
            credential, tm.subscription, tm.resource_group, tm.profile, endpoint_types=types, base_url=tm.base_url
        )

    def registry(self, region: str) -> OciRegistry:
        if self.fleet.registry.kind != "oci":
            raise NotImplementedError("registry.kind 'acr' needs the ACR adapter (production adapters)")
        return OciRegistry(self.fleet.registry.endpoint(region), insecure=self.fleet.registry.insecure)

    def kubeconfig(self, region: str) -> tuple[str, str]:
        access = self.fleet.region(region).cluster
        if access.kubeconfig is None:
            raise NotImplementedError(f"{region}: cluster access 'aks' needs the AKS adapter (production adapters)")
        return str(self.fleet.resolve(access.kubeconfig.path)), access.kubeconfig.context

    def cluster(self, region: str) -> Cluster:
        return Cluster(*self.kubeconfig(region))

    def helm(self, region: str) -> Helm:
        kubeconfig, context = self.kubeconfig(region)
        return Helm(helm_binary(), kubeconfig, context, timeout_seconds=self.fleet.gates.rollout_timeout_seconds)

    def builder(self) -> BuildahBuilder:
        if self.fleet.registry.kind != "oci":
            raise NotImplementedError("registry.kind 'acr' builds with ACR Tasks (production adapters)")
        return BuildahBuilder(cache_dir() / "buildah", insecure=self.fleet.registry.insecure)
