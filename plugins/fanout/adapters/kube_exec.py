"""Kubeconfigs whose user runs a client-go exec credential plugin: the token, fetched by us.

A kubeconfig context may log in through an exec plugin (kubelogin, a cloud CLI, the local fleet's
token service) that prints an ExecCredential with a token and its expiry. kubectl and Helm would
run it themselves; Fanout runs it instead and writes a kubeconfig holding the token into its private
`KubeconfigDir`, so the same rule as for AKS holds for every cluster: a Helm operation starts only
with a token that outlives it (see fanout.adapters.aks).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fanout.adapters.aks import Produced


class ExecCredentialError(RuntimeError):
    """The plugin failed or printed no usable credential; the message never holds the output."""


def _named(items: list[dict[str, Any]], name: str, what: str, path: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item
    raise ExecCredentialError(f"{path}: no {what} named {name!r}")


def load_context(path: str, context: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(context, cluster, user) entries of `context` in the kubeconfig at `path`."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ExecCredentialError(f"{path}: cannot read kubeconfig: {type(err).__name__}") from None
    ctx = _named(config.get("contexts"), context, "context", path)
    spec = ctx.get("context") or {}
    cluster = _named(config.get("clusters"), spec.get("cluster"), "cluster", path)
    user = _named(config.get("users"), spec.get("user"), "user", path)
    return ctx, cluster, user


def uses_exec(path: str, context: str) -> bool:
    return "exec" in (load_context(path, context)[2].get("user") or {})


def run_exec(spec: dict[str, Any], timeout: float = 60) -> tuple[str, float]:
    """(token, expiry as epoch seconds; math.inf if the plugin gives none) from an exec user entry."""
    api_version = spec.get("apiVersion", "client.authentication.k8s.io/v1")
    info = {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
    env["KUBERNETES_EXEC_INFO"] = json.dumps(info)
    argv = [spec["command"], *(spec.get("args") or [])]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ExecCredentialError(f"credential plugin {spec['command']}: {type(err).__name__}") from None
    if done.returncode != 0:
        # stderr is the plugin's own message; stdout might hold a token and is never quoted.
        raise ExecCredentialError(f"credential plugin {spec['command']} failed: {done.stderr.strip()[-300:]}")
    try:
        status = json.loads(done.stdout)["status"]
        token = status["token"]
    except (ValueError, KeyError, TypeError):
        raise ExecCredentialError(f"credential plugin {spec['command']} printed no token") from None
    stamp = status.get("expirationTimestamp")
    expires = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else math.inf
    return token, expires


def exec_kubeconfig(path: str, context: str) -> Produced:
    """A one-context kubeconfig for `context` whose user is the token its exec plugin gives now."""
    ctx, cluster, user = load_context(path, context)
    token, expires = run_exec(user["user"]["exec"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user["name"], "user": {"token": token}}],
        "contexts": [ctx],
        "current-context": context,
    }
    return config, context, expires
