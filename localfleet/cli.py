"""`python -m localfleet`: bring the embedded fleet up, show it, break it, take it down.

Everything it starts is a local process with a pidfile under the fleet file's own state
directory (`$FANOUT_CACHE/localfleet/<file>-<hash of its path>`, FANOUT_CACHE defaulting to
~/.cache/fanout), so `down` stops exactly what `up` started and nothing else, and no state of
one fleet file (registry data, replication record, fault knobs) carries over to another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fanout.cache import cache_dir
from fanout.fleet import Fleet, FleetError, load_fleet
from fanout.preflight import RELEASE_PERMISSIONS
from localfleet import edge, faults, kube, procs, registry, replicator, tokens
from localfleet.binaries import ensure_binaries
from localfleet.git import repo as git_repo
from localfleet.kube_files import admin_kubeconfig_beside, region_dir, serving_ca, write_private
from localfleet.kube_files import kubeconfig as kubeconfig_dict
from localfleet.metrics import prometheus
from localfleet.traffic import users

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLEET = REPO / "include" / "fleets" / "local.yaml"
TM_PROC = "trafficmanager"
FLEET_MARKER = "fleet-file"  # in a state folder: the fleet file it belongs to
Progress = Callable[[str], None]


def state_dir(fleet: Fleet, cache: Path | None = None) -> Path:
    """Where `fleet`'s processes, data and fault knobs live: one folder per fleet file, so that no
    registry data, replication record or knob of one fleet ever applies to another."""
    path = Path(fleet.source_path or DEFAULT_FLEET).resolve()
    key = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return (cache or cache_dir()) / "localfleet" / f"{path.stem}-{key}"


def other_fleet_up(state: Path) -> str | None:
    """What to stop first when another local fleet still runs beside `state`: two local fleets
    would fight over the default etcd ports, so only one runs at a time."""
    for folder in state.parent.iterdir() if state.parent.is_dir() else ():
        if folder != state and folder.is_dir() and procs.pids_mentioning(folder):
            marker = folder / FLEET_MARKER
            if marker.is_file():
                other = marker.read_text().strip()
                return f"the local fleet of {other} is up: `make fleet-down FLEET={other}` first"
            # Before fleets had a folder each, one fleet's state filled the parent folder itself.
            return f"a local fleet started by an older Fanout is up (state in {state.parent}): stop its pids first"
    return None


def _regions(fleet: Fleet) -> list[kube.Region]:
    return [kube.Region(r.name, r.local.apiserver_port) for r in fleet.regions if r.local]


def _kregion(fleet: Fleet, name: str) -> kube.Region:
    return next(r for r in _regions(fleet) if r.name == name)


def kubeconfig_path(fleet: Fleet) -> Path:
    access = fleet.regions[0].cluster.kubeconfig
    if access is None:
        raise FleetError(["regions[0].cluster: the local fleet reaches its clusters through a kubeconfig"])
    return fleet.resolve(access.path)


def admin_kubeconfig_path(fleet: Fleet) -> Path:
    """The fleet's own admin kubeconfig (setup, faults, tests' independent reads); Fanout never uses it."""
    return admin_kubeconfig_beside(kubeconfig_path(fleet))


def _token_url(state: Path) -> str:
    """The token service's URL; its port is picked once and kept, as the kubeconfigs name it."""
    saved = tokens.token_dir(state) / "port"
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(str(procs.free_port()))
    return f"http://127.0.0.1:{int(saved.read_text())}"


def write_fanout_kubeconfig(fleet: Fleet, state: Path, url: str) -> Path:
    """The kubeconfig the fleet file names: one context per region, whose user is Fanout's
    namespace-bound identity with an exec plugin fetching short-lived tokens — no admin token."""
    regions = _regions(fleet)
    entries = [(r.name, r.server, serving_ca(region_dir(state, r.name)), "") for r in regions]
    cfg = kubeconfig_dict(entries, regions[0].name)
    user = tokens.exec_user(url, state, f"{REPO / 'plugins'}:{REPO}")
    cfg["users"] = [{"name": "fanout", "user": user}]
    for context in cfg["contexts"]:
        context["context"].update(user="fanout", namespace=fleet.app.namespace)
    path = kubeconfig_path(fleet)
    write_private(path, json.dumps(cfg, indent=2) + "\n")
    return path


def _check_local(fleet: Fleet) -> None:
    if fleet.traffic_manager.kind != "local" or fleet.registry.kind != "oci":
        raise FleetError([f"{fleet.source_path}: not a local fleet (traffic_manager.kind local, registry.kind oci)"])


def start_traffic_manager(fleet: Fleet, state: Path) -> int:
    host, port = procs.split_hostport(fleet.traffic_manager.base_url.split("://", 1)[1].rstrip("/"))
    argv = [sys.executable, "-m", "localfleet.trafficmanager", "--fleet", str(fleet.source_path)]
    argv += ["--state-dir", str(state)]
    env = {"PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    return procs.start(TM_PROC, argv, state, env=env, cwd=REPO, ready=lambda: procs.port_open(host, port), timeout=20)


def up(
    fleet: Fleet, state: Path | None = None, progress: Progress = print, etcd_ports: tuple[int, int] | None = None
) -> None:
    """Start every part of the fleet that is not running. Safe to run again."""
    _check_local(fleet)
    if state is None:
        state = state_dir(fleet)
        if other := other_fleet_up(state):
            raise FleetError([other])
    state.mkdir(parents=True, exist_ok=True)
    (state / FLEET_MARKER).write_text(f"{fleet.source_path}\n")
    started = time.monotonic()

    def step(what: str) -> None:
        progress(f"[{time.monotonic() - started:5.1f}s] {what}")

    wants_prometheus = prometheus.listen_address(fleet) is not None
    registry.ensure_debian_packages(["docker-registry", "skopeo", "buildah", "git"] + ["prometheus"] * wants_prometheus)
    ensure_binaries(progress)
    url = _token_url(state)
    tokens.start(state, int(url.rsplit(":", 1)[1]), fleet.local.token_lifetime_seconds, f"{REPO / 'plugins'}:{REPO}")
    step(f"token service up at {url} (tokens live {fleet.local.token_lifetime_seconds} s)")
    step("control planes: etcd, then one region at a time")
    ports = dict(zip(("etcd_client_port", "etcd_peer_port"), etcd_ports, strict=True)) if etcd_ports else {}
    kube.start_fleet(
        _regions(fleet), state, admin_kubeconfig_path(fleet), progress=progress, token_webhook=url, **ports
    )
    # What a cluster admin does once per cluster; Fanout itself may not create namespaces.
    for region in _regions(fleet):
        kube.grant_namespace(region, state, fleet.app.namespace, tokens.USERNAME, list(RELEASE_PERMISSIONS))
    write_fanout_kubeconfig(fleet, state, url)
    step(f"namespace {fleet.app.namespace} and Fanout's Role in every region")
    for region in fleet.region_names:
        registry.start_registry(fleet, region, state)
    step(f"registries up: {', '.join(fleet.registry.endpoint(r) for r in fleet.region_names)}")
    replicator.start_replicator(fleet, state)
    for region in fleet.region_names:
        edge.start_edge(fleet, region, state)
    step("replicator and edges up")
    if wants_prometheus:
        prometheus.start(fleet, state)
        step(f"Prometheus up at {prometheus.url_of(fleet)}, scraping every edge each {prometheus.SCRAPE_SECONDS} s")
    start_traffic_manager(fleet, state)
    dns = f"; DNS name {fleet.traffic_manager.profile}.trafficmanager.net on port {fleet.traffic_manager.dns_port}"
    step(
        f"Traffic Manager stand-in up at {fleet.traffic_manager.base_url}"
        + (dns if fleet.traffic_manager.dns_port else "")
    )
    if source := git_repo.local_source(fleet):
        git_repo.start_server(fleet, state)
        step(f"git server up: {source.url} (main at {git_repo.branch_tip(source.url, 'main')})")
    step(f"fleet up; kubeconfig {kubeconfig_path(fleet)} has contexts {', '.join(fleet.region_names)}")


def down(fleet: Fleet, state: Path | None = None, progress: Progress = print) -> None:
    """Stop every process `up` started, by pid; data stays for the next `up`."""
    state = state or state_dir(fleet)
    users.stop(state)
    prometheus.stop(state)
    procs.stop(TM_PROC, state)
    git_repo.stop_server(state)
    for region in fleet.region_names:
        edge.stop_edge(fleet, region, state)
        registry.stop_registry(fleet, region, state)
    replicator.stop_replicator(state)
    kube.stop_all(state)
    tokens.stop(state)
    left = kube.all_pids(state)
    progress("fleet down" + (f"; still running: {left}" if left else ""))


def region_down(fleet: Fleet, region: str, state: Path, down: bool) -> str:
    """Stop a region's control plane (its apiserver and controllers), or start it again."""
    fleet.region(region)  # KeyError names an unknown region
    if down:
        stopped = kube.stop_region(region, state)
        faults.set_region_flag(state, "region_down", region, True)
        return f"{region} is down (stopped {', '.join(stopped) or 'nothing: it was not running'})"
    kregion = _kregion(fleet, region)
    kube.start_region(kregion, state, progress=lambda _: None)
    faults.set_region_flag(state, "region_down", region, False)
    return f"{region} is up again"


def apply_fault(fleet: Fleet, state: Path, knob: str, region: str | None, value: str | None, clear: bool) -> str:
    """One fault knob, set or cleared. Returns what changed, for people."""
    if knob == "region-down":
        return region_down(fleet, region, state, down=not clear)
    if knob == "replica-lag":
        with faults.edit(state) as data:
            lags = data.setdefault("replica_lag", {})
            if clear:
                lags.pop(region, None)
            else:
                lags[region] = float(value)
            if not lags:
                data.pop("replica_lag")
        return f"{region}: replication lag {'back to the fleet file' if clear else f'{value} s'}"
    if knob in ("replica-stuck", "edge-unhealthy", "rollout-unhealthy"):
        if knob == "rollout-unhealthy":
            kube.set_pods_ready(_kregion(fleet, region), state, ready=clear, progress=lambda _: None)
        faults.set_region_flag(state, knob.replace("-", "_"), region, not clear)
        return f"{region}: {knob} {'cleared' if clear else 'on'}"
    if knob == "registry-auth":
        if not clear and value not in ("401", "403"):
            raise ValueError(f"registry-auth answers 401 or 403, not {value!r}")
        with faults.edit(state) as data:
            refusals = data.setdefault("registry_auth", {})
            if clear:
                refusals.pop(region, None)
            else:
                refusals[region] = int(value)
            if not refusals:
                data.pop("registry_auth")
        return f"{region}: registry " + ("serves again" if clear else f"answers {value} to every request")
    if knob == "token-lifetime":
        faults.update_faults(state, token_lifetime=None if clear else float(value))
        return "tokens live as the fleet file says" if clear else f"new tokens live {value} s"
    if knob == "resolver-stuck":
        faults.update_faults(state, resolver_stuck=None if clear else True)
        return "users' resolvers " + ("honour the TTL again" if clear else "keep their answers past the TTL")
    if knob == "tm-errors":
        if clear:
            faults.update_faults(state, tm_errors=None)
            return "Traffic Manager answers normally"
        status, _, count = (value or "").partition("x")
        faults.update_faults(state, tm_errors={"status": int(status), "remaining": int(count or 1)})
        return f"Traffic Manager answers {status} to the next {count or 1} call(s)"
    raise ValueError(f"unknown fault {knob!r}")


BAD_BUILD = {"error-rate": ("error_rate", "ratio"), "latency": ("latency", "ms")}


def bad_build(fleet: Fleet, state: Path, region: str, kind: str | None, amount: str | None, clear: bool) -> str:
    """Make the builds `region` does not run yet misbehave for users: fail `amount` (a ratio) of
    their requests with 500, or answer them `amount` ms late. The digests it runs now are recorded
    as good when a knob is first set, so the release after it is the bad build; setting the knob
    again only changes the amount. With `clear`, `kind` None clears both."""
    fleet.region(region)  # KeyError names an unknown region
    if clear:
        with faults.edit(state) as data:
            regions = data.get("bad_build") or {}
            knobs = regions.get(region) or {}
            for name in [kind] if kind else list(BAD_BUILD):
                knobs.pop(BAD_BUILD[name][0], None)
            if not knobs:
                regions.pop(region, None)
            if not regions:
                data.pop("bad_build", None)
        return f"{region}: bad build {kind or 'error-rate and latency'} cleared"
    key, unit = BAD_BUILD[kind]
    value = float(amount)
    if (key == "error_rate" and not 0 <= value <= 1) or value < 0:
        raise ValueError(f"bad-build {kind} takes {'a ratio from 0 to 1' if key == 'error_rate' else 'ms >= 0'}")
    # Read before taking the faults lock: it asks the region's API server (as the edge does).
    try:
        running = edge.running_digests(fleet, region, state)
    except edge.ClusterUnreachable as err:
        raise edge.ClusterUnreachable(f"{region}: cannot read which digest it runs (the good build): {err}") from None
    with faults.edit(state) as data:
        knobs = data.setdefault("bad_build", {}).setdefault(region, {})
        good = knobs[key]["good"] if key in knobs else running
        knobs[key] = {unit: value, "good": good}
    what = f"fail {value:g} of user requests with 500" if key == "error_rate" else f"answer users {value:g} ms late"
    spared = ", ".join(d[7:19] for d in good) or "none"
    return f"{region}: every digest but the good ones ({spared}) will {what}; /healthz and /version unaffected"


def clear_all(fleet: Fleet, state: Path) -> list[str]:
    """Undo every fault: restart downed regions, make pods ready again, empty faults.json."""
    current = faults.read_faults(state)
    done = [region_down(fleet, r, state, down=False) for r in current.get("region_down") or []]
    for region in current.get("rollout_unhealthy") or []:
        kube.set_pods_ready(_kregion(fleet, region), state, ready=True, progress=lambda _: None)
    faults.update_faults(state, **dict.fromkeys(current))
    return [*done, "all faults cleared"]


def status_rows(fleet: Fleet, state: Path | None = None) -> list[dict[str, str]]:
    """One row per region: what is up, what it holds, what Traffic Manager thinks of it."""
    from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential, TrafficManagerError

    state = state or state_dir(fleet)
    current_faults = faults.read_faults(state)
    tm = fleet.traffic_manager
    try:
        with AzureTrafficManager(
            StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile,
            endpoint_profiles={r.endpoint.name: fleet.endpoint_profiles(r.name) for r in fleet.regions},
            base_url=tm.base_url, retry_total=0, timeout=3,
        ) as client:  # fmt: skip
            endpoints, tm_state = client.endpoints(), "missing"
    except (TrafficManagerError, OSError):
        endpoints, tm_state = {}, "TM error"
    rows = []
    scraped = prometheus.target_health(url) if (url := prometheus.url_of(fleet)) else {}
    targets = prometheus.edge_targets(fleet)
    for region, kregion in zip(fleet.regions, _regions(fleet), strict=True):
        health = kube.region_health(kregion, state)
        endpoint = fleet.registry.endpoint(region.name)
        answer = registry.registry_answer(endpoint)  # through the front: a knob's 401/403 shows
        digests = registry.list_digests(endpoint, fleet.registry.repository) if answer == "up" else []
        ep = endpoints.get(region.endpoint.name)
        rows.append(
            {
                "region": region.name,
                "apiserver": "ready" if health.apiserver_ready else "DOWN",
                "nodes": f"{health.nodes_ready}/{health.nodes_total}",
                "registry": answer,
                "digests": ",".join(d[7:19] for d in digests) or "-",
                "endpoint": ("Enabled" if ep.enabled else "Disabled") if ep else tm_state,
                "weight": str(ep.weight) if ep else "?",
                "monitor": (ep.monitor_status or "?") if ep else "?",
                "metrics": "-" if url is None else scraped.get(targets[region.name], "no prometheus"),
                "faults": ",".join(_fault_notes(current_faults, region.name)) or "-",
            }
        )
    return rows


def _fault_notes(current: dict, region: str) -> list[str]:
    notes = faults.regions_with(current, region)
    bad = (current.get("bad_build") or {}).get(region) or {}
    if "bad_build" in notes:
        parts = [f"{bad['error_rate']['ratio']:g} 500s"] if "error_rate" in bad else []
        parts += [f"+{bad['latency']['ms']:g}ms"] if "latency" in bad else []
        notes[notes.index("bad_build")] = f"bad_build({' '.join(parts)})"
    return notes


def print_table(rows: list[dict[str, str]], out: Callable[[str], None] = print) -> None:
    if not rows:
        return
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    out("  ".join(k.ljust(w) for k, w in widths.items()).rstrip())
    for row in rows:
        out("  ".join(row[k].ljust(w) for k, w in widths.items()).rstrip())


KNOBS = (
    "region-down", "replica-lag", "replica-stuck", "registry-auth", "rollout-unhealthy", "edge-unhealthy",
    "tm-errors", "token-lifetime", "resolver-stuck", "bad-build", "clear-all",
)  # fmt: skip


def _fault_command(fleet: Fleet, parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    state = state_dir(fleet)
    if args.extra is not None and args.knob != "bad-build":
        parser.error(f"{args.knob} takes no third argument ({args.extra!r})")
    if args.knob == "clear-all":
        return clear_all(fleet, state)
    if args.knob == "bad-build":
        return [_bad_build_command(fleet, state, parser, args)]
    if args.knob == "token-lifetime":
        if not args.clear and not (args.region or "").isdigit():
            parser.error("token-lifetime takes the seconds new tokens live, e.g. token-lifetime 60")
        return [apply_fault(fleet, state, args.knob, None, args.region, args.clear)]
    if args.knob == "resolver-stuck":
        return [apply_fault(fleet, state, args.knob, None, None, args.clear)]
    if args.knob == "tm-errors":
        if not args.clear and not re.fullmatch(r"(429|5\d\d)(x\d+)?", args.region or ""):
            parser.error("tm-errors takes STATUSxCOUNT, e.g. 429x3 or 500x10")
        return [apply_fault(fleet, state, args.knob, None, args.region, args.clear)]
    if not args.region:
        parser.error(f"{args.knob} needs a region: one of {', '.join(fleet.region_names)}")
    fleet.region(args.region)
    if args.knob == "replica-lag" and not args.clear and not (args.value or "").replace(".", "", 1).isdigit():
        parser.error("replica-lag needs the lag in seconds, e.g. replica-lag westus 30")
    if args.knob == "registry-auth" and not args.clear and args.value not in ("401", "403"):
        parser.error("registry-auth needs the status its registry answers, e.g. registry-auth westus 403")
    return [apply_fault(fleet, state, args.knob, args.region, args.value, args.clear)]


def _bad_build_command(fleet: Fleet, state: Path, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    usage = "bad-build error-rate REGION RATIO | latency REGION MS, e.g. bad-build error-rate westus 0.2"
    if args.region in BAD_BUILD:
        kind, region, amount = args.region, args.value, args.extra
    else:  # `bad-build REGION --clear`: both knobs
        kind, region, amount = None, args.region, args.value
    if not region or (not args.clear and (kind is None or not re.fullmatch(r"\d+(\.\d+)?", amount or ""))):
        parser.error(usage)
    if not args.clear and kind == "error-rate" and float(amount) > 1:
        parser.error(f"bad-build error-rate takes a ratio from 0 to 1, not {amount}")
    return bad_build(fleet, state, region, kind, amount, args.clear)


def users_command(fleet: Fleet, args: argparse.Namespace) -> list[str]:
    state = state_dir(fleet)
    if args.action == "start":
        pid = users.start(fleet, state, args.users, args.rate, args.duration)
        return [f"{args.users} users started (pid {pid}); they stop by themselves after {args.duration:.0f} s"]
    if args.action == "stop":
        return ["users stopped" if users.stop(state) else "no users were running"]
    rows = users.read(state)
    by_region = Counter(r.get("region") or str(r.get("status")) for r in rows)
    failed = sum(1 for r in rows if r.get("status") != 200)
    return [f"{len(rows)} requests, {failed} failed", *(f"  {k}: {n}" for k, n in sorted(by_region.items()))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", type=Path, default=DEFAULT_FLEET, help="a local fleet file")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the fleet (idempotent)")
    sub.add_parser("status", help="a table of every region")
    sub.add_parser("down", help="stop every process the fleet started")
    users = sub.add_parser("users", help="simulated users who reach the app through the profile's DNS name")
    users.add_argument("action", choices=("start", "stop", "read"))
    users.add_argument("--users", type=int, default=8, help="how many (at most 64)")
    users.add_argument("--rate", type=float, default=2.0, help="requests per second per user")
    users.add_argument("--duration", type=float, default=600, help="seconds until they stop by themselves")
    fault = sub.add_parser("fault", help="break something on purpose (each knob is reversible)")
    fault.add_argument("knob", choices=KNOBS, help="what to break; 'clear-all' undoes everything")
    fault.add_argument("region", nargs="?", help="the region (every knob but tm-errors and clear-all)")
    fault.add_argument(
        "value", nargs="?", help="replica-lag: seconds; registry-auth: 401 or 403; tm-errors: STATUSxCOUNT, e.g. 429x3"
    )
    fault.add_argument(
        "extra", nargs="?", help="bad-build error-rate REGION RATIO | latency REGION MS (bad-build REGION --clear)"
    )
    fault.add_argument("--clear", action="store_true", help="undo this knob")
    args = parser.parse_args(argv)
    try:
        fleet = load_fleet(args.fleet)
        if args.command == "up":
            up(fleet)
        elif args.command == "down":
            down(fleet)
        elif args.command == "users":
            print("\n".join(users_command(fleet, args)))
        elif args.command == "fault":
            print("\n".join(_fault_command(fleet, parser, args)))
        else:
            print_table(status_rows(fleet))
            if url := prometheus.url_of(fleet):
                pid = procs.pid(prometheus.PROC, state_dir(fleet))
                print(f"prometheus {url}: " + (f"up (pid {pid})" if pid else "not running"))
    except FleetError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 2
    except KeyError as err:
        print(f"localfleet: {err.args[0]!r} is not a region of {args.fleet}", file=sys.stderr)
        return 2
    except (kube.KubeError, procs.ProcError, registry.RegistryError, edge.ClusterUnreachable) as err:
        print(f"localfleet: {err}", file=sys.stderr)
        return 1
    return 0
