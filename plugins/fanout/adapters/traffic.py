"""Azure Traffic Manager: read endpoint state, drain (disable) and restore (enable + weight).

`TrafficManager` is the interface the rest of Fanout uses (one endpoint per region, by name, even
when the region's endpoint lives in child profiles of NestedEndpoints: reads merge them, a drain or
restore changes every profile holding it); `AzureTrafficManager` implements it
over `azure.mgmt.trafficmanager.TrafficManagerManagementClient`, against Azure or, with a loopback
``base_url``, against the local stand-in (``localfleet.trafficmanager``). No Airflow imports here:
an Airflow hook builds this from a connection.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.mgmt.trafficmanager import TrafficManagerManagementClient

# One EndpointState for the whole package: the pure release policy decides over what this adapter reads.
from fanout.fleet_checks import is_loopback
from fanout.policy import EndpointState
from fanout.redact import scrub
from fanout.routing import LiveEndpoint, LiveProfile

__all__ = [
    "AzureTrafficManager",
    "EndpointState",
    "ProfileState",
    "StaticTokenCredential",
    "TrafficManager",
    "TrafficManagerError",
    "check_base_url",
    "validate_weight",
]

ENDPOINT_TYPES = ("ExternalEndpoints", "AzureEndpoints", "NestedEndpoints")
MIN_WEIGHT, MAX_WEIGHT = 1, 1000


class TrafficManagerError(RuntimeError):
    """A Traffic Manager call failed. The message names profile, endpoint and cause, never a credential."""

    def __init__(
        self,
        message: str,
        *,
        profile: str,
        endpoint: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.profile, self.endpoint, self.status_code, self.code = profile, endpoint, status_code, code


@dataclass(frozen=True)
class ProfileState:
    name: str
    status: str | None  # Enabled | Disabled
    monitor_status: str | None  # CheckingEndpoints, Online, Degraded, Disabled, Inactive
    routing_method: str | None
    dns_ttl: int | None
    fqdn: str | None


class TrafficManager(Protocol):
    """What Fanout needs from Traffic Manager: one profile, endpoints addressed by name."""

    def endpoints(self) -> dict[str, EndpointState]: ...

    def set_endpoint(self, name: str, *, enabled: bool, weight: int | None = None) -> EndpointState: ...

    def profile_status(self) -> ProfileState: ...

    def profile_tree(self) -> tuple[LiveProfile, dict[str, LiveProfile | None]]: ...


class StaticTokenCredential:
    """A credential that hands out one fixed fake token. ONLY for the local stand-in, which
    accepts any bearer token; Azure would reject it. Never use it with a real ``base_url``."""

    def __init__(self, token: str = "fanout-local-fake-token"):
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


def validate_weight(weight: int | None, endpoint: str = "?") -> None:
    """Traffic Manager weights are 1…1000; there is no 0 (draining means disabling)."""
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, int) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise ValueError(
            f"weight for endpoint '{endpoint}': {weight!r} is not allowed; Traffic Manager weights are "
            f"{MIN_WEIGHT}..{MAX_WEIGHT} (to take an endpoint out of rotation, disable it)"
        )


def check_base_url(base_url: str | None) -> bool:
    """Refuse a plain-http ARM endpoint unless it is loopback. Returns True if it is plain http."""
    if base_url is None:
        return False
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return False
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"base_url {base_url!r}: expected an https:// URL (or http:// on a loopback host)")
    if not is_loopback(parts.hostname):
        raise ValueError(
            f"base_url {base_url!r}: plain http sends the bearer token in clear text; it is allowed only for "
            "loopback hosts (127.0.0.1, ::1, localhost) — use https"
        )
    return True


def _str(value: Any) -> str | None:
    # The SDK returns its str-enums for known values and plain str for others; callers want the wire value.
    if value is None:
        return None
    return str(value.value) if isinstance(value, Enum) else str(value)


def _endpoint_type(arm_type: str | None) -> str:
    last = (arm_type or "").rsplit("/", 1)[-1].lower()
    return next((t for t in ENDPOINT_TYPES if t.lower() == last), arm_type or "")


def _live_endpoint(ep: Any) -> LiveEndpoint:
    props = ep.properties
    return LiveEndpoint(
        type=_endpoint_type(ep.type),
        priority=props.priority if props else None,
        geo_mapping=tuple((props.geo_mapping if props else None) or ()),
        target_resource_id=props.target_resource_id if props else None,
        min_child_endpoints=props.min_child_endpoints if props else None,
    )


def _merged(name: str, places: Sequence[EndpointState]) -> EndpointState:
    """One region's endpoint held in several profiles: enabled only where all are, Online only where
    all are (a drain that reached one child profile and not another is not a drain)."""
    worst = next((s.monitor_status for s in places if s.monitor_status != "Online"), places[0].monitor_status)
    first = places[0]
    return EndpointState(name, first.type, all(s.enabled for s in places), first.weight, worst, first.target)


def _endpoint_state(ep: Any) -> EndpointState:
    props = ep.properties
    return EndpointState(
        name=ep.name,
        type=_endpoint_type(ep.type),
        enabled=_str(props.endpoint_status if props else None) == "Enabled",
        weight=props.weight if props else None,
        monitor_status=_str(props.endpoint_monitor_status if props else None),
        target=props.target if props else None,
    )


class AzureTrafficManager:
    """`TrafficManager` over the Azure SDK for one profile.

    `endpoint_types` maps an endpoint name to its type (default ``ExternalEndpoints``);
    `endpoint_profiles` an endpoint name to the profiles holding it (default: `profile` only), child
    profiles being in the same subscription and resource group.
    Retries are azure-core's RetryPolicy: 408/429/5xx are retried, honouring Retry-After.
    """

    def __init__(
        self,
        credential: TokenCredential,
        subscription_id: str,
        resource_group: str,
        profile: str,
        *,
        endpoint_types: Mapping[str, str] | None = None,
        endpoint_profiles: Mapping[str, Sequence[str]] | None = None,
        base_url: str | None = None,
        retry_total: int = 5,
        retry_backoff_factor: float = 0.8,
        retry_backoff_max: int = 30,
        timeout: float = 30,
        **client_kwargs: Any,
    ):
        self._plain_http = check_base_url(base_url)
        self.endpoint_types = dict(endpoint_types or {})
        for name, kind in self.endpoint_types.items():
            if kind not in ENDPOINT_TYPES:
                raise ValueError(f"endpoint '{name}': type {kind!r} is not one of {', '.join(ENDPOINT_TYPES)}")
        self.resource_group, self.profile = resource_group, profile
        self.endpoint_profiles = {name: list(where) for name, where in (endpoint_profiles or {}).items() if where}
        self._credential = credential
        self._client = TrafficManagerManagementClient(
            credential,
            subscription_id,
            base_url=base_url,
            retry_total=retry_total,
            # azure-core caps retries on an error status at retry_status (default 3) whatever
            # retry_total says: a throttling storm of four 429s would fail a drain. One budget.
            retry_status=retry_total,
            retry_backoff_factor=retry_backoff_factor,
            retry_backoff_max=retry_backoff_max,
            connection_timeout=timeout,
            read_timeout=timeout,
            **client_kwargs,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AzureTrafficManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, endpoint: str | None, fn: Any, *args: Any) -> Any:
        # Bearer auth over http is refused by azure-core unless the call opts out; only ever for
        # loopback, which check_base_url guaranteed at construction.
        kwargs = {"enforce_https": False} if self._plain_http else {}
        try:
            return fn(*args, **kwargs)
        except HttpResponseError as err:
            code = getattr(getattr(err, "error", None), "code", None)
            detail = getattr(getattr(err, "error", None), "message", None) or err.reason or "no details"
            cause = f"HTTP {err.status_code}" + (f" {code}" if code else "") + f": {detail}"
            status = err.status_code
        except AzureError as err:
            cause, status, code = f"{type(err).__name__}: {err.message}", None, None
        where = f"Traffic Manager profile '{self.profile}'" + (f" endpoint '{endpoint}'" if endpoint else "")
        message = scrub(f"{where}: {what} failed: {cause}", self._known_tokens())
        # Raised outside the except block on purpose: the SDK error holds the request, Authorization
        # header included, and must not travel along as __context__ into tracebacks and logs.
        raise TrafficManagerError(message, profile=self.profile, endpoint=endpoint, status_code=status, code=code)

    def _known_tokens(self) -> tuple[str, ...]:
        if isinstance(self._credential, StaticTokenCredential):
            return (self._credential._token,)
        return ()

    def _read(self, profile: str) -> Any:
        return self._call(
            "reading the profile" + ("" if profile == self.profile else f" '{profile}'"),
            None,
            self._client.profiles.get,
            self.resource_group,
            profile,
        )

    @property
    def child_profiles(self) -> list[str]:
        """The child profiles holding some region's endpoint, in first-seen order."""
        seen = [p for where in self.endpoint_profiles.values() for p in where if p != self.profile]
        return list(dict.fromkeys(seen))

    def _profile_endpoints(self, profile: str) -> dict[str, EndpointState]:
        props = self._read(profile).properties
        return {ep.name: _endpoint_state(ep) for ep in (props.endpoints if props else None) or []}

    def endpoints(self) -> dict[str, EndpointState]:
        """Every endpoint of the profile by name, with status, weight and monitor status; a region's
        endpoint held in child profiles is read there and merged (see `_merged`)."""
        out = self._profile_endpoints(self.profile)
        if not self.endpoint_profiles:
            return out
        held = {self.profile: out} | {p: self._profile_endpoints(p) for p in self.child_profiles}
        merged = {}
        for name, where in self.endpoint_profiles.items():
            places = [held[p][name] for p in where if name in held[p]]
            if places:
                merged[name] = _merged(name, places)
        return {n: e for n, e in out.items() if n not in self.endpoint_profiles} | merged

    def profile_tree(self) -> tuple[LiveProfile, dict[str, LiveProfile | None]]:
        """The parent profile and each child profile (None: it does not exist), for validate."""

        def live(p: Any) -> LiveProfile:
            props = p.properties
            method = _str(props.traffic_routing_method if props else None)
            return LiveProfile(
                method, {ep.name: _live_endpoint(ep) for ep in (props.endpoints if props else None) or []}
            )

        children: dict[str, LiveProfile | None] = {}
        for child in self.child_profiles:
            try:
                children[child] = live(self._read(child))
            except TrafficManagerError as err:
                if err.status_code != 404:
                    raise
                children[child] = None
        return live(self._read(self.profile)), children

    def endpoint(self, name: str) -> EndpointState:
        ep = self._call(
            "reading the endpoint",
            name,
            self._client.endpoints.get,
            self.resource_group,
            (self.endpoint_profiles.get(name) or [self.profile])[0],
            self._type(name),
            name,
        )
        return _endpoint_state(ep)

    def set_endpoint(self, name: str, *, enabled: bool, weight: int | None = None) -> EndpointState:
        """Enable or disable an endpoint and optionally set its weight, in one PATCH per profile holding it."""
        validate_weight(weight, name)
        props: dict[str, Any] = {"endpointStatus": "Enabled" if enabled else "Disabled"}
        if weight is not None:
            props["weight"] = weight
        action = ("enabling" if enabled else "disabling") + (f" with weight {weight}" if weight is not None else "")
        places = []
        for profile in self.endpoint_profiles.get(name) or [self.profile]:
            where = "" if profile == self.profile else f" in child profile '{profile}'"
            ep = self._call(
                action + where,
                name,
                self._client.endpoints.update,
                self.resource_group,
                profile,
                self._type(name),
                name,
                {"properties": props},
            )
            places.append(_endpoint_state(ep))
        return _merged(name, places)

    def profile_status(self) -> ProfileState:
        p = self._call("reading the profile", None, self._client.profiles.get, self.resource_group, self.profile)
        props = p.properties
        dns = props.dns_config if props else None
        monitor = props.monitor_config if props else None
        return ProfileState(
            name=p.name,
            status=_str(props.profile_status if props else None),
            monitor_status=_str(monitor.profile_monitor_status if monitor else None),
            routing_method=_str(props.traffic_routing_method if props else None),
            dns_ttl=dns.ttl if dns else None,
            fqdn=dns.fqdn if dns else None,
        )

    def _type(self, name: str) -> str:
        return self.endpoint_types.get(name, "ExternalEndpoints")
