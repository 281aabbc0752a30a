"""FleetHook: the one place that turns a fleet file into clients for its outside systems.

Operators ask the hook for a client and never build one themselves, so the Azure
adapters replace the local ones here without any operator changing. Every Azure client
authenticates with the credential of the fleet's Airflow connection (`azure.conn_id`).
"""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.cluster import Cluster
from fanout.adapters.edge import Edge
from fanout.adapters.git_source import DevDirectory, GitRepository
from fanout.adapters.helm import Helm, helm_binary
from fanout.adapters.metrics import AZURE_MONITOR_SCOPE, MetricError, PrometheusQuery
from fanout.adapters.registry import OciRegistry
from fanout.cache import cache_dir
from fanout.fleet import Fleet, Registry
from fanout.fleet_checks import acr_host_problem
from fanout.redact import scrub

if TYPE_CHECKING:
    from fanout.adapters.acr import AcrReplica, AcrReplicas
    from fanout.adapters.acr_tasks import AcrTasksBuilder
    from fanout.adapters.aks import AksCluster, KubeconfigDir
    from fanout.adapters.azure_credentials import AzureAccess
    from fanout.adapters.traffic import TrafficManager


class _Closable(Protocol):
    def close(self) -> None: ...


# The Azure SDKs are imported where a client is built, not at module level: every task process
# parses the DAG file, which imports this module, and most tasks never build an Azure client.


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
        self._opened: list[_Closable] = []

    # -- Azure plumbing ----------------------------------------------------------
    @cached_property
    def azure(self) -> AzureAccess:
        """The fleet's Azure credential, read once from its Airflow connection."""
        from fanout.adapters import azure_credentials

        # Looked up on the module, not imported by name, so tests can stand in for the connection.
        access = self._access or azure_credentials.access_from_connection(self.fleet.azure.conn_id)
        if access.cloud != self.fleet.azure.cloud:
            raise ValueError(
                f"azure.cloud: the fleet says {self.fleet.azure.cloud} but connection '{self.fleet.azure.conn_id}' "
                f"is for {access.cloud} (its cloud_environment); they must agree"
            )
        return access

    def _arm(self) -> dict[str, Any]:
        """Options for every ARM client: endpoint, token scope and retries of the fleet's cloud."""
        url = self._arm_url
        if url is None and self.azure.cloud != "AzurePublicCloud":
            url = self.azure.arm_url
        options: dict[str, Any] = {**self._azure_options, "base_url": url, "cloud": self.azure.cloud}
        if self._verify is not None:
            options["connection_verify"] = self._verify
        return options

    def close(self) -> None:
        """Close every client this hook built (their HTTP sessions) and remove kubeconfig files."""
        opened, self._opened = self._opened, []
        for client in opened:
            with contextlib.suppress(Exception):  # closing one must not leave the others open
                client.close()
        self.__dict__.pop("_acr_replicas", None)
        self.__dict__.pop("_traffic_manager", None)
        self.__dict__.pop("metrics", None)
        if self._kubeconfigs is not None:
            self._kubeconfigs.close()
            self._kubeconfigs = None

    def _keep(self, client: _Closable) -> Any:
        self._opened.append(client)
        return client

    # -- clients -------------------------------------------------------------------
    def traffic_manager(self) -> TrafficManager:
        return self._traffic_manager

    @cached_property
    def _traffic_manager(self) -> TrafficManager:
        from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential

        tm = self.fleet.traffic_manager
        types = {r.endpoint.name: r.endpoint.type for r in self.fleet.regions}
        # A region answering through nested profiles is drained in each child profile holding it.
        places = {r.endpoint.name: self.fleet.endpoint_profiles(r.name) for r in self.fleet.regions}
        if tm.kind == "local":
            return self._keep(AzureTrafficManager(
                StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile,
                endpoint_types=types, endpoint_profiles=places, base_url=tm.base_url,
            ))  # fmt: skip
        from fanout.adapters.azure_credentials import arm_scope

        # Never tm.base_url: an Azure token goes to the ARM endpoint of the connection's cloud only.
        options = self._arm()
        options["credential_scopes"] = [arm_scope(options.pop("cloud"))]
        return self._keep(AzureTrafficManager(
            self.azure.credential, tm.subscription, tm.resource_group, tm.profile, endpoint_types=types,
            endpoint_profiles=places, **options
        ))  # fmt: skip

    def _acr(self) -> Registry:
        reg = self.fleet.registry
        missing = [f"registry.{f}" for f in ("subscription", "resource_group") if not getattr(reg, f)]
        if missing:
            raise ValueError(f"{' and '.join(missing)}: required to reach ACR '{reg.name}' (replications, ACR Tasks)")
        return reg

    @cached_property
    def _acr_replicas(self) -> AcrReplicas:
        from fanout.adapters.acr import AcrReplicas

        reg = self._acr()
        replicas = AcrReplicas(self.azure.credential, str(reg.subscription), str(reg.resource_group), str(reg.name),
                               **self._arm())  # fmt: skip
        return self._keep(replicas)

    def registry_endpoint(self, region: str) -> str:
        """The host asked whether `region`'s replica serves a digest. For ACR's regional endpoints
        that is the host ARM reports (read once per hook), computed only where ARM cannot say."""
        reg = self.fleet.registry
        if reg.kind == "acr" and reg.replica_check == "replica-status" and region not in reg.endpoints:
            return reg.login_server
        return self._reported_host(region) or reg.endpoint(region)

    def _reported_host(self, region: str) -> str | None:
        """The regional host ARM reports for `region` when the check asks a regional endpoint the fleet
        file does not name; None otherwise, or where ARM lacks the preview api-version that says."""
        reg = self.fleet.registry
        if reg.kind != "acr" or reg.replica_check != "regional-endpoint" or region in reg.endpoints:
            return None
        from fanout.adapters.azure_credentials import AzureAdapterError
        from fanout.adapters.registry import RegistryError, RegistryUnusable

        try:
            return self._acr_replicas.regional_host(region)
        except AzureAdapterError as err:
            raise (RegistryUnusable if err.status_code in (401, 403) else RegistryError)(str(err)) from None

    def registry(self, region: str) -> OciRegistry | AcrReplica:
        reg = self.fleet.registry
        if reg.kind == "oci":
            return OciRegistry(reg.endpoint(region), insecure=reg.insecure)
        from fanout.adapters.acr import AcrReplica

        reported = self._reported_host(region)
        endpoint = reported or self.registry_endpoint(region)
        # The fleet file was checked against every cloud; the token is this connection's cloud's. The
        # contract tests' server (arm_url, a test override) is the one other host allowed. A host ARM
        # reports starts with the registry's login label (`<name>-<hash>` with a domain name label),
        # which ARM vouches for; it must still be an ACR host of this cloud.
        owner = reported.split(".", 1)[0] if reported else reg.name or ""
        test_host = urlsplit(self._arm_url).netloc if self._arm_url else None
        if endpoint != test_host and (why := acr_host_problem(endpoint, owner, (self.azure.cloud,))):
            where = f"the regional host ARM reports for {region}" if reported else f"registry.endpoints[{region!r}]"
            raise ValueError(f"{where}: {why}")
        options = {k: v for k, v in self._azure_options.items() if k.startswith("retry_") or k == "timeout"}
        replica = AcrReplica(
            self.azure.credential,
            endpoint,
            region=region,
            replicas=self._acr_replicas,
            audience=self.azure.acr_audience,
            connection_verify=self._verify,
            **options,
        )
        return self._keep(replica)

    def trigger_options(self) -> dict[str, Any]:
        """This hook's test overrides, for the same FleetHook in the triggerer (empty in production)."""
        options: dict[str, Any] = {}
        if self._arm_url is not None:
            options["arm_url"] = self._arm_url
        if self._verify is not None:
            options["connection_verify"] = self._verify
        if self._azure_options:
            options["azure_options"] = self._azure_options
        return options

    def aks(self, region: str) -> AksCluster:
        from fanout.adapters.aks import AksCluster

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
        from fanout.adapters.aks import KubeconfigDir, Produced
        from fanout.adapters.kube_exec import exec_kubeconfig, uses_exec

        access = self.fleet.region(region).cluster
        if self._kubeconfigs is None:
            self._kubeconfigs = KubeconfigDir()
        if access.kubeconfig is not None:
            path, context = str(self.fleet.resolve(access.kubeconfig.path)), access.kubeconfig.context
            if not uses_exec(path, context):
                return path, context
            return self._kubeconfigs.path_for(region, lambda _: exec_kubeconfig(path, context), valid_for)

        def fetch(needed: float) -> Produced:
            from fanout.adapters import azure_credentials

            cluster = self.aks(region)
            # A second credential from the connection starts with an empty token cache.
            conn_id = self.fleet.azure.conn_id
            renew = None if self._access else (lambda: azure_credentials.access_from_connection(conn_id).credential)
            try:
                return cluster.credentials(needed, renew)
            finally:
                cluster.close()

        return self._kubeconfigs.path_for(region, fetch, valid_for)

    def preflight(self, regions: list[str]) -> None:
        """Before a release changes anything: each region's namespace exists and Fanout's identity may
        do there what a release does (fanout.preflight); an ACR registry answers at the login server
        releases pull from, and with `replica_check: regional-endpoint` each region's replica exists with
        its regional endpoint on. Raises naming region and cause."""
        from fanout.adapters.azure_credentials import AzureAdapterError
        from fanout.adapters.registry import RegistryError
        from fanout.preflight import check_release_access

        for region in regions:
            check_release_access(*self.kubeconfig(region), self.fleet.app.namespace, region)
        reg = self.fleet.registry
        if reg.kind != "acr":
            return
        try:
            self._acr_replicas.require_login_server(reg.login_server)
            if reg.replica_check == "regional-endpoint":
                unnamed = [r for r in regions if r not in reg.endpoints]  # explicit endpoints are the fleet's call
                self._acr_replicas.require_regional_endpoints(unnamed)
        except AzureAdapterError as err:
            raise RegistryError(str(err)) from None

    def replication_poll_seconds(self) -> float:
        """A manifest check every 5 s for ACR (its replica's Ready status, ARM, every 30 s:
        acr.READY_RECHECK_SECONDS), every second for the local registries."""
        return 5.0 if self.fleet.registry.kind == "acr" else 1.0

    def cluster(self, region: str) -> Cluster:
        return Cluster(*self.kubeconfig(region))

    def helm(self, region: str) -> Helm:
        """Helm for `region`; before each command it asks for a credential outlasting the command."""
        kubeconfig, context = self.kubeconfig(region)
        return Helm(
            helm_binary(), kubeconfig, context, timeout_seconds=self.fleet.gates.rollout_timeout_seconds,
            credentials=lambda valid_for: self.kubeconfig(region, valid_for),
        )  # fmt: skip

    def source(self) -> GitRepository | DevDirectory:
        """The app's repository, with the credential of `app.source.git.conn_id` (login, password)."""
        src = self.fleet.app.source
        if src.git is None:
            return DevDirectory(self.fleet.resolve(src.directory))
        conn = self.get_connection(src.git.conn_id) if src.git.conn_id else None
        return GitRepository(src.git.url, (conn.login or "", conn.password or "") if conn else None)

    def edge(self, region: str) -> Edge:
        gate = self.fleet.gates.http
        return Edge(self.fleet.region(region).edge_url, gate.health_path, gate.version_path)

    @cached_property
    def metrics(self) -> PrometheusQuery:
        """The metric gates' query API (one client per hook); an Azure Monitor workspace gets the
        fleet's Entra token."""
        gates = self.fleet.gates.metrics
        if gates is None:
            raise ValueError("gates.metrics: this fleet has no metric gates")
        verify = True if self._verify is None else self._verify
        if gates.source.kind != "azure-monitor":
            return self._keep(PrometheusQuery(gates.source.url, verify=verify))
        scope = AZURE_MONITOR_SCOPE[self.fleet.azure.cloud]

        def token() -> str:
            try:
                return self.azure.credential.get_token(scope).token
            except Exception as err:  # whatever azure-identity raises: the gate says why, and retries
                raise MetricError(f"no Entra token for {scope}: {scrub(str(err))}") from None

        return self._keep(PrometheusQuery(gates.source.url, token=token, verify=verify))

    def builder(self) -> BuildahBuilder:
        """The local image builder (registry kind `oci`); ACR builds with acr_tasks()."""
        return BuildahBuilder(cache_dir() / "buildah", insecure=self.fleet.registry.insecure)

    def acr_tasks(self) -> AcrTasksBuilder:
        from fanout.adapters.acr_tasks import AcrTasksBuilder

        reg = self._acr()
        return self._keep(AcrTasksBuilder(
            self.azure.credential,
            str(reg.subscription),
            str(reg.resource_group),
            str(reg.name),
            progress=lambda line: self.log.info("ACR Tasks: %s", line),
            push_as_caller=lambda: self._acr_replicas.abac_mode(),
            **self._arm(),
        ))  # fmt: skip
