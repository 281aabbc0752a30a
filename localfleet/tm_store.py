"""State of the Traffic Manager stand-in: one profile (its routing method, TTL and monitor from
the fleet file), its endpoints, their health, and a log of every endpoint status change; plus the
child profiles of its NestedEndpoints (`traffic_manager.nested`), each Priority-routed over its
regions, in the same subscription and resource group.

The HTTP side lives in `localfleet.trafficmanager`; this module knows nothing about HTTP
except that its failures are `ArmError`s carrying the status and ARM error code to answer.
State is plain JSON-able dicts so that it can be written to disk as is after every change.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fanout.fleet import Fleet
from fanout.fleet_checks import is_loopback

STATE_FILE = "trafficmanager.json"
# One JSON line per endpoint status change ({"at", "endpoint", "status"}): what users were told, when.
CHANGES_FILE = "tm-changes.jsonl"
PROVIDER = "Microsoft.Network"
PROFILE_TYPE = f"{PROVIDER}/trafficManagerProfiles"
# Path segment (lower-case, as Azure matches it) -> the spelling the SDK's EndpointType uses.
ENDPOINT_KINDS = {k.lower(): k for k in ("ExternalEndpoints", "AzureEndpoints", "NestedEndpoints")}
# Properties a client may set; endpointMonitorStatus is derived here, as in Azure.
WRITABLE = {
    "target", "targetResourceId", "endpointStatus", "weight", "priority", "endpointLocation",
    "minChildEndpoints", "minChildEndpointsIPv4", "minChildEndpointsIPv6", "geoMapping", "subnets",
    "customHeaders", "alwaysServe",
}  # fmt: skip


class ArmError(Exception):
    """A request the stand-in refuses, answered as an ARM error body."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.target = status, code, message, target

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return {"error": error}


def _region_endpoint(fleet: Fleet, region: Any, status: str, priority: int | None) -> dict[str, Any]:
    edge = urlsplit(region.edge_url)
    props: dict[str, Any] = {
        "target": edge.hostname,
        "endpointStatus": status,
        "weight": region.endpoint.weight,
        "endpointLocation": region.name,
    }
    if priority is not None:
        props["priority"] = priority
    return {
        "name": region.endpoint.name,
        "kind": region.endpoint.type,
        "properties": props,
        # Loopback edges differ only by port, which an ARM target cannot carry: keep the URL aside.
        "probe_url": region.edge_url.rstrip("/") + fleet.gates.http.health_path,
    }


def profile_id(subscription: str, resource_group: str, profile: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{PROFILE_TYPE}/{profile}"


def seed_state(fleet: Fleet) -> dict[str, Any]:
    """The state a fresh stand-in starts from: the fleet's profile, every region's endpoint Enabled
    in the profiles that hold it (`Fleet.endpoint_profiles`), and one child profile per nested entry."""
    tm = fleet.traffic_manager

    def profile(name: str, method: str) -> dict[str, Any]:
        path = fleet.gates.http.health_path
        return {"name": name, "profileStatus": "Enabled", "ttl": tm.dns_ttl_seconds, "trafficRoutingMethod": method,
                "path": path}  # fmt: skip

    endpoints = {}
    for region in fleet.regions:
        if tm.profile not in fleet.endpoint_profiles(region.name):
            continue
        # A warm standby outside Priority routing waits disabled until a failover enables it.
        status = "Disabled" if region.standby and tm.routing_method != "Priority" else "Enabled"
        ep = _region_endpoint(fleet, region, status, region.endpoint.priority)
        if region.endpoint.geo_mapping:
            ep["properties"]["geoMapping"] = list(region.endpoint.geo_mapping)
        endpoints[region.endpoint.name.lower()] = ep
    children = {}
    for nested in tm.nested:
        child = {
            fleet.region(r).endpoint.name.lower(): _region_endpoint(fleet, fleet.region(r), "Enabled", n)
            for n, r in enumerate(nested.regions, start=1)
        }
        children[nested.profile.lower()] = {"profile": profile(nested.profile, "Priority"), "endpoints": child}
        endpoints[nested.endpoint.lower()] = {
            "name": nested.endpoint,
            "kind": "NestedEndpoints",
            "properties": {
                "targetResourceId": profile_id(tm.subscription, tm.resource_group, nested.profile),
                "endpointStatus": "Enabled",
                "weight": 1,
                "minChildEndpoints": nested.min_child_endpoints,
                "geoMapping": list(nested.geo_mapping),
            },
            "probe_url": None,
        }
    return {
        "subscription": tm.subscription,
        "resource_group": tm.resource_group,
        "profile": profile(tm.profile, tm.routing_method),
        "endpoints": endpoints,
        "children": children,
    }


def write_json_atomically(path: Path, data: Any) -> None:
    # A reader (or a restart after a crash) must see the old file or the new one, never half of one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_weight(props: dict[str, Any]) -> None:
    weight = props.get("weight")
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise ArmError(
            400, "BadRequest", f"properties.weight: {weight!r} is invalid; a weight must be 1 to 1000.", "weight"
        )


def _check_status(props: dict[str, Any]) -> None:
    status = props.get("endpointStatus")
    if status is not None and status not in ("Enabled", "Disabled"):
        raise ArmError(
            400,
            "BadRequest",
            f"properties.endpointStatus: {status!r} is invalid; use Enabled or Disabled.",
            "endpointStatus",
        )


class Store:
    """The profile and its endpoints, guarded by one lock, written to `state_dir` on every change."""

    def __init__(self, state_dir: Path, seed: dict[str, Any], probe_interval: float = 2.0):
        self.path = Path(state_dir) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        # A state file from an earlier run wins over the fleet: that is what "survives a restart" means.
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else seed
        if not self.path.exists():
            self._save()
        self.probe_interval = probe_interval
        self.health: dict[str, bool] = {}  # endpoint key -> last probe ok; absent = not probed yet
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._monitor: threading.Thread | None = None

    # ---- ARM resources -------------------------------------------------------------------------

    def _save(self) -> None:
        write_json_atomically(self.path, self.state)

    def _scope(self, pkey: str | None) -> dict[str, Any]:
        """The {"profile", "endpoints"} of the parent (None) or of child profile `pkey`."""
        return self.state if pkey is None else self.state["children"][pkey]

    @staticmethod
    def _hkey(pkey: str | None, key: str) -> str:
        return key if pkey is None else f"{pkey}/{key}"

    def base_id(self, pkey: str | None = None) -> str:
        s = self.state
        return profile_id(s["subscription"], s["resource_group"], self._scope(pkey)["profile"]["name"])

    def check_scope(self, subscription: str, resource_group: str, profile: str) -> str | None:
        """404 unless the path names this stand-in's profile or one of its child profiles (names compare
        case-insensitively). Returns the child's key, None for the parent."""
        s = self.state
        if subscription.lower() != s["subscription"].lower():
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")
        if resource_group.lower() != s["resource_group"].lower():
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{resource_group}' could not be found.")
        if profile.lower() == s["profile"]["name"].lower():
            return None
        if profile.lower() in s.get("children", {}):
            return profile.lower()
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The Resource '{PROFILE_TYPE}/{profile}' under resource group '{resource_group}' was not found.",
        )

    def _child_of(self, props: dict[str, Any]) -> str | None:
        """The child profile a NestedEndpoints endpoint targets, if it is one of this stand-in's."""
        target = str(props.get("targetResourceId") or "")
        own = profile_id(self.state["subscription"], self.state["resource_group"], "").lower()
        name = target.rstrip("/").rsplit("/", 1)[-1].lower()
        ok = target.lower().startswith(own) and name in self.state.get("children", {})
        return name if ok else None

    def _monitor_status(self, key: str, pkey: str | None = None) -> str:
        scope = self._scope(pkey)
        ep = scope["endpoints"][key]
        if scope["profile"]["profileStatus"] != "Enabled":
            return "Inactive"
        if ep["properties"].get("endpointStatus") != "Enabled":
            return "Disabled"
        if ep["kind"] == "NestedEndpoints":
            # Not probed: healthy while at least minChildEndpoints of the child's endpoints are Online.
            child = self._child_of(ep["properties"])
            if child is None:
                return "Degraded"
            statuses = [self._monitor_status(k, child) for k in self._scope(child)["endpoints"]]
            need = ep["properties"].get("minChildEndpoints") or 1
            online = statuses.count("Online")
            if online >= need:
                return "Online"
            return "CheckingEndpoint" if online + statuses.count("CheckingEndpoint") >= need else "Degraded"
        hkey = self._hkey(pkey, key)
        if hkey not in self.health:
            return "CheckingEndpoint"
        return "Online" if self.health[hkey] else "Degraded"

    def profile_monitor_status(self, pkey: str | None = None) -> str:
        """Summarised as Azure documents it for the profile's monitorConfig.profileMonitorStatus."""
        scope = self._scope(pkey)
        if scope["profile"]["profileStatus"] != "Enabled":
            return "Disabled"
        statuses = [self._monitor_status(k, pkey) for k in scope["endpoints"]]
        enabled = [s for s in statuses if s != "Disabled"]
        if not enabled:
            return "Inactive"
        if "Online" in enabled:
            return "Online"
        if "CheckingEndpoint" in enabled:
            return "CheckingEndpoints"
        return "Degraded"

    def endpoint_json(self, key: str, pkey: str | None = None) -> dict[str, Any]:
        with self.lock:
            ep = self._scope(pkey)["endpoints"][key]
            segment = ep["kind"][0].lower() + ep["kind"][1:]  # externalEndpoints, as Azure spells it
            props = dict(ep["properties"], endpointMonitorStatus=self._monitor_status(key, pkey))
            return {
                "id": f"{self.base_id(pkey)}/{segment}/{ep['name']}",
                "name": ep["name"],
                "type": f"{PROFILE_TYPE}/{segment}",
                "properties": props,
            }

    def profile_json(self, pkey: str | None = None) -> dict[str, Any]:
        with self.lock:
            scope = self._scope(pkey)
            p = scope["profile"]
            return {
                "id": self.base_id(pkey),
                "name": p["name"],
                "type": PROFILE_TYPE,
                "location": "global",
                "tags": {},
                "properties": {
                    "profileStatus": p["profileStatus"],
                    "trafficRoutingMethod": p.get("trafficRoutingMethod", "Weighted"),
                    "dnsConfig": {
                        "relativeName": p["name"],
                        "fqdn": f"{p['name']}.trafficmanager.net",
                        "ttl": p["ttl"],
                    },
                    "monitorConfig": {
                        "profileMonitorStatus": self.profile_monitor_status(pkey),
                        "protocol": "HTTP",
                        "port": 80,
                        "path": p["path"],
                        # What the stand-in really does, not Azure's 30 s: tests want fast health.
                        "intervalInSeconds": max(1, round(self.probe_interval)),
                        "timeoutInSeconds": 1,
                        "toleratedNumberOfFailures": 0,
                    },
                    "endpoints": [self.endpoint_json(k, pkey) for k in scope["endpoints"]],
                    "trafficViewEnrollmentStatus": "Disabled",
                },
            }

    def _find(self, kind: str, name: str, pkey: str | None = None) -> str:
        key = name.lower()
        scope = self._scope(pkey)
        ep = scope["endpoints"].get(key)
        if ep is None or ep["kind"] != kind:
            raise ArmError(
                404,
                "NotFound",
                f"Endpoint '{name}' of type '{kind}' was not found in profile '{scope['profile']['name']}'.",
            )
        return key

    def get_endpoint(self, kind: str, name: str, pkey: str | None = None) -> dict[str, Any]:
        with self.lock:
            return self.endpoint_json(self._find(kind, name, pkey), pkey)

    def _check_nested(self, kind: str, props: dict[str, Any]) -> None:
        if kind == "NestedEndpoints" and "targetResourceId" in props and self._child_of(props) is None:
            raise ArmError(
                400,
                "BadRequest",
                f"properties.targetResourceId: {props['targetResourceId']!r} is not a Traffic Manager profile "
                "of this subscription and resource group.",
                "targetResourceId",
            )

    def put_endpoint(
        self, kind: str, name: str, body: dict[str, Any], pkey: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace an endpoint; returns its JSON and whether it was created."""
        props = {k: v for k, v in (body.get("properties") or {}).items() if k in WRITABLE and v is not None}
        _check_weight(props)
        _check_status(props)
        props.setdefault("endpointStatus", "Enabled")
        props.setdefault("weight", 1)  # Azure's default for a Weighted profile
        if kind == "ExternalEndpoints" and not props.get("target"):
            raise ArmError(400, "BadRequest", "properties.target: required for ExternalEndpoints.", "target")
        if kind == "NestedEndpoints" and not props.get("targetResourceId"):
            raise ArmError(
                400, "BadRequest", "properties.targetResourceId: required for NestedEndpoints.", "targetResourceId"
            )
        with self.lock:
            self._check_nested(kind, props)
            key = name.lower()
            endpoints = self._scope(pkey)["endpoints"]
            old = endpoints.get(key)
            if old is not None and old["kind"] != kind:
                raise ArmError(409, "Conflict", f"Endpoint '{name}' already exists with type '{old['kind']}'.", "name")
            probe_url = None
            if old is not None and old["properties"].get("target") == props.get("target"):
                probe_url = old.get("probe_url")
            endpoints[key] = {
                "name": old["name"] if old else name,
                "kind": kind,
                "properties": props,
                "probe_url": probe_url,
            }
            self._changed(key, old, pkey)
            return self.endpoint_json(key, pkey), old is None

    def patch_endpoint(self, kind: str, name: str, body: dict[str, Any], pkey: str | None = None) -> dict[str, Any]:
        """Merge the given properties into an existing endpoint (Azure's PATCH semantics)."""
        props = {k: v for k, v in (body.get("properties") or {}).items() if k in WRITABLE and v is not None}
        _check_weight(props)
        _check_status(props)
        with self.lock:
            self._check_nested(kind, props)
            key = self._find(kind, name, pkey)
            ep = self._scope(pkey)["endpoints"][key]
            old = json.loads(json.dumps(ep))
            ep["properties"].update(props)
            if "target" in props and props["target"] != old["properties"].get("target"):
                ep["probe_url"] = None
            self._changed(key, old, pkey)
            return self.endpoint_json(key, pkey)

    def delete_endpoint(self, kind: str, name: str, pkey: str | None = None) -> bool:
        with self.lock:
            try:
                key = self._find(kind, name, pkey)
            except ArmError:
                return False
            del self._scope(pkey)["endpoints"][key]
            self.health.pop(self._hkey(pkey, key), None)
            self._save()
            return True

    def _changed(self, key: str, old: dict[str, Any] | None, pkey: str | None = None) -> None:
        self._save()
        ep = self._scope(pkey)["endpoints"][key]
        status = ep["properties"].get("endpointStatus")
        if old is None or old["properties"].get("endpointStatus") != status:
            self._log_change(ep["name"], status, None if pkey is None else self._scope(pkey)["profile"]["name"])
        was_serving = old is not None and old["properties"].get("endpointStatus") == "Enabled"
        moved = old is None or old["properties"].get("target") != ep["properties"].get("target")
        if moved or (not was_serving and ep["properties"]["endpointStatus"] == "Enabled"):
            # Azure re-checks an endpoint that was (re-)enabled or moved before calling it Online.
            self.health.pop(self._hkey(pkey, key), None)
            self._wake.set()

    def _log_change(self, name: str, status: str, profile: str | None = None) -> None:
        change: dict[str, Any] = {"at": time.time(), "endpoint": name, "status": status}
        if profile is not None:
            change["profile"] = profile  # a child profile's endpoint
        with (self.path.parent / CHANGES_FILE).open("a") as f:
            f.write(json.dumps(change) + "\n")

    def dns_view(self, pkey: str | None = None) -> dict[str, Any]:
        """What the DNS side answers from: routing method, TTL, and each endpoint with its monitor status;
        a NestedEndpoints endpoint carries its child profile's view as `child`."""
        with self.lock:
            scope = self._scope(pkey)
            p = scope["profile"]
            endpoints = []
            for k, ep in scope["endpoints"].items():
                view = {
                    **ep["properties"],
                    "name": ep["name"],
                    "kind": ep["kind"],
                    "monitor": self._monitor_status(k, pkey),
                }
                child = self._child_of(ep["properties"]) if ep["kind"] == "NestedEndpoints" and pkey is None else None
                if child is not None:
                    view["child"] = self.dns_view(child)
                endpoints.append(view)
            return {
                "name": p["name"],
                "enabled": p["profileStatus"] == "Enabled",
                "routing_method": p.get("trafficRoutingMethod", "Weighted"),
                "ttl": p["ttl"],
                "endpoints": endpoints,
            }

    # ---- health monitor ------------------------------------------------------------------------

    def _probe_url(self, ep: dict[str, Any], path: str) -> str | None:
        url = ep.get("probe_url") or f"http://{ep['properties'].get('target')}{path}"
        # The local fleet lives on loopback; anything else is unreachable here (and a DNS lookup
        # for it could stall the monitor), so such an endpoint is simply Degraded.
        return url if is_loopback(urlsplit(url).hostname) else None

    def probe_once(self) -> None:
        """Probe every enabled endpoint of every profile once and record the result (a nested
        endpoint is not probed: its status is its child profile's)."""
        with self.lock:
            targets = {
                self._hkey(pkey, k): self._probe_url(ep, self._scope(pkey)["profile"]["path"])
                for pkey in [None, *self.state.get("children", {})]
                for k, ep in self._scope(pkey)["endpoints"].items()
                if ep["properties"].get("endpointStatus") == "Enabled" and ep["kind"] != "NestedEndpoints"
            }
        # The edges are loopback: an inherited http_proxy must not be used to reach them.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        results = {}
        for key, url in targets.items():
            if url is None:
                results[key] = False
                continue
            try:
                with opener.open(url, timeout=1) as resp:
                    results[key] = resp.status == 200
            except (urllib.error.URLError, OSError, ValueError):
                results[key] = False
        with self.lock:
            known = {
                self._hkey(pk, k)
                for pk in [None, *self.state.get("children", {})]
                for k in self._scope(pk)["endpoints"]
            }
            for key, ok in results.items():
                if key in known:
                    self.health[key] = ok

    def start_monitor(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self._wake.clear()
                self.probe_once()
                self._wake.wait(self.probe_interval)

        self._monitor = threading.Thread(target=loop, name="tm-monitor", daemon=True)
        self._monitor.start()

    def stop_monitor(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
