"""Read the fleet the way its owner would, never through Fanout's records: Helm's own storage
(`helm history` as the cluster admin), the app's Deployment and pods, each edge's /version, and
Traffic Manager through its ARM API and the stand-in's change log."""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.request
from pathlib import Path

from fanout.adapters.helm import helm_binary
from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential
from fanout.fleet import Fleet
from localfleet import cli
from localfleet.fault_matrix.promises import FleetView, RegionView, UsersView, fewest_enabled
from localfleet.traffic import users
from localfleet.traffic.promise import read_changes, summarize

logging.getLogger("azure").setLevel(logging.WARNING)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def endpoints_enabled(fleet: Fleet) -> dict[str, bool]:
    """Each endpoint's status now, by endpoint name (a few retries: a storm may just have ended)."""
    tm = fleet.traffic_manager
    with AzureTrafficManager(
        StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url, timeout=5
    ) as client:
        return {name: ep.enabled for name, ep in client.endpoints().items()}


def helm_latest(fleet: Fleet, region: str) -> tuple[str | None, int]:
    argv = [helm_binary(), "history", fleet.app.name, "-n", fleet.app.namespace, "-o", "json", "--max", "5"]
    argv += ["--kubeconfig", str(cli.admin_kubeconfig_path(fleet)), "--kube-context", region]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return (None, 0) if "not found" in done.stderr else (f"unreadable: {done.stderr.strip()[-120:]}", 0)
    history = json.loads(done.stdout or "[]")
    return (history[-1]["status"], int(history[-1]["revision"])) if history else (None, 0)


def workload(fleet: Fleet, region: str) -> tuple[tuple[str, ...], bool]:
    """The Deployment's and its live pods' images, and whether its rollout is finished."""
    from kubernetes import client, config

    api = config.new_client_from_config(str(cli.admin_kubeconfig_path(fleet)), region)
    try:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        try:
            d = apps.read_namespaced_deployment(fleet.app.name, fleet.app.namespace, _request_timeout=10)
        except client.exceptions.ApiException as err:
            if err.status == 404:
                return (), False
            raise
        images = [c.image for c in d.spec.template.spec.containers]
        selector = ",".join(f"{k}={v}" for k, v in sorted(d.spec.selector.match_labels.items()))
        pods = core.list_namespaced_pod(fleet.app.namespace, label_selector=selector, _request_timeout=10).items
        images += [c.image for p in pods if not p.metadata.deletion_timestamp for c in p.spec.containers]
        s, want = d.status, d.spec.replicas or 0
        done = (
            (s.observed_generation or 0) >= (d.metadata.generation or 0)
            and (s.updated_replicas or 0) == want
            and (s.ready_replicas or 0) == want
            and (s.replicas or 0) == want
        )
        return tuple(images), done
    finally:
        api.close()


def serving(fleet: Fleet, region: str) -> str | None:
    try:
        with NO_PROXY.open(fleet.region(region).edge_url + fleet.gates.http.version_path, timeout=5) as response:
            return json.loads(response.read()).get("digest")
    except (OSError, ValueError):
        return None


def fleet_view(fleet: Fleet, state: Path, initial: dict[str, bool], since: float) -> FleetView:
    enabled = endpoints_enabled(fleet)
    regions = {}
    for r in fleet.regions:
        status, revision = helm_latest(fleet, r.name)
        images, rolled_out = workload(fleet, r.name)
        regions[r.name] = RegionView(
            r.name, status, revision, images, rolled_out, serving(fleet, r.name), enabled[r.endpoint.name]
        )
    fewest = fewest_enabled(initial, read_changes(state), since)
    return FleetView(regions, fewest, fleet.min_serving_regions)


def users_view(fleet: Fleet, state: Path, digest: str, since: float, until: float) -> UsersView:
    endpoint_region = {r.endpoint.name: r.name for r in fleet.regions}
    s = summarize(
        users.read(state), read_changes(state), endpoint_region,
        ttl=fleet.traffic_manager.dns_ttl_seconds, digest=digest, since=since, until=until,
    )  # fmt: skip
    examples = tuple(
        f"{what} t={r['t']:.1f} user {r['user']} -> {r.get('region')} {r.get('status')}"
        for what, rows in (("failed", s.failed), ("mid-change", s.mid_change), ("stale", s.stale_after))
        for r in rows[:2]
    )
    return UsersView(s.requests, len(s.failed), len(s.mid_change), len(s.stale_after), examples)


def describe(view: FleetView) -> list[str]:
    """One line per region, for the log of a scenario."""
    return [
        f"  {r.name:<12} helm {r.helm_status} rev {r.helm_revision}  serving {str(r.serving)[:19]}  "
        f"{'enabled' if r.enabled else 'DISABLED'}  rolled out {r.rolled_out}"
        for r in view.regions.values()
    ]
