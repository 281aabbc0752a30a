"""Per-region Kubernetes control planes running as plain local processes.

One shared etcd holds every region; each region gets its own kube-apiserver
(own etcd prefix and port), kube-controller-manager, kube-scheduler and a kwok
controller that plays the kubelet for a couple of fake nodes, so Deployments
really roll out and ``helm --wait`` really waits, without Docker or VMs.

Layout under ``state_dir``::

    etcd/            data/, etcd.json (ports)
    kwok-stages.yaml the Stage objects kwok plays (copied from kwok's module)
    regions/<name>/  pki/, token.csv, admin.kubeconfig, ports.json
    pids/, logs/     one pidfile and one log per process, kept by localfleet.procs:
                     "etcd" and "<region>-<component>", e.g. eastus-kube-apiserver

Every listener is bound to 127.0.0.1. Processes are detached (own session) so
they outlive the Python process that started them; pidfiles let any later
process find, health-check and stop them. Credentials, kubeconfigs and the HTTP
checks live in localfleet.kube_files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from localfleet import kube_files, procs
from localfleet.binaries import Progress, ensure_binaries
from localfleet.kube_files import (
    LOOPBACK,
    KubeError,
    admin_token,
    api,
    apiserver_ready,
    ensure_credentials,
    ensure_nodes,
    etcd_dir,
    etcd_healthy,
    healthz,
    kubeconfig,
    kwok_stages,
    never_ready_stages,
    region_dir,
    schedulable_nodes,
    serving_ca,
    write_private,
    write_token_webhook,
)
from localfleet.kube_files import (
    admin_kubeconfig as admin_kubeconfig,  # public here before kube_files split off
)
from localfleet.procs import free_port

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

# The marker file in a region's directory that makes its kwok leave pods unready.
NEVER_READY = "pods-never-ready"

# kube-apiserver drains in-flight requests on SIGTERM; give it that long before SIGKILL.
_STOP_TIMEOUT = 15.0

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?\Z")


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


# ----------------------------------------------------------------------- processes


def _proc_name(state_dir: Path, region: str | None, component: str) -> str:
    """The localfleet.procs name of a plane process: "etcd" or "<region>-<component>"."""
    name = component if region is None else f"{region}-{component}"
    # Earlier versions kept their own pidfiles (a bare pid in <dir>/<component>.pid).
    # Adopt a process still running from one, so that stopping a fleet started before
    # an upgrade stops it instead of leaving it on its ports.
    legacy = (etcd_dir(state_dir) if region is None else region_dir(state_dir, region)) / f"{component}.pid"
    if legacy.exists():
        with contextlib.suppress(OSError, ValueError):
            procs.adopt(name, int(legacy.read_text()), state_dir, component)
        legacy.unlink(missing_ok=True)
    return name


def _wait(
    what: str,
    check: Callable[[], bool],
    *,
    name: str,
    state_dir: Path,
    timeout: float,
    interval: float = 0.25,
) -> None:
    """Poll `check` until it passes; KubeError quoting `name`'s log if `name` dies or time runs out.

    `name` is the process `check` depends on: once it is gone, waiting longer cannot help.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if not procs.alive(name, state_dir):
            problem = f"{name} exited"
        elif time.monotonic() > deadline:
            problem = f"not ready after {timeout:.0f}s"
        else:
            time.sleep(interval)
            continue
        log = procs.log_path(name, state_dir)
        raise KubeError(f"{what}: {problem}; see {log}:\n{procs.log_tail(name, state_dir)}")


# ------------------------------------------------------------------------- etcd


def etcd_client_port(state_dir: Path) -> int:
    return int(json.loads((etcd_dir(state_dir) / "etcd.json").read_text())["client_port"])


def _etcd_url(state_dir: Path) -> str:
    return f"http://{LOOPBACK}:{etcd_client_port(state_dir)}"


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
    name = _proc_name(state_dir, None, "etcd")
    if procs.pid(name, state_dir) is not None:
        if etcd_healthy(url):
            return url
        procs.stop(name, state_dir, timeout=_STOP_TIMEOUT)
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
    procs.start(name, argv, state_dir, cwd=d)
    (d / "etcd.json").write_text(json.dumps({"client_port": client_port, "peer_port": peer_port}))
    _wait("etcd", lambda: etcd_healthy(url), name=name, state_dir=state_dir, timeout=timeout)
    progress(f"[kube] etcd ready on {url} ({time.monotonic() - start:.1f}s)")
    return url


def stop_etcd(state_dir: Path) -> bool:
    return procs.stop(_proc_name(state_dir, None, "etcd"), state_dir, timeout=_STOP_TIMEOUT)


# ----------------------------------------------------------------------- region


def _ports(region: Region, d: Path) -> dict[str, int]:
    """Every component's port. Free ports are picked once and kept in ports.json, so
    restarts reuse them."""
    ports_file = d / "ports.json"
    ports = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    ports["kube-apiserver"] = region.port
    if region.controller_manager_port:
        ports["kube-controller-manager"] = region.controller_manager_port
    if region.scheduler_port:
        ports["kube-scheduler"] = region.scheduler_port
    for comp in ("kube-controller-manager", "kube-scheduler"):
        ports.setdefault(comp, free_port(LOOPBACK))
    ports_file.write_text(json.dumps(ports, indent=2))
    return ports


def _apiserver_argv(binary: Path, etcd_url: str, d: Path, region: Region) -> list[str]:
    return [
        str(binary),
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
        *_token_webhook_flags(d),
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        # No kubelets to talk to; the endpoint reconciler still publishes
        # the advertise address for the `kubernetes` Service.
        "--endpoint-reconciler-type=lease",
    ]


def _token_webhook_flags(d: Path) -> list[str]:
    webhook = d / "token-webhook.kubeconfig"
    if not webhook.exists():
        return []
    # The API server caches a successful token check for 10 s whatever this says (its fixed
    # TokenSuccessCacheTTL), so a token stays usable at most 10 s past its expiry, as on AKS.
    return [f"--authentication-token-webhook-config-file={webhook}", "--authentication-token-webhook-cache-ttl=10s"]


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
    if not etcd_healthy(etcd_url):
        raise KubeError(f"region {region.name}: etcd at {etcd_url} is not healthy; call start_etcd() first")
    d = region_dir(state_dir, region.name)
    d.mkdir(parents=True, exist_ok=True)
    ensure_credentials(d)
    ports = _ports(region, d)
    stages = kwok_stages(state_dir)
    names = {comp: _proc_name(state_dir, region.name, comp) for comp in COMPONENTS}
    start = time.monotonic()
    started: list[str] = []

    # apiserver first: everything else talks to it.
    comp = "kube-apiserver"
    running = procs.pid(names[comp], state_dir) is not None
    if not running or not apiserver_ready(region.server, d):
        if running:
            procs.stop(names[comp], state_dir, timeout=_STOP_TIMEOUT)
        procs.start(names[comp], _apiserver_argv(binaries[comp], etcd_url, d, region), state_dir, cwd=d)
        started.append(comp)
        _wait(
            f"region {region.name}: kube-apiserver",
            lambda: apiserver_ready(region.server, d),
            name=names[comp],
            state_dir=state_dir,
            timeout=timeout,
            interval=0.5,
        )
    ca = serving_ca(d)
    (d / "pki" / "ca.crt").write_text(ca)
    cfg = kubeconfig([(region.name, region.server, ca, admin_token(d))], region.name)
    write_private(d / "admin.kubeconfig", json.dumps(cfg, indent=2) + "\n")

    # The other three only need the apiserver, so they start together.
    for comp in ("kube-controller-manager", "kube-scheduler"):
        running = procs.pid(names[comp], state_dir) is not None
        if running and healthz(ports[comp]):
            continue
        if running:
            procs.stop(names[comp], state_dir, timeout=_STOP_TIMEOUT)
        argv = _controller_argv(binaries[comp], comp, d, ports[comp], region)
        procs.start(names[comp], argv, state_dir, cwd=d)
        started.append(comp)
    comp = "kwok"
    if procs.pid(names[comp], state_dir) is None:
        argv = [
            str(binaries[comp]),
            f"--kubeconfig={d / 'admin.kubeconfig'}",
            "--manage-all-nodes=true",
            "--node-lease-duration-seconds=40",
            f"--config={never_ready_stages(stages) if (d / NEVER_READY).exists() else stages}",
        ]
        procs.start(names[comp], argv, state_dir, cwd=d)
        started.append(comp)

    ensure_nodes(region.name, region.server, d, nodes)
    for comp in ("kube-controller-manager", "kube-scheduler"):
        if comp in started:
            _wait(
                f"region {region.name}: {comp}",
                lambda port=ports[comp]: healthz(port),
                name=names[comp],
                state_dir=state_dir,
                timeout=timeout,
            )
    _wait(
        f"region {region.name}: {nodes} nodes Ready (kwok)",
        lambda: schedulable_nodes(region.server, d)[0] >= nodes,
        name=names["kwok"],
        state_dir=state_dir,
        timeout=timeout,
    )
    # Pods are refused until the controller manager created the namespace's
    # default service account; waiting here spares every caller a retry.
    _wait(
        f"region {region.name}: default service account",
        lambda: api(region.server, d, "/api/v1/namespaces/default/serviceaccounts/default", timeout=3)[0] == 200,
        name=names["kube-controller-manager"],
        state_dir=state_dir,
        timeout=timeout,
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
    return [
        c for c in reversed(COMPONENTS) if procs.stop(_proc_name(state_dir, name, c), state_dir, timeout=_STOP_TIMEOUT)
    ]


def stop_all(state_dir: Path) -> None:
    """Stop every region found under state_dir, then etcd."""
    for name in _region_names(state_dir):
        stop_region(name, state_dir)
    stop_etcd(state_dir)


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
    procs.stop(_proc_name(state_dir, region.name, "kwok"), state_dir, timeout=_STOP_TIMEOUT)
    # The old kwok's node leases would keep the new one off the nodes until they expire
    # (40 s); without them it takes the nodes over at once.
    api(region.server, d, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", method="DELETE", timeout=5)
    start_region(region, state_dir, progress=progress)


def region_health(region: Region, state_dir: Path) -> RegionHealth:
    """Is the apiserver ready, and how many nodes are Ready and schedulable?"""
    d = region_dir(state_dir, region.name)
    try:
        if not apiserver_ready(region.server, d):
            return RegionHealth(region.name, False, 0, 0, f"{region.server}/readyz not ok")
        ready, total = schedulable_nodes(region.server, d)
        return RegionHealth(region.name, True, ready, total)
    except OSError as exc:
        return RegionHealth(region.name, False, 0, 0, str(exc))


def grant_namespace(
    region: Region, state_dir: Path, namespace: str, user: str, rules: list[tuple[str, str, tuple[str, ...]]]
) -> None:
    """Create `namespace` in the region and bind `user` to a Role with `rules` there (as the admin)."""
    kube_files.grant_namespace(region.server, region_dir(state_dir, region.name), namespace, user, rules)


def _region_names(state_dir: Path) -> list[str]:
    regions = Path(state_dir) / "regions"
    return sorted(p.name for p in regions.iterdir() if p.is_dir()) if regions.is_dir() else []


def region_pids(state_dir: Path, name: str) -> dict[str, int]:
    """Live pids of a region's processes, by component."""
    found = {c: procs.pid(_proc_name(state_dir, name, c), state_dir) for c in COMPONENTS}
    return {c: pid for c, pid in found.items() if pid is not None}


def all_pids(state_dir: Path) -> dict[str, int]:
    """Every live process of the plane, keyed "etcd" or "<region>/<component>"."""
    out: dict[str, int] = {}
    if (pid := procs.pid(_proc_name(state_dir, None, "etcd"), state_dir)) is not None:
        out["etcd"] = pid
    for name in _region_names(state_dir):
        out.update({f"{name}/{c}": p for c, p in region_pids(state_dir, name).items()})
    return out


def write_kubeconfig(regions: Iterable[Region], state_dir: Path, path: Path) -> Path:
    """Write one kubeconfig with a context per region (context name = region name).

    JSON is valid YAML, and kubectl, helm and the Python client all read it.
    """
    entries = []
    for r in regions:
        d = region_dir(state_dir, r.name)
        entries.append((r.name, r.server, serving_ca(d), admin_token(d)))
    if not entries:
        raise ValueError("no regions")
    write_private(Path(path), json.dumps(kubeconfig(entries, entries[0][0]), indent=2) + "\n")
    return Path(path)


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
    token_webhook: str | None = None,
) -> Path:
    """etcd, then every region one at a time, then the merged admin kubeconfig. `token_webhook`
    (a localfleet.tokens URL) makes each apiserver accept that service's short-lived tokens."""
    binaries = ensure_binaries(progress)
    if token_webhook:
        for region in regions:
            write_token_webhook(region_dir(state_dir, region.name), token_webhook)
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
    except (KubeError, procs.ProcError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
