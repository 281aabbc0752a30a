"""Per-region Kubernetes control planes running as plain local processes.

One shared etcd holds every region; each region gets its own kube-apiserver
(own etcd prefix and port), kube-controller-manager, kube-scheduler and a kwok
controller that plays the kubelet for a couple of fake nodes, so Deployments
really roll out and ``helm --wait`` really waits, without Docker or VMs.

Layout under ``state_dir``::

    etcd/            data/, etcd.pid, etcd.log, etcd.json (ports)
    kwok-stages.yaml the Stage objects kwok plays (copied from kwok's module)
    regions/<name>/  pki/, token.csv, admin.kubeconfig, ports.json,
                     <component>.pid and <component>.log per process

Every listener is bound to 127.0.0.1. Processes are detached (own session) so
they outlive the Python process that started them; pidfiles let any later
process find, health-check and stop them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from localfleet.binaries import KUBERNETES_VERSION, KWOK_VERSION, Progress, ensure_binaries

LOOPBACK = "127.0.0.1"
# kube-apiserver refuses a loopback advertise address, and this machine's own
# network is 192.0.2.0/24 (TEST-NET-1), so that range is not safe to borrow.
# 198.51.100.0/24 is TEST-NET-2 (RFC 5737): documentation-only, never routed.
# It only ends up in the `kubernetes` Service endpoints, which nothing here
# dials (kwok pods run no code), and in the serving cert's SANs.
ADVERTISE_ADDRESS = "198.51.100.1"
SERVICE_CIDR = "10.96.0.0/16"

DEFAULT_ETCD_CLIENT_PORT = 2379
DEFAULT_ETCD_PEER_PORT = 2380

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

# The kwok stages we play: nodes become Ready and keep a lease, pods become
# Ready, Job pods complete, deleted pods go away.
_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


class KubeError(RuntimeError):
    """A control-plane process failed to start or become ready."""


@dataclass(frozen=True)
class Region:
    """One region's control plane.

    Only ``port`` (the apiserver's) is required. Controller-manager and
    scheduler ports default to free ports picked at first start and kept in the
    region's ports.json so restarts reuse them.
    """

    name: str
    port: int
    controller_manager_port: int | None = None
    scheduler_port: int | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"region name {self.name!r}: use lowercase letters, digits and '-' (max 32)")

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def etcd_prefix(self) -> str:
        # The fixed "/registry" suffix keeps key spaces disjoint even when one
        # region name is a prefix of another ("east" vs "eastus").
        return f"/regions/{self.name}/registry"


@dataclass(frozen=True)
class RegionHealth:
    name: str
    apiserver_ready: bool
    nodes_ready: int
    nodes_total: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.apiserver_ready and self.nodes_total > 0 and self.nodes_ready == self.nodes_total


# --------------------------------------------------------------------------- paths


def region_dir(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "regions" / name


def etcd_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "etcd"


def admin_kubeconfig(state_dir: Path, name: str) -> Path:
    return region_dir(state_dir, name) / "admin.kubeconfig"


# ----------------------------------------------------------------------- processes


def _pidfile(d: Path, component: str) -> Path:
    return d / f"{component}.pid"


def _logfile(d: Path, component: str) -> Path:
    return d / f"{component}.log"


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int, binary: Path | None = None) -> bool:
    """Is pid running (not a zombie) and, if given, running `binary`?

    The binary check guards against pid reuse: a stale pidfile must never make
    us adopt, or kill, an unrelated process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        # Our own child that exited but was not reaped yet. A blocking wait:
        # a multi-threaded leader shows "Z" while its other threads are still
        # exiting, and WNOHANG would leave that zombie behind for good.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return False
    return binary is None or (bool(cmdline) and cmdline[0].decode(errors="replace") == str(binary))


def _running_pid(d: Path, component: str, binary: Path | None = None) -> int | None:
    pid = _read_pid(_pidfile(d, component))
    if pid is not None and _alive(pid, binary):
        return pid
    return None


def _spawn(d: Path, component: str, argv: list[str]) -> int:
    log = _logfile(d, component)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        # start_new_session: the process outlives us and does not get our
        # terminal's signals; its pid is also its process-group id.
        proc = subprocess.Popen(
            argv,
            cwd=d,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _pidfile(d, component).write_text(f"{proc.pid}\n")
    # Let the Popen object go without a warning; _alive() reaps the zombie if
    # the process dies while we are still running.
    proc.returncode = 0
    return proc.pid


def _stop(d: Path, component: str, timeout: float = 15.0) -> bool:
    """Stop one process by its pidfile; True if something was stopped."""
    pidfile = _pidfile(d, component)
    pid = _read_pid(pidfile)
    if pid is None:
        return False
    cmdline = _cmdline(pid)
    stopped = False
    # Only signal the pid if it still runs the binary we started.
    if cmdline and Path(cmdline[0]).name == component and _alive(pid):
        stopped = True
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return stopped


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    pid: int | None,
    log: Path,
    interval: float = 0.25,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if pid is not None and not _alive(pid):
            raise KubeError(f"{what}: process {pid} exited; see {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise KubeError(f"{what}: not ready after {timeout:.0f}s; see {log}:\n{_tail(log)}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- http


def _insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _http(
    url: str,
    *,
    token: str | None = None,
    ca: str | None = None,
    method: str = "GET",
    body: dict | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """(status, body); status 0 means the server could not be reached."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    # Proxies are bypassed on purpose: every target is on loopback.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cadata=ca) if ca else _insecure_ctx()
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


# ------------------------------------------------------------------------- etcd


def etcd_client_port(state_dir: Path) -> int:
    return int(json.loads((etcd_dir(state_dir) / "etcd.json").read_text())["client_port"])


def _etcd_url(state_dir: Path) -> str:
    return f"http://{LOOPBACK}:{etcd_client_port(state_dir)}"


def _etcd_healthy(url: str) -> bool:
    status, body = _http(f"{url}/health", timeout=2)
    if status != 200:
        return False
    try:
        return json.loads(body).get("health") == "true"
    except ValueError:
        return False


def start_etcd(
    state_dir: Path,
    client_port: int = DEFAULT_ETCD_CLIENT_PORT,
    peer_port: int = DEFAULT_ETCD_PEER_PORT,
    *,
    binaries: dict[str, Path] | None = None,
    timeout: float = 60.0,
    progress: Progress = print,
) -> str:
    """Start (or adopt) the shared etcd; returns its client URL."""
    binaries = binaries or ensure_binaries(progress)
    d = etcd_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    url = f"http://{LOOPBACK}:{client_port}"
    pid = _running_pid(d, "etcd", binaries["etcd"])
    if pid is not None and _etcd_healthy(url):
        return url
    if pid is not None:
        _stop(d, "etcd")
    peer = f"http://{LOOPBACK}:{peer_port}"
    argv = [
        str(binaries["etcd"]),
        "--name=fanout",
        f"--data-dir={d / 'data'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=fanout={peer}",
        "--initial-cluster-state=new",
        # Test data: losing the last writes on a crash is fine, and fsync on a
        # loaded VM makes every apiserver write slow.
        "--unsafe-no-fsync",
        "--log-level=warn",
        # Several apiservers write here; 8 GiB keeps the default 2 GiB quota
        # from turning into a surprise "database space exceeded".
        "--quota-backend-bytes=8589934592",
    ]
    start = time.monotonic()
    pid = _spawn(d, "etcd", argv)
    (d / "etcd.json").write_text(json.dumps({"client_port": client_port, "peer_port": peer_port}))
    _wait("etcd", lambda: _etcd_healthy(url), timeout=timeout, pid=pid, log=_logfile(d, "etcd"))
    progress(f"[kube] etcd ready on {url} ({time.monotonic() - start:.1f}s)")
    return url


def stop_etcd(state_dir: Path) -> bool:
    return _stop(etcd_dir(state_dir), "etcd")


# ------------------------------------------------------------------------ files


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KubeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _prepare_region_files(region: Region, d: Path) -> dict[str, int]:
    (d / "pki").mkdir(parents=True, exist_ok=True)
    sa_key = d / "pki" / "sa.key"
    if not sa_key.exists():
        # One RSA key signs service-account tokens (apiserver, controller
        # manager) and verifies them (apiserver).
        tmp = sa_key.with_suffix(".tmp")
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(tmp))
        tmp.rename(sa_key)
    tokens = d / "token.csv"
    if not tokens.exists():
        tokens.write_text(f"{secrets.token_hex(24)},admin,admin,system:masters\n")
        tokens.chmod(0o600)
    ports_file = d / "ports.json"
    ports = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    ports["kube-apiserver"] = region.port
    if region.controller_manager_port:
        ports["kube-controller-manager"] = region.controller_manager_port
    if region.scheduler_port:
        ports["kube-scheduler"] = region.scheduler_port
    for comp in ("kube-controller-manager", "kube-scheduler"):
        ports.setdefault(comp, free_port())
    ports_file.write_text(json.dumps(ports, indent=2))
    return ports


def _admin_token(d: Path) -> str:
    return (d / "token.csv").read_text().split(",", 1)[0]


def _serving_ca(d: Path) -> str:
    # kube-apiserver writes its self-signed cert followed by the CA that
    # signed it; clients must trust the CA, not the leaf.
    pem = (d / "pki" / "apiserver.crt").read_text()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", pem, re.S)
    if not blocks:
        raise KubeError(f"no certificate in {d / 'pki' / 'apiserver.crt'}")
    return blocks[-1]


def _kubeconfig(entries: list[tuple[str, str, str, str]], current: str) -> dict:
    """entries: (context name, server, CA PEM, token)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.encode()).decode(),
                },
            }
            for name, server, ca, _ in entries
        ],
        "users": [{"name": f"{name}-admin", "user": {"token": token}} for name, _, _, token in entries],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": f"{name}-admin", "namespace": "default"}}
            for name, *_ in entries
        ],
        "current-context": current,
    }


def _write_private(path: Path, content: str) -> None:
    # Kubeconfigs carry admin tokens: never world-readable, never half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    tmp.replace(path)


def _region_entry(state_dir: Path, region: Region) -> tuple[str, str, str, str]:
    d = region_dir(state_dir, region.name)
    return region.name, region.server, _serving_ca(d), _admin_token(d)


def write_kubeconfig(regions: Iterable[Region], state_dir: Path, path: Path) -> Path:
    """Write one kubeconfig with a context per region (context name = region name).

    JSON is valid YAML, and kubectl, helm and the Python client all read it.
    """
    entries = [_region_entry(state_dir, r) for r in regions]
    if not entries:
        raise ValueError("no regions")
    _write_private(Path(path), json.dumps(_kubeconfig(entries, entries[0][0]), indent=2) + "\n")
    return Path(path)


def kwok_stages(state_dir: Path) -> Path:
    """Write kwok's Stage objects, copied from kwok's module in the Go module cache."""
    target = Path(state_dir) / "kwok-stages.yaml"
    if target.exists():
        return target
    env = dict(os.environ, GOFLAGS="", GOWORK="off", GOTOOLCHAIN="local")
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{KWOK_VERSION}"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    try:
        module_dir = Path(json.loads(proc.stdout)["Dir"])
    except (ValueError, KeyError) as exc:
        raise KubeError(f"cannot locate kwok {KWOK_VERSION} in the Go module cache: {proc.stderr.strip()}") from exc
    docs = [(module_dir / f).read_text().strip() for f in _STAGE_FILES]
    _write_private(target, "\n---\n".join(docs) + "\n")
    return target


# ----------------------------------------------------------------------- region


def _apiserver_ready(region: Region, d: Path) -> bool:
    try:
        ca = _serving_ca(d)
    except (OSError, KubeError):
        return False
    status, body = _http(f"{region.server}/readyz", token=_admin_token(d), ca=ca, timeout=3)
    return status == 200 and body.strip() == b"ok"


def _healthz(port: int) -> bool:
    status, body = _http(f"https://{LOOPBACK}:{port}/healthz", timeout=2)
    return status == 200 and body.strip() == b"ok"


def _api(region: Region, d: Path, path: str, **kw: object) -> tuple[int, dict]:
    status, body = _http(f"{region.server}{path}", token=_admin_token(d), ca=_serving_ca(d), **kw)  # type: ignore[arg-type]
    try:
        return status, json.loads(body) if body else {}
    except ValueError:
        return status, {}


def _node_schedulable(node: dict) -> bool:
    conds = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions", [])}
    taints = node.get("spec", {}).get("taints") or []
    return conds.get("Ready") == "True" and not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints)


def _node_manifest(region: Region, name: str) -> dict:
    resources = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok only plays nodes it is told are fake; no kwok taint, so
            # ordinary charts schedule here without tolerations.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/region": region.name,
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {"kubeletVersion": KUBERNETES_VERSION, "operatingSystem": "linux", "architecture": "amd64"},
        },
    }


def _ensure_nodes(region: Region, d: Path, count: int) -> None:
    for i in range(count):
        name = f"{region.name}-node-{i}"
        status, body = _api(region, d, "/api/v1/nodes", method="POST", body=_node_manifest(region, name))
        if status not in (201, 409):
            raise KubeError(f"region {region.name}: creating node {name} failed ({status}): {body}")


def _schedulable_nodes(region: Region, d: Path) -> tuple[int, int]:
    status, body = _api(region, d, "/api/v1/nodes", timeout=3)
    if status != 200:
        return 0, 0
    items = body.get("items", [])
    return sum(_node_schedulable(n) for n in items), len(items)


def _controller_argv(binary: Path, component: str, d: Path, port: int, region: Region) -> list[str]:
    argv = [
        str(binary),
        f"--kubeconfig={d / 'admin.kubeconfig'}",
        # One instance per region: leader election would only add lease
        # writes and a start-up delay.
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        f"--cert-dir={d / 'pki' / component}",
    ]
    if component == "kube-controller-manager":
        argv += [
            f"--cluster-name={region.name}",
            f"--service-account-private-key-file={d / 'pki' / 'sa.key'}",
            f"--root-ca-file={d / 'pki' / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=false",
        ]
    return argv


def start_region(
    region: Region,
    state_dir: Path,
    *,
    etcd_url: str | None = None,
    binaries: dict[str, Path] | None = None,
    nodes: int = 2,
    timeout: float = 120.0,
    progress: Progress = print,
) -> Path:
    """Start (or adopt) one region's control plane; returns its admin kubeconfig.

    Idempotent: a component whose pidfile points at a live, healthy process is
    left alone. Returns once the apiserver is ready, the default service
    account exists and ``nodes`` fake nodes are Ready and schedulable.
    """
    binaries = binaries or ensure_binaries(progress)
    state_dir = Path(state_dir)
    etcd_url = etcd_url or _etcd_url(state_dir)
    # Without etcd the apiserver would only retry until our timeout; say so now.
    if not _etcd_healthy(etcd_url):
        raise KubeError(f"region {region.name}: etcd at {etcd_url} is not healthy; call start_etcd() first")
    d = region_dir(state_dir, region.name)
    d.mkdir(parents=True, exist_ok=True)
    ports = _prepare_region_files(region, d)
    stages = kwok_stages(state_dir)
    start = time.monotonic()
    started: list[str] = []

    # apiserver first: everything else talks to it.
    comp = "kube-apiserver"
    pid = _running_pid(d, comp, binaries[comp])
    if pid is None or not _apiserver_ready(region, d):
        if pid is not None:
            _stop(d, comp)
        argv = [
            str(binaries[comp]),
            f"--etcd-servers={etcd_url}",
            f"--etcd-prefix={region.etcd_prefix}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={region.port}",
            f"--advertise-address={ADVERTISE_ADDRESS}",
            # Otherwise generated URLs (OIDC discovery's jwks_uri) name the
            # advertise address, which nothing can reach.
            f"--external-hostname={LOOPBACK}",
            f"--cert-dir={d / 'pki'}",
            f"--service-account-issuer=https://kubernetes.default.svc.cluster.local/{region.name}",
            f"--service-account-key-file={d / 'pki' / 'sa.key'}",
            f"--service-account-signing-key-file={d / 'pki' / 'sa.key'}",
            f"--token-auth-file={d / 'token.csv'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            # No kubelets to talk to; the endpoint reconciler still publishes
            # the advertise address for the `kubernetes` Service.
            "--endpoint-reconciler-type=lease",
        ]
        pid = _spawn(d, comp, argv)
        started.append(comp)
        _wait(
            f"region {region.name}: kube-apiserver",
            lambda: _apiserver_ready(region, d),
            timeout=timeout,
            pid=pid,
            log=_logfile(d, comp),
            interval=0.5,
        )
    ca = _serving_ca(d)
    (d / "pki" / "ca.crt").write_text(ca)
    cfg = _kubeconfig([(region.name, region.server, ca, _admin_token(d))], region.name)
    _write_private(d / "admin.kubeconfig", json.dumps(cfg, indent=2) + "\n")

    # The other three only need the apiserver, so they start together.
    pids: dict[str, int] = {}
    for comp in ("kube-controller-manager", "kube-scheduler"):
        port = ports[comp]
        pid = _running_pid(d, comp, binaries[comp])
        if pid is not None and _healthz(port):
            continue
        if pid is not None:
            _stop(d, comp)
        pids[comp] = _spawn(d, comp, _controller_argv(binaries[comp], comp, d, port, region))
        started.append(comp)
    comp = "kwok"
    if _running_pid(d, comp, binaries[comp]) is None:
        argv = [
            str(binaries[comp]),
            f"--kubeconfig={d / 'admin.kubeconfig'}",
            "--manage-all-nodes=true",
            "--node-lease-duration-seconds=40",
            f"--config={_never_ready_stages(stages) if (d / NEVER_READY).exists() else stages}",
        ]
        pids[comp] = _spawn(d, comp, argv)
        started.append(comp)

    _ensure_nodes(region, d, nodes)
    for comp, pid in pids.items():
        if comp == "kwok":
            continue
        port = ports[comp]
        _wait(
            f"region {region.name}: {comp}",
            lambda port=port: _healthz(port),
            timeout=timeout,
            pid=pid,
            log=_logfile(d, comp),
        )
    _wait(
        f"region {region.name}: {nodes} nodes Ready (kwok)",
        lambda: _schedulable_nodes(region, d)[0] >= nodes,
        timeout=timeout,
        pid=pids.get("kwok"),
        log=_logfile(d, "kwok"),
    )
    # Pods are refused until the controller manager created the namespace's
    # default service account; waiting here spares every caller a retry.
    _wait(
        f"region {region.name}: default service account",
        lambda: _api(region, d, "/api/v1/namespaces/default/serviceaccounts/default", timeout=3)[0] == 200,
        timeout=timeout,
        pid=pids.get("kube-controller-manager"),
        log=_logfile(d, "kube-controller-manager"),
    )
    what = f"started {', '.join(started)}" if started else "already running"
    progress(f"[kube] region {region.name} ready on {region.server}: {what} ({time.monotonic() - start:.1f}s)")
    return d / "admin.kubeconfig"


def stop_region(name: str | Region, state_dir: Path) -> list[str]:
    """Stop a region's processes (the "region down" fault); etcd data stays.

    Returns the components that were running. Reverse start order, so the
    controllers do not spend their last seconds logging a vanished apiserver.
    """
    name = name.name if isinstance(name, Region) else name
    d = region_dir(state_dir, name)
    return [c for c in reversed(COMPONENTS) if _stop(d, c)]


def stop_all(state_dir: Path) -> None:
    """Stop every region found under state_dir, then etcd."""
    regions = Path(state_dir) / "regions"
    if regions.is_dir():
        for d in sorted(p for p in regions.iterdir() if p.is_dir()):
            stop_region(d.name, state_dir)
    stop_etcd(state_dir)


NEVER_READY = "pods-never-ready"


def _never_ready_stages(stages: Path) -> Path:
    """The stages without pod-ready: new pods are scheduled but never become Ready."""
    target = stages.with_name("kwok-stages-never-ready.yaml")
    docs = stages.read_text().split("\n---\n")
    kept = [doc for doc in docs if not re.search(r"^  name: pod-ready$", doc, re.MULTILINE)]
    if len(kept) != len(docs) - 1:
        raise KubeError(f"{stages}: expected exactly one pod-ready stage")
    _write_private(target, "\n---\n".join(kept) + "\n")
    return target


def set_pods_ready(region: Region, state_dir: Path, ready: bool, progress: Progress = print) -> None:
    """The "rollout never healthy" fault: restart the region's kwok without (or with) pod-ready.

    Pods that are Ready stay Ready; pods created meanwhile never become Ready, so a
    rollout hangs exactly as one whose new image fails its readiness probe.
    """
    d = region_dir(state_dir, region.name)
    marker = d / NEVER_READY
    if ready == (not marker.exists()):
        return
    if ready:
        marker.unlink()
    else:
        marker.touch()
    _stop(d, "kwok")
    # The old kwok's node leases would keep the new one off the nodes until they expire
    # (40 s); without them it takes the nodes over at once.
    _api(region, d, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", method="DELETE", timeout=5)
    start_region(region, state_dir, progress=progress)


def region_health(region: Region, state_dir: Path) -> RegionHealth:
    """Is the apiserver ready, and how many nodes are Ready and schedulable?"""
    d = region_dir(state_dir, region.name)
    try:
        if not _apiserver_ready(region, d):
            return RegionHealth(region.name, False, 0, 0, f"{region.server}/readyz not ok")
        ready, total = _schedulable_nodes(region, d)
        return RegionHealth(region.name, True, ready, total)
    except OSError as exc:
        return RegionHealth(region.name, False, 0, 0, str(exc))


def region_pids(state_dir: Path, name: str) -> dict[str, int]:
    """Live pids of a region's processes, by component."""
    d = region_dir(state_dir, name)
    return {c: pid for c in COMPONENTS if (pid := _running_pid(d, c)) is not None}


def all_pids(state_dir: Path) -> dict[str, int]:
    """Every live process of the plane, keyed "etcd" or "<region>/<component>"."""
    out: dict[str, int] = {}
    if (pid := _running_pid(etcd_dir(state_dir), "etcd")) is not None:
        out["etcd"] = pid
    regions = Path(state_dir) / "regions"
    if regions.is_dir():
        for d in sorted(p for p in regions.iterdir() if p.is_dir()):
            out.update({f"{d.name}/{c}": p for c, p in region_pids(state_dir, d.name).items()})
    return out


def start_fleet(
    regions: list[Region],
    state_dir: Path,
    kubeconfig: Path,
    *,
    etcd_client_port: int = DEFAULT_ETCD_CLIENT_PORT,
    etcd_peer_port: int = DEFAULT_ETCD_PEER_PORT,
    nodes: int = 2,
    timeout: float = 120.0,
    progress: Progress = print,
) -> Path:
    """etcd, then every region one at a time, then the merged kubeconfig."""
    binaries = ensure_binaries(progress)
    url = start_etcd(state_dir, etcd_client_port, etcd_peer_port, binaries=binaries, progress=progress)
    # One at a time: an apiserver burns 10–30 s of CPU while starting, and
    # several at once on two cores only makes each one slower.
    for region in regions:
        start_region(
            region, state_dir, etcd_url=url, binaries=binaries, nodes=nodes, timeout=timeout, progress=progress
        )
    return write_kubeconfig(regions, state_dir, kubeconfig)


# -------------------------------------------------------------------------- cli


def _parse_region(spec: str) -> Region:
    name, _, port = spec.partition(":")
    return Region(name, int(port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.kube", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "stop-region"))
    parser.add_argument("--state", type=Path, required=True, help="state directory")
    parser.add_argument("--kubeconfig", type=Path, help="merged kubeconfig to write (up)")
    parser.add_argument("--region", action="append", default=[], metavar="NAME:PORT", type=_parse_region)
    parser.add_argument("--etcd-port", type=int, default=DEFAULT_ETCD_CLIENT_PORT)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            start = time.monotonic()
            kubeconfig = args.kubeconfig or args.state / "kubeconfig"
            start_fleet(
                args.region, args.state, kubeconfig, etcd_client_port=args.etcd_port, etcd_peer_port=args.etcd_port + 1
            )
            print(f"[kube] {len(args.region)} regions up in {time.monotonic() - start:.1f}s; kubeconfig {kubeconfig}")
        elif args.command == "down":
            stop_all(args.state)
        elif args.command == "stop-region":
            for r in args.region:
                print(f"{r.name}: stopped {', '.join(stop_region(r, args.state)) or 'nothing'}")
        else:
            for r in args.region:
                print(region_health(r, args.state))
            for key, pid in all_pids(args.state).items():
                print(f"{key:40} {pid}")
    except KubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
