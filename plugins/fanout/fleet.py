"""The fleet file: one YAML document describing an app, its regions and the policies
that govern a release. `load_fleet` validates it and refuses it with one line per
problem, each naming the file and the field path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DNS_LABEL = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
REGION_NAME = r"^[a-z][a-z0-9]{1,39}$"
Weight = Annotated[int, Field(ge=1, le=1000)]
Share = Annotated[float, Field(gt=0, le=1)]
Seconds = Annotated[int, Field(ge=0)]


class FleetError(ValueError):
    """A fleet file that cannot be used. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    # A misspelt key is a mistake the operator wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Chart(_Strict):
    path: str | None = None
    oci: str | None = Field(None, pattern=r"^oci://")
    version: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> Chart:
        if (self.path is None) == (self.oci is None):
            raise ValueError("give exactly one of 'path' or 'oci'")
        return self


class App(_Strict):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    namespace: str = Field(pattern=DNS_LABEL)
    source: str = Field(min_length=1, description="build context (a directory with a Containerfile)")
    chart: Chart
    values: dict[str, Any] = Field(default_factory=dict)


class Registry(_Strict):
    kind: Literal["acr", "oci"]
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9]{5,50}$", description="ACR registry name")
    repository: str = Field(pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    home: str
    endpoints: dict[str, str] = Field(default_factory=dict, description="region -> host[:port]")
    insecure: bool = Field(False, description="plain http; allowed for loopback registries only")
    replication_timeout_seconds: int = Field(1800, ge=1)
    # ACR only: where the registry lives in ARM and how a replica is asked. Optional so a fleet can be
    # planned without them; FleetHook refuses to reach ACR without them, naming the field.
    subscription: str | None = Field(None, min_length=1)
    resource_group: str | None = Field(None, min_length=1)
    replica_check: Literal["regional-endpoint", "replica-status"] = Field(
        "regional-endpoint",
        description="regional-endpoint: ask <name>.<region>.geo.azurecr.io (proves the replica has the digest); "
        "replica-status: the login server has it and the replica is Ready (for registries without regional "
        "endpoints; cannot prove that replica has synced it)",
    )

    @model_validator(mode="after")
    def _acr_has_name(self) -> Registry:
        if self.kind == "acr" and not self.name:
            raise ValueError("a registry of kind 'acr' needs 'name'")
        return self

    @property
    def login_server(self) -> str:
        """`<name>.azurecr.io` for ACR: answers from the replica nearest to the caller."""
        return f"{self.name}.azurecr.io".lower()

    def pull_host(self, region: str) -> str:
        """The host a cluster in `region` pulls from. For ACR that is the login server:
        geo-replication serves each pull from the nearest replica, and the kubelet's ACR
        credential provider matches `*.azurecr.io`, one label, so not the regional hosts."""
        return self.login_server if self.kind == "acr" else self.endpoint(region)

    def endpoint(self, region: str) -> str:
        """The host that serves `region`'s replica."""
        if region in self.endpoints:
            return self.endpoints[region]
        if self.kind == "acr":
            return f"{self.name}.{region}.geo.azurecr.io".lower()
        raise KeyError(region)


class AksAccess(_Strict):
    subscription: str = Field(min_length=1)
    resource_group: str = Field(min_length=1)
    cluster: str = Field(min_length=1)


class KubeconfigAccess(_Strict):
    path: str = Field(min_length=1)
    context: str = Field(min_length=1)


class ClusterAccess(_Strict):
    aks: AksAccess | None = None
    kubeconfig: KubeconfigAccess | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterAccess:
        if (self.aks is None) == (self.kubeconfig is None):
            raise ValueError("give exactly one of 'aks' or 'kubeconfig'")
        return self


class Endpoint(_Strict):
    type: Literal["ExternalEndpoints", "AzureEndpoints", "NestedEndpoints"] = "ExternalEndpoints"
    name: str = Field(min_length=1)
    weight: Weight
    # Priority routing: 1 is tried first. Geographic routing: the geography codes this endpoint answers.
    priority: Annotated[int, Field(ge=1, le=1000)] | None = None
    geo_mapping: list[str] = Field(default_factory=list)


class LocalRegion(_Strict):
    """Only for the embedded local fleet: where its processes listen and how late its replica is."""

    apiserver_port: int = Field(ge=1024, le=65535)
    replication_lag_seconds: Seconds = 0


class Region(_Strict):
    name: str = Field(pattern=REGION_NAME)
    pair: str | None = None
    cluster: ClusterAccess
    endpoint: Endpoint
    edge_url: str = Field(pattern=r"^https?://", description="where a user routed to this region lands")
    capacity_share: Share | None = None
    # A warm standby is released like every region but carries no user traffic: its endpoint is left
    # as the profile has it (disabled, or a Priority secondary) and its gates ask its edge directly.
    standby: Literal["warm"] | None = None
    local: LocalRegion | None = None


RoutingMethod = Literal["Weighted", "Priority", "Performance", "Geographic"]


class UserLocation(_Strict):
    geography: list[str] = Field(default_factory=lambda: ["WORLD"], min_length=1)
    latency_ms: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)


class TrafficManager(_Strict):
    kind: Literal["azure", "local"]
    subscription: str = Field(min_length=1)
    resource_group: str = Field(min_length=1)
    profile: str = Field(min_length=1)
    base_url: str | None = Field(None, pattern=r"^https?://")
    # A floor only: the release waits the TTL the live profile reports, if that is longer.
    dns_ttl_seconds: int = Field(30, ge=0)
    routing_method: RoutingMethod = "Weighted"
    # Where users are: for Performance (latency to each region) and Geographic (geography codes,
    # broadest first, e.g. [WORLD, GEO-EU, DE]) routing, and for the local fleet's simulated users.
    locations: dict[str, UserLocation] = Field(default_factory=dict)
    # Local fleet only: the stand-in's DNS server listens on the base_url's host at this port.
    dns_port: int | None = Field(None, ge=1024, le=65535)


class Rollout(_Strict):
    canary: list[str] = Field(default_factory=list)
    max_regions_per_wave: int = Field(1, ge=1)
    max_drain_share: Share = 0.5
    bake_seconds: Seconds = 0
    manual_approval: bool = False
    approval_timeout_minutes: int = Field(60, ge=1)


class HttpGate(_Strict):
    health_path: str = Field("/healthz", pattern=r"^/")
    version_path: str = Field("/version", pattern=r"^/")
    expect_release_digest: bool = True
    # Optional: a path on each edge reporting user requests ({"last_at", "now"}); when set, a drain is
    # confirmed from the edge (no user request for a moment after drain + TTL) before Helm starts.
    traffic_path: str | None = Field(None, pattern=r"^/")
    consecutive_successes: int = Field(3, ge=1)
    interval_seconds: float = Field(2.0, gt=0)
    timeout_seconds: int = Field(300, ge=1)


class MetricGate(_Strict):
    url: str = Field(pattern=r"^https?://", description="Prometheus-compatible query API")
    query: str = Field(min_length=1)
    max_value: float


class Gates(_Strict):
    rollout_timeout_seconds: int = Field(600, ge=1)
    http: HttpGate = Field(default_factory=HttpGate)
    soak_seconds: Seconds = 0
    metric: MetricGate | None = None


class Azure(_Strict):
    """How Fanout reaches Azure: the Airflow connection (type `azure`) every Azure client uses."""

    conn_id: str = Field("azure_default", min_length=1)


class Consistency(_Strict):
    schedule: str = Field("*/15 * * * *", min_length=1)
    mode: Literal["report", "repair"] = "report"


class Fleet(_Strict):
    app: App
    registry: Registry
    regions: list[Region] = Field(min_length=1)
    traffic_manager: TrafficManager
    rollout: Rollout = Field(default_factory=Rollout)
    gates: Gates = Field(default_factory=Gates)
    failure_policy: Literal["halt", "rollback-all"] = "halt"
    min_serving_regions: int = Field(1, ge=1)
    consistency: Consistency = Field(default_factory=Consistency)
    azure: Azure = Field(default_factory=Azure)
    # Set by load_fleet: relative paths in the file are relative to the file's folder.
    source_path: Path | None = Field(None, exclude=True)

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    @property
    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    @property
    def total_weight(self) -> int:
        return sum(r.endpoint.weight for r in self.regions)

    @property
    def chart_ref(self) -> str:
        """What `helm` is given: the OCI reference, or the chart folder made absolute."""
        return self.app.chart.oci or str(self.resolve(self.app.chart.path))

    def resolve(self, path: str) -> Path:
        """A path from the fleet file, made absolute."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source_path is None:
            return p
        return (self.source_path.parent / p).resolve()


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_]\w*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "(top level)"


def _pydantic_problems(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{_path(e['loc'])}: {msg}")
    return lines


def cross_check(fleet: Fleet) -> list[str]:
    """Rules that relate fields to each other; one line per broken rule."""
    problems: list[str] = []
    names = fleet.region_names
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    for i, region in enumerate(fleet.regions):
        if region.name in seen:
            problems.append(f"regions[{i}].name: '{region.name}' appears more than once")
        seen.add(region.name)
    endpoint_names = [r.endpoint.name for r in fleet.regions]
    for i, region in enumerate(fleet.regions):
        if endpoint_names.count(region.endpoint.name) > 1 and endpoint_names.index(region.endpoint.name) != i:
            problems.append(f"regions[{i}].endpoint.name: '{region.endpoint.name}' is used by another region")
        if region.pair is None:
            continue
        if region.pair == region.name:
            problems.append(f"regions[{i}].pair: a region cannot be paired with itself")
        elif region.pair not in index:
            problems.append(f"regions[{i}].pair: '{region.pair}' is not a region of this fleet")
        else:
            other = fleet.regions[index[region.pair]]
            # When the other side's pair is itself invalid, that line already says so.
            other_valid = other.pair is None or (other.pair in index and other.pair != other.name)
            if other.pair != region.name and other_valid:
                back = f"'{other.pair}'" if other.pair else "nothing"
                problems.append(
                    f"regions[{i}].pair: pairs must be symmetric: '{region.name}' names '{other.name}' "
                    f"but regions[{index[other.name]}].pair names {back}"
                )
    for j, name in enumerate(fleet.rollout.canary):
        if name not in index:
            problems.append(f"rollout.canary[{j}]: '{name}' is not a region of this fleet")
    if fleet.registry.home not in index:
        problems.append(f"registry.home: '{fleet.registry.home}' is not a region of this fleet")
    for key in fleet.registry.endpoints:
        if key not in index:
            problems.append(f"registry.endpoints['{key}']: '{key}' is not a region of this fleet")
    if fleet.registry.kind == "oci":
        for i, region in enumerate(fleet.regions):
            if region.name not in fleet.registry.endpoints:
                problems.append(f"registry.endpoints: no endpoint for region '{region.name}' (regions[{i}])")
    if fleet.min_serving_regions > len(names):
        problems.append(
            f"min_serving_regions: {fleet.min_serving_regions} is more than the fleet's {len(names)} regions"
        )
    total_share = sum(r.capacity_share or 0 for r in fleet.regions)
    if total_share > 1.000001:
        problems.append(f"regions[].capacity_share: shares add up to {total_share:.2f}, more than 1")
    problems += routing_problems(fleet)
    if fleet.traffic_manager.kind == "local" and not fleet.traffic_manager.base_url:
        problems.append("traffic_manager.base_url: required when kind is 'local'")
    for i, region in enumerate(fleet.regions):
        if fleet.traffic_manager.kind == "azure" and region.local is not None:
            problems.append(f"regions[{i}].local: only for a fleet whose traffic_manager.kind is 'local'")
        if fleet.traffic_manager.kind == "local" and region.local is None:
            problems.append(f"regions[{i}].local: required when traffic_manager.kind is 'local'")
    return problems


def routing_problems(fleet: Fleet) -> list[str]:
    """What the routing method needs from the file: priorities, geography mappings, latencies."""
    tm, problems = fleet.traffic_manager, []
    names = set(fleet.region_names)
    if tm.routing_method == "Priority":
        seen: dict[int, str] = {}
        for i, region in enumerate(fleet.regions):
            prio = region.endpoint.priority
            if prio is None:
                problems.append(
                    f"regions[{i}].endpoint.priority: required when traffic_manager.routing_method is Priority"
                )
            elif prio in seen:
                problems.append(
                    f"regions[{i}].endpoint.priority: {prio} is also {seen[prio]}'s; priorities must differ"
                )
            else:
                seen[prio] = region.name
    if tm.routing_method == "Geographic":
        owner: dict[str, str] = {}
        for i, region in enumerate(fleet.regions):
            for code in region.endpoint.geo_mapping:
                if code in owner:
                    problems.append(
                        f"regions[{i}].endpoint.geo_mapping: '{code}' is already mapped to {owner[code]}; "
                        "Traffic Manager maps a geography to one endpoint"
                    )
                owner.setdefault(code, region.name)
            if not region.endpoint.geo_mapping and region.standby is None:
                problems.append(
                    f"regions[{i}].endpoint.geo_mapping: required when traffic_manager.routing_method is Geographic"
                )
    for loc, where in tm.locations.items():
        for region in where.latency_ms:
            if region not in names:
                problems.append(
                    f"traffic_manager.locations['{loc}'].latency_ms: '{region}' is not a region of this fleet"
                )
        if tm.routing_method == "Performance" and not names <= set(where.latency_ms):
            missing = ", ".join(sorted(names - set(where.latency_ms)))
            problems.append(
                f"traffic_manager.locations['{loc}'].latency_ms: no latency to {missing} (Performance routing)"
            )
    if tm.dns_port is not None and tm.kind != "local":
        problems.append("traffic_manager.dns_port: only for a fleet whose traffic_manager.kind is 'local'")
    if tm.dns_port is not None:
        # A DNS answer is an address without a port: each edge needs its own address, all one port.
        edges = [urlsplit(r.edge_url) for r in fleet.regions]
        if len({e.port for e in edges}) > 1 or len({e.hostname for e in edges}) < len(edges):
            problems.append("regions[].edge_url: with traffic_manager.dns_port every edge needs its own host, one port")
    return problems


def parse_fleet(data: Any, source: str | Path = "<fleet>") -> Fleet:
    """Validate already-loaded YAML data. Raises FleetError naming `source` on every line."""
    if not isinstance(data, dict):
        raise FleetError([f"{source}: (top level): expected a mapping, got {type(data).__name__}"])
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as err:
        raise FleetError([f"{source}: {line}" for line in _pydantic_problems(err)]) from None
    problems = cross_check(fleet)
    if problems:
        raise FleetError([f"{source}: {line}" for line in problems])
    if isinstance(source, Path):
        fleet = fleet.model_copy(update={"source_path": source.resolve()})
    return fleet


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise FleetError([f"{path}: cannot read: {err.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise FleetError([f"{path}: not valid YAML{where}: {problem}"]) from None
    return parse_fleet(data, path)
