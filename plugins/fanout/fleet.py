"""The fleet file: one YAML document describing an app, its regions and the policies
that govern a release. `load_fleet` validates it and refuses it with one line per
problem, each naming the file and the field path."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fanout import fleet_checks as checks
from fanout.fleet_file import FleetFileError, fleet_data, read_fleet_file, read_fleet_text
from fanout.windows import DeployWindow, make_window

DNS_LABEL = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
REGION_NAME = r"^[a-z][a-z0-9]{1,39}$"
# What ARM accepts in the names Fanout puts into resource paths; none can be `.` or `..`.
SUBSCRIPTION = r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
RESOURCE_GROUP = r"^[-\w.()]*[-\w()]$"
AKS_NAME = r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$"
TM_PROFILE = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$"
TM_ENDPOINT = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,258}[A-Za-z0-9_-])?$"
CONN_ID = r"^[\w.-]+$"
_PATTERN_NAMES = {
    DNS_LABEL: "a DNS label (lowercase letters, digits and '-')",
    REGION_NAME: "an Azure region name such as 'westeurope'",
    SUBSCRIPTION: "an Azure subscription id (a GUID)",
    RESOURCE_GROUP: "an Azure resource group name (letters, digits, '-', '_', '.', '(', ')'; not ending in '.')",
    AKS_NAME: "an AKS cluster name (letters, digits, '-', '_'; starting and ending with a letter or digit)",
    TM_PROFILE: "a Traffic Manager profile name (letters, digits, '-', '.'; starting and ending with a letter/digit)",
    TM_ENDPOINT: "a Traffic Manager endpoint name (letters, digits, '-', '_', '.'; starting with a letter or digit)",
    CONN_ID: "an Airflow connection id (letters, digits, '_', '.', '-'); URLs and secrets belong in the connection",
}
DAY = 86_400
Weight = Annotated[int, Field(ge=1, le=1000)]
Share = Annotated[float, Field(gt=0, le=1)]
Seconds = Annotated[int, Field(ge=0, le=DAY)]
Subscription = Annotated[str, Field(pattern=SUBSCRIPTION)]
ResourceGroup = Annotated[str, Field(pattern=RESOURCE_GROUP, max_length=90)]
HttpUrl = Annotated[str, AfterValidator(checks.http_url)]


class FleetError(ValueError):
    """A fleet file that cannot be used. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    # A misspelt key is a mistake the operator wants to hear about, not a silent default; `true` is
    # not a weight and "2" not a count (strict); `.nan` and `.inf` would switch a safeguard off.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Chart(_Strict):
    path: str | None = Field(None, min_length=1, max_length=4096)
    oci: Annotated[str, AfterValidator(checks.oci_ref)] | None = None
    version: str = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_source(self) -> Chart:
        if (self.path is None) == (self.oci is None):
            raise ValueError("give exactly one of 'path' or 'oci'")
        return self


class GitSource(_Strict):
    """The repository a release builds from: `git_sha` is fetched from `url`, `path` is built."""

    url: str = Field(description="https:// (http:// on loopback only), no credentials in it")
    path: str = Field(".", description="the build context's folder inside the repository")
    conn_id: str | None = Field(
        None, min_length=1, description="Airflow connection whose login/password reach a private repository"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        problem = git_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if path.startswith("/") or ".." in PurePosixPath(path).parts or "\\" in path:
            raise ValueError(f"{path!r} must be a relative folder inside the repository")
        return path

    @property
    def context_path(self) -> str:
        """`path` normalised ("" for the repository root), as `git archive <sha>:<path>` wants it."""
        path = str(PurePosixPath(self.path))
        return "" if path == "." else path


class AppSource(_Strict):
    git: GitSource | None = None
    directory: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="development only: build this folder of a git checkout; the release refuses it unless the "
        "checkout is clean and at exactly git_sha",
    )
    allow_unlabelled_images: bool = Field(
        False, description="release a CI-built image (`image: sha256:…`) that has no revision label"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> AppSource:
        if (self.git is None) == (self.directory is None):
            raise ValueError("give exactly one of 'git' (the repository) or 'directory' (development only)")
        return self


def git_url_problem(url: str) -> str | None:
    """Why `url` cannot be a release's repository, or None. Credentials belong in the connection,
    and a local path would let the worker's disk stand in for the server."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("https", "http"):
        return f"{url!r} is not an https:// repository URL (file:// and local paths are not release sources)"
    if not re.fullmatch(r"[a-z0-9.-]+|[0-9a-f:]+", parsed.hostname or ""):
        return f"{url!r} has no valid host"
    if parsed.username or parsed.password:
        return "has credentials in it; name an Airflow connection in conn_id instead"
    if parsed.query or parsed.fragment or not parsed.path.strip("/"):
        return f"{url!r} must name a repository (a path, no query or fragment)"
    try:
        parsed.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return f"{url!r} has an invalid port"
    if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        return "plain http:// is allowed for loopback repositories only"
    return None


class App(_Strict):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    namespace: str = Field(pattern=DNS_LABEL)
    source: AppSource
    chart: Chart
    values: dict[str, Any] = Field(default_factory=dict)


class Registry(_Strict):
    kind: Literal["acr", "oci"]
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9]{5,50}$", description="ACR registry name")
    repository: str = Field(pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    home: str
    endpoints: dict[str, Annotated[str, AfterValidator(checks.host_port)]] = Field(
        default_factory=dict, description="region -> host[:port]"
    )
    insecure: bool = Field(False, description="plain http; allowed for loopback registries only")
    replication_timeout_seconds: int = Field(1800, ge=1, le=DAY)
    # ACR only: where the registry lives in ARM and how a replica is asked. Optional so a fleet can be
    # planned without them; FleetHook refuses to reach ACR without them, naming the field.
    subscription: Subscription | None = None
    resource_group: ResourceGroup | None = None
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

    # The registry host suffix of the fleet's cloud (`azure.cloud`); set by Fleet when it is built.
    _acr_suffix: str = PrivateAttr("azurecr.io")

    @property
    def login_server(self) -> str:
        """`<name>.azurecr.io` (`.us`, `.cn` in the sovereign clouds) for ACR: answers from the
        replica nearest to the caller."""
        return f"{self.name}.{self._acr_suffix}".lower()

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
            return f"{self.name}.{region}.geo.{self._acr_suffix}".lower()
        raise KeyError(region)


class AksAccess(_Strict):
    subscription: Subscription
    resource_group: ResourceGroup
    cluster: str = Field(pattern=AKS_NAME)


class KubeconfigAccess(_Strict):
    path: str = Field(min_length=1, max_length=4096)
    context: str = Field(min_length=1, max_length=253)


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
    name: str = Field(pattern=TM_ENDPOINT)
    weight: Weight
    # Priority routing: 1 is tried first. Geographic routing: the geography codes this endpoint answers.
    priority: Annotated[int, Field(ge=1, le=1000)] | None = None
    geo_mapping: list[str] = Field(default_factory=list)


class LocalRegion(_Strict):
    """Only for the embedded local fleet: where its processes listen and how late its replica is."""

    apiserver_port: int = Field(ge=1024, le=65535)
    replication_lag_seconds: int = Field(0, ge=0, le=3600)


class LocalSettings(_Strict):
    """Only for the embedded local fleet: settings of its stand-ins that are not per region."""

    token_lifetime_seconds: int = Field(
        300, ge=30, description="how long a token of the local Entra ID stand-in (localfleet.tokens) is valid"
    )


class DeployWindowSpec(_Strict):
    """When a region may be changed (fanout.windows): weekly ranges in the region's time zone, and
    whole days on which nothing may change."""

    timezone: str = Field(min_length=1, max_length=64)
    allow: list[str] = Field(max_length=50)
    # YAML reads 2026-12-24 as a date; a quoted "2026-12-24" is as clear.
    blackout: list[Annotated[date, Field(strict=False)]] = Field(default_factory=list, max_length=400)
    _window: DeployWindow | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _valid(self) -> DeployWindowSpec:
        self._window = make_window(self.timezone, self.allow, self.blackout)
        return self

    @property
    def window(self) -> DeployWindow:
        assert self._window is not None
        return self._window


class Region(_Strict):
    name: str = Field(pattern=REGION_NAME)
    pair: str | None = None
    cluster: ClusterAccess
    endpoint: Endpoint
    edge_url: HttpUrl = Field(description="where a user routed to this region lands")
    capacity_share: Share | None = None
    # A warm standby is released like every region but carries no user traffic: its endpoint is left
    # as the profile has it (disabled, or a Priority secondary) and its gates ask its edge directly.
    standby: Literal["warm"] | None = None
    deploy_window: DeployWindowSpec | None = None
    local: LocalRegion | None = None

    @property
    def traffic_weight(self) -> int:
        """The weight of the users it carries: none for a warm standby, whatever its endpoint says."""
        return 0 if self.standby else self.endpoint.weight


RoutingMethod = Literal["Weighted", "Priority", "Performance", "Geographic"]


class UserLocation(_Strict):
    geography: list[str] = Field(default_factory=lambda: ["WORLD"], min_length=1)
    latency_ms: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)


class NestedProfile(_Strict):
    """A Geographic parent's geographies answered through a child profile: the parent holds a
    NestedEndpoints endpoint `endpoint` (targetResourceId: the child `profile`, in the parent's
    subscription and resource group) mapped to `geo_mapping`; the child routes by Priority over
    `regions`, the first the primary and the others its fallbacks in order. The parent counts the
    nested endpoint Degraded (no answer: Geographic does not fail over) while fewer than
    `min_child_endpoints` of the child's endpoints are enabled and Online."""

    endpoint: str = Field(pattern=TM_ENDPOINT)
    profile: str = Field(pattern=TM_PROFILE)
    regions: list[str] = Field(min_length=1, max_length=100)
    geo_mapping: list[str] = Field(min_length=1)
    min_child_endpoints: int = Field(1, ge=1, le=100)


class TrafficManager(_Strict):
    kind: Literal["azure", "local"]
    subscription: Subscription
    resource_group: ResourceGroup
    profile: str = Field(pattern=TM_PROFILE)
    base_url: HttpUrl | None = Field(None, description="the local stand-in's address (kind 'local' only)")
    # A floor only: the release waits the TTL the live profile reports, if that is longer.
    dns_ttl_seconds: int = Field(30, ge=0, le=DAY)
    routing_method: RoutingMethod = "Weighted"
    # Where users are: for Performance (latency to each region) and Geographic (geography codes,
    # broadest first, e.g. [WORLD, GEO-EU, DE]) routing, and for the local fleet's simulated users.
    locations: dict[str, UserLocation] = Field(default_factory=dict)
    # Local fleet only: the stand-in's DNS server listens on the base_url's host at this port.
    dns_port: int | None = Field(None, ge=1024, le=65535)
    # Geographic only: geographies answered through child profiles with fallback regions.
    nested: list[NestedProfile] = Field(default_factory=list, max_length=50)


class Hotfix(_Strict):
    """The emergency path a run opts into with `hotfix: true`: it waits for one of `approvers`
    (Airflow user ids) to approve it, may then pass a freeze, and bakes and soaks this long instead.
    Everything else (pairs, drain limits, minimum serving, every gate) applies as to any release."""

    approvers: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=50)
    bake_seconds: Seconds = 0
    soak_seconds: Seconds = 0


class Rollout(_Strict):
    canary: list[str] = Field(default_factory=list, max_length=100)
    max_regions_per_wave: int = Field(1, ge=1, le=100)
    max_drain_share: Share = 0.5
    bake_seconds: Seconds = 0
    manual_approval: bool = False
    approval_timeout_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    # A wave passes when this many of its regions pass ("all", or N of the wave's M); the others are
    # rolled back and held back while the release goes on. The canary wave always needs all.
    wave_quorum: Literal["all"] | int = "all"
    # A region a freeze covers: its drain waits (deferred) until the freeze is lifted, or fails at once.
    on_freeze: Literal["wait", "fail"] = "wait"
    # How long a region may be held back (freeze, pause, deploy window) before its drain gives up.
    hold_timeout_minutes: int = Field(24 * 60, ge=1, le=30 * 24 * 60)
    hotfix: Hotfix | None = None

    @field_validator("wave_quorum", mode="before")
    @classmethod
    def _quorum(cls, value: Any) -> Any:
        if value == "all" or (type(value) is int and 1 <= value <= 100):
            return value
        raise ValueError(f'must be "all" or a whole number of regions from 1 to 100, not {value!r}')


class HttpGate(_Strict):
    health_path: str = Field("/healthz", pattern=r"^/[^\s]{0,1023}$")
    version_path: str = Field("/version", pattern=r"^/[^\s]{0,1023}$")
    expect_release_digest: bool = True
    # Optional: a path on each edge reporting user requests ({"last_at", "now"}); when set, a drain is
    # confirmed from the edge (no user request for a moment after drain + TTL) before Helm starts.
    traffic_path: str | None = Field(None, pattern=r"^/[^\s]{0,1023}$")
    consecutive_successes: int = Field(3, ge=1, le=100)
    interval_seconds: float = Field(2.0, gt=0, le=300)
    timeout_seconds: int = Field(300, ge=1, le=DAY)


PROM_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]{0,99}$"


class MetricSource(_Strict):
    """Where the metric gates read: a Prometheus-compatible query API, and the names of the app's
    request counter, latency histogram and labels (defaults: what the local fleet's edges export)."""

    kind: Literal["prometheus", "azure-monitor"] = "prometheus"
    url: HttpUrl = Field(description="the query API's base URL (…/api/v1/query is appended)")
    requests_metric: str = Field("fanout_edge_requests_total", pattern=PROM_NAME)
    latency_histogram: str = Field("fanout_edge_request_duration_seconds", pattern=PROM_NAME)
    region_label: str = Field("region", pattern=LABEL_NAME)
    digest_label: str = Field("digest", pattern=LABEL_NAME)
    status_label: str = Field("code", pattern=LABEL_NAME)


class MetricCheck(_Strict):
    """One verdict over the window: an absolute bound (`max`), a comparison with a baseline
    (`compare`), or both. `error_ratio` is 5xx answers / all answers; `latency_ms` the `quantile`
    of the latency histogram, in milliseconds."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    measure: Literal["error_ratio", "latency_ms"]
    quantile: float = Field(0.95, gt=0, lt=1)
    max: float | None = Field(None, ge=0)
    compare: Literal["pair", "previous"] | None = None
    # Comparative: fail only if the region is worse with significance AND by more than both of these.
    tolerance: float = Field(0.2, ge=0, le=100, description="relative: worse than baseline × (1 + tolerance)")
    margin: float = Field(0.0, ge=0, description="absolute, in the measure's unit")

    @model_validator(mode="after")
    def _some_bound(self) -> MetricCheck:
        if self.max is None and self.compare is None:
            raise ValueError("give 'max' (an absolute bound), 'compare' (pair or previous), or both")
        return self


class MetricGates(_Strict):
    """Gates on what users feel, read after the region is back in Traffic Manager: for
    `window_seconds` its users' requests on the release digest are measured."""

    source: MetricSource
    window_seconds: int = Field(60, ge=5, le=DAY)
    step_seconds: int = Field(5, ge=1, le=3600, description="one comparative sample per step")
    min_requests: int = Field(50, ge=0, le=10**9)
    inconclusive: Literal["pass", "fail"] = "fail"
    significance: float = Field(0.05, gt=0, lt=0.5)
    checks: list[MetricCheck] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _shape(self) -> MetricGates:
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"check names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
        if any(c.compare for c in self.checks) and self.window_seconds < 3 * self.step_seconds:
            raise ValueError("a comparative check needs window_seconds of at least 3 × step_seconds")
        return self


class Gates(_Strict):
    rollout_timeout_seconds: int = Field(600, ge=1, le=DAY)
    http: HttpGate = Field(default_factory=HttpGate)
    soak_seconds: Seconds = 0
    metrics: MetricGates | None = None


# Registry host suffix per cloud, keyed like the Azure provider's `cloud_environment` extra.
ACR_SUFFIX = {"AzurePublicCloud": "azurecr.io", "AzureUSGovernment": "azurecr.us", "AzureChinaCloud": "azurecr.cn"}


class Azure(_Strict):
    """How Fanout reaches Azure: the Airflow connection (type `azure`) every Azure client uses,
    and its cloud (the connection's `cloud_environment` must say the same)."""

    conn_id: str = Field("azure_default", pattern=CONN_ID, max_length=250)
    cloud: Literal["AzurePublicCloud", "AzureUSGovernment", "AzureChinaCloud"] = "AzurePublicCloud"


class Consistency(_Strict):
    schedule: Annotated[str, AfterValidator(checks.cron_schedule)] = "*/15 * * * *"
    mode: Literal["report", "repair"] = "report"


# What Fanout tells people about (fanout.notify builds each message).
NOTIFY_EVENTS = ("started", "succeeded", "failed", "approval", "rolled-back", "drift", "repair")


class Notifications(_Strict):
    """Where a release and the consistency check say what they do: through Airflow's Apprise notifier,
    to whatever services the Airflow connection `conn_id` (type `apprise`) lists. The service URLs
    carry the webhooks' secrets, so they live in that connection, never in the fleet file."""

    conn_id: str = Field(pattern=CONN_ID, max_length=250, description="an Airflow connection of type apprise")
    events: list[Literal[NOTIFY_EVENTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(NOTIFY_EVENTS), min_length=1, max_length=len(NOTIFY_EVENTS)
    )
    ui_url: HttpUrl | None = Field(None, description="Airflow's UI for the links (default: its [api] base_url)")


class Fleet(_Strict):
    app: App
    registry: Registry
    regions: list[Region] = Field(min_length=1, max_length=100)
    traffic_manager: TrafficManager
    rollout: Rollout = Field(default_factory=Rollout)
    gates: Gates = Field(default_factory=Gates)
    failure_policy: Literal["halt", "rollback-all"] = "halt"
    min_serving_regions: int = Field(1, ge=1, le=100)
    consistency: Consistency = Field(default_factory=Consistency)
    azure: Azure = Field(default_factory=Azure)
    local: LocalSettings = Field(default_factory=LocalSettings)
    notifications: Notifications | None = None
    # Set by load_fleet: relative paths in the file are relative to the file's folder.
    source_path: Path | None = Field(None, exclude=True)

    def model_post_init(self, context: Any, /) -> None:
        self.registry._acr_suffix = ACR_SUFFIX[self.azure.cloud]

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    @property
    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def endpoint_profiles(self, region: str) -> list[str]:
        """The profiles holding `region`'s endpoint: the parent unless the region only answers through
        nested profiles (no geo_mapping of its own), and every child profile that lists it."""
        tm, r = self.traffic_manager, self.region(region)
        children = [n.profile for n in tm.nested if region in n.regions]
        return ([] if children and not r.endpoint.geo_mapping else [tm.profile]) + children

    @property
    def total_weight(self) -> int:
        """The weight of every region that carries users (warm standbys carry none)."""
        return sum(r.traffic_weight for r in self.regions)

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
        text = str(part) if len(str(part)) <= 60 else str(part)[:59] + "…"  # a key is named, never a document
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_]\w*", text):
            out += f".{text}" if out else text
        else:
            out += f"[{text!r}]"
    return out or "(top level)"


def _pydantic_problems(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") in _PATTERN_NAMES:
            msg = f"not {_PATTERN_NAMES[e['ctx']['pattern']]}"
        elif e["type"] == "model_type" and tuple(e["loc"]) == ("app", "source"):
            msg = "expected {git: {url: …, path: …, conn_id: …}} (or {directory: …} for development only)"
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
    if (hotfix := fleet.rollout.hotfix) is not None:
        if hotfix.bake_seconds > fleet.rollout.bake_seconds:
            problems.append(f"rollout.hotfix.bake_seconds: {hotfix.bake_seconds} is longer than rollout.bake_seconds")
        if hotfix.soak_seconds > fleet.gates.soak_seconds:
            problems.append(f"rollout.hotfix.soak_seconds: {hotfix.soak_seconds} is longer than gates.soak_seconds")
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
    problems += _endpoint_problems(fleet)
    # Fanout asks for a token outliving each Helm command: its timeout plus a 60 s margin
    # (fanout.adapters.aks.MARGIN_SECONDS). A token that cannot live that long fails every upgrade.
    needed = fleet.gates.rollout_timeout_seconds + 60
    if fleet.traffic_manager.kind == "local" and fleet.local.token_lifetime_seconds < needed:
        problems.append(
            f"local.token_lifetime_seconds: {fleet.local.token_lifetime_seconds} is less than "
            f"gates.rollout_timeout_seconds + 60 = {needed}: no token would outlive a Helm command"
        )
    problems += routing_problems(fleet)
    problems += _metric_problems(fleet)
    for i, region in enumerate(fleet.regions):
        if fleet.traffic_manager.kind == "azure" and region.local is not None:
            problems.append(f"regions[{i}].local: only for a fleet whose traffic_manager.kind is 'local'")
        if fleet.traffic_manager.kind == "local" and region.local is None:
            problems.append(f"regions[{i}].local: required when traffic_manager.kind is 'local'")
    return problems


# Where an Azure Monitor workspace's query endpoint lives, per cloud: the Entra token goes there only.
AZURE_MONITOR_SUFFIX = {
    "AzurePublicCloud": ".prometheus.monitor.azure.com",
    "AzureUSGovernment": ".prometheus.monitor.azure.us",
    "AzureChinaCloud": ".prometheus.monitor.azure.cn",
}


def _metric_problems(fleet: Fleet) -> list[str]:
    gates = fleet.gates.metrics
    if gates is None:
        return []
    problems = []
    url = urlsplit(gates.source.url)
    suffix = AZURE_MONITOR_SUFFIX[fleet.azure.cloud]
    if gates.source.kind == "azure-monitor" and (url.scheme != "https" or not (url.hostname or "").endswith(suffix)):
        problems.append(
            f"gates.metrics.source.url: an azure-monitor source is https://<workspace>.<region>{suffix} "
            f"(its query endpoint in {fleet.azure.cloud}); the fleet's Azure token goes nowhere else"
        )
    if any(c.compare == "pair" for c in gates.checks) and any(r.pair is None for r in fleet.regions):
        unpaired = ", ".join(r.name for r in fleet.regions if r.pair is None)
        problems.append(f"gates.metrics.checks: 'compare: pair' needs every region paired; {unpaired} has no pair")
    return problems


def _endpoint_problems(fleet: Fleet) -> list[str]:
    """Where Fanout sends requests, and with which credential: an Azure token only to Azure's hosts
    over https, plain http and the local stand-in only on loopback."""
    problems: list[str] = []
    tm, reg = fleet.traffic_manager, fleet.registry
    if tm.kind == "azure" and tm.base_url is not None:
        problems.append(
            "traffic_manager.base_url: only for kind 'local' (the stand-in); an 'azure' profile is reached at "
            "the ARM endpoint of the connection's cloud, which gets its token"
        )
    if tm.kind == "local" and not tm.base_url:
        problems.append("traffic_manager.base_url: required when kind is 'local'")
    elif tm.kind == "local" and not checks.is_loopback(urlsplit(tm.base_url).hostname):
        problems.append(f"traffic_manager.base_url: the local stand-in listens on loopback only, not {tm.base_url!r}")
    for region, endpoint in reg.endpoints.items():
        where = f"registry.endpoints[{region!r}]"
        host = checks.endpoint_host(endpoint)
        if reg.kind == "acr" and (why := checks.acr_host_problem(endpoint, reg.name or "")):
            problems.append(f"{where}: {why}")
        elif reg.insecure and not checks.is_loopback(host):
            problems.append(f"{where}: registry.insecure (plain http) is allowed for loopback hosts only, not {host}")
        elif tm.kind == "local" and not checks.is_loopback(host):
            problems.append(f"{where}: a local fleet's registry listens on loopback only, not {host}")
    if reg.kind == "acr" and reg.insecure:
        problems.append("registry.insecure: ACR is https only")
    return problems


def _path_problems(fleet: Fleet, fleet_file: Path) -> list[str]:
    """Paths that leave the project holding the fleet file (a build uploads whatever `source` names)."""
    roots = checks.project_roots(fleet_file)
    fields = {"app.source.directory": fleet.app.source.directory, "app.chart.path": fleet.app.chart.path}
    return [
        f"{field}: {value!r} is outside the project ({', '.join(map(str, roots))}); "
        f"keep it in the fleet file's repository or set {checks.PROJECT_ENV}"
        for field, value in fields.items()
        if value is not None and checks.outside_project(fleet.resolve(value), roots)
    ]


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
    if all(region.standby for region in fleet.regions):
        problems.append("regions: every region is a warm standby; at least one must serve users")
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
            nested = any(region.name in n.regions for n in tm.nested)
            if not region.endpoint.geo_mapping and region.standby is None and not nested:
                problems.append(
                    f"regions[{i}].endpoint.geo_mapping: required when traffic_manager.routing_method is Geographic"
                )
    problems += _nested_problems(fleet)
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


def _nested_problems(fleet: Fleet) -> list[str]:
    """Nested profiles: Geographic parents only, names unique, regions of this fleet, a threshold the
    child can meet, geographies mapped once across the parent."""
    tm, problems = fleet.traffic_manager, []
    if tm.nested and tm.routing_method != "Geographic":
        problems.append(
            f"traffic_manager.nested: only for routing_method Geographic (the file says {tm.routing_method})"
        )
    owner = {code: f"regions[{i}]" for i, r in enumerate(fleet.regions) for code in r.endpoint.geo_mapping}
    endpoints = {r.endpoint.name.lower() for r in fleet.regions}
    profiles = {tm.profile.lower()}
    for i, nested in enumerate(tm.nested):
        where = f"traffic_manager.nested[{i}]"
        if nested.endpoint.lower() in endpoints:
            problems.append(f"{where}.endpoint: '{nested.endpoint}' is already an endpoint name of the parent profile")
        endpoints.add(nested.endpoint.lower())
        if nested.profile.lower() in profiles:
            problems.append(f"{where}.profile: '{nested.profile}' is the parent's or another nested entry's profile")
        profiles.add(nested.profile.lower())
        for j, region in enumerate(nested.regions):
            if region not in fleet.region_names:
                problems.append(f"{where}.regions[{j}]: '{region}' is not a region of this fleet")
            elif nested.regions.index(region) != j:
                problems.append(f"{where}.regions[{j}]: '{region}' appears more than once")
        if nested.min_child_endpoints > len(nested.regions):
            problems.append(
                f"{where}.min_child_endpoints: {nested.min_child_endpoints} is more than its {len(nested.regions)} "
                "region(s): the nested endpoint would never be Online"
            )
        for code in nested.geo_mapping:
            if code in owner:
                problems.append(
                    f"{where}.geo_mapping: '{code}' is already mapped to {owner[code]}; "
                    "Traffic Manager maps a geography to one endpoint"
                )
            owner.setdefault(code, where)
    return problems


def parse_fleet(data: Any, source: str | Path = "<fleet>") -> Fleet:
    """Validate already-loaded YAML data. Raises FleetError naming `source` on every line."""
    if not isinstance(data, dict):
        raise FleetError([f"{source}: (top level): expected a mapping, got {type(data).__name__}"])
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as err:
        raise FleetError([f"{source}: {line}" for line in _pydantic_problems(err)]) from None
    if isinstance(source, Path):
        fleet = fleet.model_copy(update={"source_path": source.resolve()})
    problems = cross_check(fleet) + (_path_problems(fleet, source) if isinstance(source, Path) else [])
    if problems:
        raise FleetError([f"{source}: {line}" for line in problems])
    return fleet


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file."""
    path = Path(path)
    try:
        data = read_fleet_file(path)
    except OSError as err:
        raise FleetError([f"{path}: cannot read: {err.strerror or type(err).__name__}"]) from None
    except FleetFileError as err:
        raise FleetError([f"{path}: {err}"]) from None
    return parse_fleet(data, path)


def read_fleet_source(path: str | Path) -> str:
    """A fleet file's text, refused like load_fleet refuses it when it cannot be a fleet file."""
    try:
        return read_fleet_text(Path(path))
    except OSError as err:
        raise FleetError([f"{path}: cannot read: {err.strerror or type(err).__name__}"]) from None
    except FleetFileError as err:
        raise FleetError([f"{path}: {err}"]) from None


def fleet_from_text(text: str, path: Path) -> Fleet:
    """Validate a fleet file's content as read from `path` (a run's snapshot of it): relative paths
    in it are resolved against that file's folder."""
    try:
        data = fleet_data(text)
    except FleetFileError as err:
        raise FleetError([f"{path}: {err}"]) from None
    return parse_fleet(data, path)
