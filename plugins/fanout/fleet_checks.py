"""Checks of single fleet-file values that a pattern cannot express: URLs and hosts are parsed, not
compared as strings (`localhost.attacker.example` is not loopback), a cron schedule is checked the
way Airflow will check it, and Azure hosts must be Azure's. Pure functions; the field validators in
`fanout.fleet` raise their ValueError, which the fleet file's error line then names."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

# ACR's host suffix in each Azure cloud (keys as in fanout.adapters.azure_credentials.CLOUDS).
ACR_SUFFIXES = {"AzurePublicCloud": ".azurecr.io", "AzureUSGovernment": ".azurecr.us", "AzureChinaCloud": ".azurecr.cn"}
# Keep in sync with airflow.sdk.definitions.timetables._cron.CRON_PRESETS (what Airflow expands).
CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
PROJECT_ENV = "FANOUT_PROJECT_DIR"


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or the name `localhost` itself — parsed, never a string prefix."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def _host(host: str) -> str:
    """`host` if it is an IP address or a DNS name (labels of letters, digits and hyphens)."""
    bare = host.strip("[]") if host.startswith("[") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(
            0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() and label[0] != "-"
            for label in labels
        ):
            raise ValueError(f"{host!r} is not a host name or IP address") from None
        return host
    if address.is_unspecified:
        raise ValueError(f"{host} means every interface, not a host; name the address to use")
    return host


def http_url(url: str) -> str:
    """An http(s) URL with a host, no user:password part and no whitespace."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError("expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user or password (user:pass@); credentials come from connections")
    _host(parts.hostname)
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ValueError("the port is not a number in 1..65535") from None
    return url


def host_port(endpoint: str) -> str:
    """`host[:port]` (IPv6 in brackets), nothing else: no scheme, path, user or wildcard address."""
    parts = urlsplit(f"//{endpoint}")
    if not parts.hostname or parts.path or parts.query or parts.fragment or "@" in endpoint:
        raise ValueError(f"{endpoint!r} is not host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{endpoint!r}: the port is not a number in 1..65535") from None
    if port == 0:
        raise ValueError(f"{endpoint!r}: port 0 is not a port")
    _host(parts.hostname)
    return endpoint


def endpoint_host(endpoint: str) -> str:
    return urlsplit(f"//{endpoint}").hostname or ""


def oci_ref(ref: str) -> str:
    """`oci://host[:port]/path`, without credentials (Helm takes them from its registry login)."""
    parts = urlsplit(ref)
    if parts.scheme != "oci" or not parts.hostname or not parts.path.strip("/"):
        raise ValueError("expected oci://<registry host>/<chart path>")
    if parts.username is not None or "@" in parts.netloc:
        raise ValueError("must not carry a user or password (user:pass@); log Helm in to the registry instead")
    if parts.query or parts.fragment or any(c.isspace() for c in ref):
        raise ValueError("expected oci://<registry host>/<chart path>, without query or spaces")
    host_port(parts.netloc)
    return ref


def acr_host_problem(endpoint: str, registry: str, clouds: tuple[str, ...] = tuple(ACR_SUFFIXES)) -> str | None:
    """Why `endpoint` is not one of `registry`'s own ACR hosts (`<registry><suffix>` or
    `<registry>.<region>.geo<suffix>`, port 443 at most) in one of `clouds`; None when it is. ACR hosts
    receive an Azure token, so no other host may stand in for them."""
    parts = urlsplit(f"//{endpoint}")
    host, name = (parts.hostname or "").rstrip("."), registry.lower()
    suffixes = [ACR_SUFFIXES[c] for c in clouds]

    def regional(suffix: str) -> bool:
        region = host.removeprefix(f"{name}.").removesuffix(f".geo{suffix}")
        return host == f"{name}.{region}.geo{suffix}" and region.isalnum()

    if not any(host == f"{name}{suffix}" or regional(suffix) for suffix in suffixes):
        return (
            f"{endpoint!r} is not a host of ACR registry '{registry}' "
            f"({name}{suffixes[0]} or {name}.<region>.geo{suffixes[0]}): an Azure token is sent there"
        )
    if parts.netloc not in (host, f"{host}:443"):
        return f"{endpoint!r}: ACR serves https on port 443 only"
    return None


def cron_schedule(schedule: str) -> str:
    """A schedule Airflow accepts for a periodic check: a preset or a cron expression croniter parses."""
    from croniter import CroniterBadCronError, CroniterBadDateError, croniter

    if schedule in ("@once", "@continuous"):
        raise ValueError(f"{schedule!r} does not repeat the check; give a cron expression such as '*/15 * * * *'")
    try:
        croniter(CRON_PRESETS.get(schedule, schedule))
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as err:
        raise ValueError(f"{schedule!r} is not a cron expression Airflow accepts ({err})") from None
    return schedule


def project_roots(fleet_file: Path) -> list[Path]:
    """Where a fleet file's paths may point: its own folder, the git work tree that holds it, and the
    folder the Airflow deployment names in $FANOUT_PROJECT_DIR (a deployment without .git)."""
    folder = fleet_file.resolve().parent
    roots = [folder]
    roots += [p for p in (folder, *folder.parents) if (p / ".git").exists()][:1]
    if os.environ.get(PROJECT_ENV):
        roots.append(Path(os.environ[PROJECT_ENV]).resolve())
    return list(dict.fromkeys(roots))


def outside_project(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return not any(resolved == root or resolved.is_relative_to(root) for root in roots)
