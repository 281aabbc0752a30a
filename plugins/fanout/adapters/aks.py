"""AKS cluster access: a kubeconfig per cluster from `listClusterUserCredential`.

For a cluster with Entra ID integration the kubeconfig AKS returns runs kubelogin (an exec
plugin, or the older `azure` auth-provider). Workers have no kubelogin and no interactive
login, so the user entry is replaced with a bearer token from our own credential for the AKS
server application — what kubelogin would have fetched. Clusters with local accounts come with
their own client certificate and are used as they are.

Kubeconfigs hold credentials: they are written 0600 into a private 0700 directory, removed when
the `KubeconfigDir` closes (or its owner is garbage-collected, or the process exits), and never
logged. A token must outlive the operation that uses it: a Helm upgrade or rollback may run for
its whole timeout, and a 401 in the middle leaves the release locked in pending-*. So the caller
says how long the next operation may take, and `KubeconfigDir.path_for` fetches a new kubeconfig
whenever the current token has less than that plus a margin left.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from azure.core.credentials import AccessToken, TokenCredential
from azure.mgmt.containerservice import ContainerServiceClient

from fanout.adapters.azure_credentials import AKS_SERVER_SCOPE, AzureAdapterError, call, client_options

# Helm's work before and after its --timeout wait (history, release records), plus clock skew.
MARGIN_SECONDS = 60.0

# (kubeconfig, context, epoch second its credential expires; math.inf when it does not)
Produced = tuple[dict[str, Any], str, float]


def lasting_token(
    credential: TokenCredential,
    scope: str,
    valid_for: float,
    renew: Callable[[], TokenCredential] | None = None,
    where: str = "AKS",
) -> AccessToken:
    """A token for `scope` still valid `valid_for` seconds from now.

    azure-identity hands out its cached token until the token's last five minutes, whatever the
    caller needs (GetTokenMixin: refresh only when expires_on - now < 300 s), so asking the same
    credential again may return the same short token. `renew` gives a new credential, whose cache
    is empty (FleetHook reads the Airflow connection again).
    """
    token = call(where, f"getting an Entra ID token for {scope}", credential.get_token, scope)
    if token.expires_on - time.time() < valid_for and renew is not None:
        token = call(where, f"getting a new Entra ID token for {scope}", renew().get_token, scope)
    left = token.expires_on - time.time()
    if left < valid_for:
        raise AzureAdapterError(
            f"{where}: the Entra ID token for {scope} is valid for {left:.0f} s more, less than the "
            f"{valid_for:.0f} s the next operation may take (its timeout plus {MARGIN_SECONDS:.0f} s)"
        )
    return token


def _server_scope(user: dict[str, Any]) -> str | None:
    """The scope kubelogin would ask for, or None if this user does not log in through Entra ID."""
    exec_ = user.get("exec")
    if isinstance(exec_, dict):
        args = [str(a) for a in exec_.get("args") or []]
        if "kubelogin" not in str(exec_.get("command", "")) and "get-token" not in args:
            return None
        for i, arg in enumerate(args):
            if arg.startswith("--server-id="):
                return arg.split("=", 1)[1] + "/.default"
            if arg == "--server-id" and i + 1 < len(args):
                return args[i + 1] + "/.default"
        return AKS_SERVER_SCOPE
    provider = user.get("auth-provider")
    if isinstance(provider, dict) and provider.get("name") == "azure":
        server = (provider.get("config") or {}).get("apiserver-id")
        return f"{server}/.default" if server else AKS_SERVER_SCOPE
    return None


class AksCluster:
    """One AKS cluster's user kubeconfig, with Entra ID logins replaced by a token."""

    def __init__(
        self,
        credential: TokenCredential,
        subscription: str,
        resource_group: str,
        cluster: str,
        *,
        base_url: str | None = None,
        connection_verify: str | bool | None = None,
        **options: Any,
    ) -> None:
        self.resource_group, self.cluster = resource_group, cluster
        self._credential = credential
        self._client = ContainerServiceClient(
            credential,
            subscription,
            **client_options(base_url=base_url, connection_verify=connection_verify, **options),
        )

    def close(self) -> None:
        self._client.close()

    def kubeconfig(self) -> tuple[dict[str, Any], str]:
        """(kubeconfig as a dict, its current context). Holds credentials: never log it."""
        config, context, _ = self.credentials()
        return config, context

    def credentials(self, valid_for: float = 0.0, renew: Callable[[], TokenCredential] | None = None) -> Produced:
        """(kubeconfig, context, expiry): each Entra ID login replaced by a token valid for at least
        `valid_for` seconds (see `lasting_token`)."""
        where = f"AKS cluster '{self.cluster}' (resource group '{self.resource_group}')"
        result = call(
            where,
            "reading user credentials",
            self._client.managed_clusters.list_cluster_user_credentials,
            self.resource_group,
            self.cluster,
            format="exec",  # ignored for clusters without Entra ID; for the others, one known shape
        )
        kubeconfigs = result.kubeconfigs or []
        if not kubeconfigs or not kubeconfigs[0].value:
            raise AzureAdapterError(f"{where}: listClusterUserCredential returned no kubeconfig")
        try:
            config = yaml.safe_load(kubeconfigs[0].value)
            users = config["users"]
            context = config["current-context"] or config["contexts"][0]["name"]
        except (yaml.YAMLError, KeyError, IndexError, TypeError):
            # Not the content: a parse error can quote it, and it holds credentials.
            raise AzureAdapterError(f"{where}: the kubeconfig AKS returned is not usable") from None
        expires = math.inf
        for entry in users:
            user = entry.get("user") or {}
            scope = _server_scope(user)
            if scope is None:
                continue
            token = lasting_token(self._credential, scope, valid_for, renew, where)
            entry["user"] = {"token": token.token}
            expires = min(expires, token.expires_on)
        return config, context, expires


class KubeconfigDir:
    """A private folder of kubeconfig files, one per key, removed on close."""

    def __init__(self, margin_seconds: float = MARGIN_SECONDS) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="fanout-kube-"))  # mkdtemp makes it 0700
        self.margin_seconds = margin_seconds
        self._expires: dict[str, float] = {}
        self._contexts: dict[str, str] = {}
        # Removed even when nobody calls close(): at garbage collection or interpreter exit.
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)

    def write(self, key: str, config: dict[str, Any]) -> str:
        target = self.path / f"{key}.yaml"
        tmp = self.path / f".{key}.tmp"
        # Created 0600 before any byte is written, then renamed into place atomically: a Helm
        # still running with the old file keeps its credential, the next one reads the new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(config, out)
        os.replace(tmp, target)
        return str(target)

    def path_for(self, key: str, produce: Callable[[float], Produced], valid_for: float = 0.0) -> tuple[str, str]:
        """(path, context) for `key` whose credential is valid for `valid_for` seconds plus the
        margin: a new kubeconfig from `produce(needed)` when there is none or its token expires sooner."""
        target = self.path / f"{key}.yaml"
        needed = valid_for + self.margin_seconds
        if key not in self._expires or not target.exists() or self._expires[key] - time.time() < needed:
            config, context, expires = produce(needed)
            if expires - time.time() < needed:
                raise AzureAdapterError(
                    f"{key}: the new cluster credential is valid for {expires - time.time():.0f} s, less than the "
                    f"{needed:.0f} s the next operation may take (timeout plus {self.margin_seconds:.0f} s margin)"
                )
            self._expires[key], self._contexts[key] = expires, context
            return self.write(key, config), context
        return str(target), self._contexts[key]

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


@contextmanager
def temporary_kubeconfig(cluster: AksCluster, valid_for: float = 0.0) -> Iterator[tuple[str, str]]:
    """(path, context) of the cluster's kubeconfig, for the duration of the `with` block only."""
    folder = KubeconfigDir()
    try:
        yield folder.path_for(cluster.cluster, cluster.credentials, valid_for)
    finally:
        folder.close()
