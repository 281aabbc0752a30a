"""Helm 4, called as a subprocess with an argument list (never a shell string).

Values go through a 0600 file in a private temp dir so nothing in them reaches a
command line, `ps` or a log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fanout.cache import cache_dir
from fanout.redact import scrub


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


class HelmError(RuntimeError):
    """A Helm command failed. The message carries the tail of Helm's stderr, scrubbed: it reaches
    logs and the `failure` XCom, and Helm echoes registry URLs, values and server answers."""


def _failed(what: str, stderr: str) -> HelmError:
    # Scrubbed whole before it is cut, so a cut cannot leave half a PEM block unrecognised.
    return HelmError(f"{scrub(what)} failed: {scrub(stderr.strip())[-800:]}")


@dataclass(frozen=True)
class HelmRelease:
    name: str
    namespace: str
    revision: int
    status: str  # deployed, failed, pending-install, pending-upgrade, pending-rollback, superseded, …
    chart: str
    description: str = ""


@contextmanager
def values_file(values: dict[str, Any]) -> Iterator[Path]:
    """A 0600 values file in a private temp dir, gone when the block ends."""
    with tempfile.TemporaryDirectory(prefix="fanout-helm-") as tmp:
        path = Path(tmp) / "values.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(values, f)
        yield path


def render_chart(
    binary: str, release: str, chart: str, namespace: str, values: dict[str, Any], version: str | None = None
) -> str:
    """`helm template`: the manifests `values` make, with no cluster. HelmError says why not."""
    with values_file(values) as path:
        argv = [binary, "template", release, chart, "-n", namespace, "-f", str(path)]
        if version and chart.startswith("oci://"):
            argv += ["--version", version]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise HelmError(scrub(f"helm template {chart} did not finish in 120 s")) from None
    if done.returncode != 0:
        raise _failed(f"helm template {chart}", done.stderr)
    return done.stdout


@dataclass(frozen=True)
class Helm:
    """`credentials(seconds)`, when given, returns a (kubeconfig, context) whose token lasts that long;
    it is asked before every command, so a token never expires in the middle of one."""

    binary: str
    kubeconfig: str
    context: str
    timeout_seconds: int = 300
    credentials: Callable[[float], tuple[str, str]] | None = None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kubeconfig, context = (self.kubeconfig, self.context)
        if self.credentials is not None:
            kubeconfig, context = self.credentials(self.timeout_seconds)
        argv = [self.binary, *args, "--kubeconfig", kubeconfig, "--kube-context", context]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_seconds + 60)
        except subprocess.TimeoutExpired as err:
            raise HelmError(f"helm {args[0]} in {self.context} did not finish in {err.timeout:.0f} s") from None
        if check and done.returncode != 0:
            raise _failed(f"helm {args[0]} in {self.context}", done.stderr)
        return done

    def history(self, release: str, namespace: str) -> list[HelmRelease]:
        """Every stored revision, oldest first; empty if the release does not exist."""
        done = self._run("history", release, "-n", namespace, "-o", "json", "--max", "50", check=False)
        if done.returncode != 0:
            if "not found" in done.stderr:
                return []
            raise _failed(f"helm history in {self.context}", done.stderr)
        return [
            HelmRelease(release, namespace, int(h["revision"]), h["status"], h["chart"], h.get("description", ""))
            for h in json.loads(done.stdout or "[]")
        ]

    def current(self, release: str, namespace: str) -> HelmRelease | None:
        history = self.history(release, namespace)
        return history[-1] if history else None

    def values(self, release: str, namespace: str) -> dict[str, Any]:
        done = self._run("get", "values", release, "-n", namespace, "-o", "json")
        return json.loads(done.stdout or "{}") or {}

    def upgrade_install(
        self,
        release: str,
        chart: str,
        namespace: str,
        values: dict[str, Any],
        *,
        version: str | None = None,
        description: str = "",
        wait: bool = False,
    ) -> HelmRelease:
        with values_file(values) as path:
            # No --create-namespace: a namespace-scoped identity gets 403 on the namespace create even
            # when it exists (Helm 4 ignores only AlreadyExists, helm/helm#32511). The namespace is
            # created once by a cluster admin; `validate` checks it exists (fanout.preflight).
            args = ["upgrade", "--install", release, chart, "-n", namespace]
            args += ["-f", str(path), "--timeout", f"{self.timeout_seconds}s"]
            # The release is the desired state: a field someone edited by hand (drift) is
            # taken back, not refused as a server-side apply conflict.
            args += ["--server-side=true", "--force-conflicts"]
            if version and chart.startswith("oci://"):
                args += ["--version", version]
            if description:
                args += ["--description", description]
            if wait:
                args += ["--wait"]
            self._run(*args)
        current = self.current(release, namespace)
        if current is None:
            raise HelmError(f"helm upgrade in {self.context} reported success but {release} has no history")
        return current

    def rollback(self, release: str, namespace: str, revision: int, *, wait: bool = True) -> HelmRelease:
        args = ["rollback", release, str(revision), "-n", namespace, "--timeout", f"{self.timeout_seconds}s"]
        args += ["--server-side=true", "--force-conflicts"]  # as in upgrade_install: hand edits are taken back
        if wait:
            args.append("--wait")
        self._run(*args)
        current = self.current(release, namespace)
        assert current is not None
        return current

    def uninstall(self, release: str, namespace: str) -> None:
        self._run("uninstall", release, "-n", namespace, "--wait", "--ignore-not-found")
