"""`python -m localfleet.plain_release`: the release Fanout does, as a plain script — the yardstick.

It imports nothing from Fanout on purpose: only buildah, Helm, HTTP and the Traffic Manager
(stand-in's) ARM REST API, reading the fleet file as plain YAML. Steps: build and push the app
(unless a digest is given; `--label` as CI would, e.g. the commit it is), wait until every
replica serves the digest, then per wave and in parallel per region: disable the endpoint, wait
the DNS TTL and until the edge sees no user request, `helm upgrade --install --wait` pinned by
digest, wait until the edge reports the digest N times in a row, soak, enable the endpoint with
its weight, wait until Traffic Manager's monitor reports it Online. `--no-dns-waits` skips the
three DNS waits (the old yardstick; it lets users reach a region mid-change). The waves come
from the caller (the benchmark passes Fanout's plan, so both do the same work).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "2022-04-01"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def build_and_push(context: Path, destination: str, root: Path, labels: Sequence[str] = ()) -> str:
    base = ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run")]
    local = "localhost/plain-build:latest"
    label_args = [arg for label in labels for arg in ("--label", label)]
    subprocess.run([*base, "bud", "--timestamp", "0", *label_args, "-f", str(context / "Containerfile"), "-t", local,
                    str(context)], check=True, capture_output=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        subprocess.run([*base, "push", "--tls-verify=false", "--digestfile", str(digest_file), local,
                        f"docker://{destination}"], check=True, capture_output=True)  # fmt: skip
        return digest_file.read_text().strip()


def wait_for_replica(endpoint: str, repository: str, digest: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{endpoint}/v2/{repository}/manifests/{digest}"
    while http("HEAD", url, headers={"Accept": MANIFEST_TYPES})[0] != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{endpoint} does not serve {digest} after {timeout:.0f} s")
        time.sleep(0.5)


class Plain:
    def __init__(self, fleet_path: Path, helm: str, context: Path | None = None, dns_waits: bool = True):
        self.path, self.context, self.dns_waits = fleet_path, context, dns_waits
        self.fleet = yaml.safe_load(fleet_path.read_text())
        self.helm = helm
        self.regions = {r["name"]: r for r in self.fleet["regions"]}
        tm = self.fleet["traffic_manager"]
        self.profile_url = (
            f"{tm['base_url']}/subscriptions/{tm['subscription']}/resourceGroups/{tm['resource_group']}"
            f"/providers/Microsoft.Network/trafficmanagerprofiles/{tm['profile']}"
        )
        self.types: dict[str, str] = {}

    def resolve(self, path: str) -> Path:
        return (self.path.parent / Path(path).expanduser()).resolve()

    def tm(self, method: str, suffix: str = "", body: Any = None) -> Any:
        url = f"{self.profile_url}{suffix}?api-version={API_VERSION}"
        for _ in range(10):  # the stand-in, like Azure, may answer 429/5xx now and then
            status, answer = http(method, url, body, {"Authorization": "Bearer plain-script"})
            if 200 <= status < 300:
                return answer
            time.sleep(1)
        raise RuntimeError(f"Traffic Manager {method} {suffix or 'profile'}: HTTP {status}")

    def set_endpoint(self, region: str, enabled: bool) -> None:
        if not self.types:
            for ep in self.tm("GET")["properties"]["endpoints"]:
                self.types[ep["name"]] = ep["type"].rsplit("/", 1)[-1]
        endpoint = self.regions[region]["endpoint"]
        props: dict[str, Any] = {"endpointStatus": "Enabled" if enabled else "Disabled"}
        if enabled:
            props["weight"] = endpoint["weight"]
        self.tm("PATCH", f"/{self.types[endpoint['name']]}/{endpoint['name']}", {"properties": props})

    def helm_upgrade(self, region: str, digest: str, sha: str) -> None:
        app, reg, r = self.fleet["app"], self.fleet["registry"], self.regions[region]
        values = {
            **(app.get("values") or {}),
            "image": {"repository": f"{reg['endpoints'][region]}/{reg['repository']}", "digest": digest},
            "region": region,
            "release": {"runId": f"plain__{sha}", "gitSha": sha},
        }
        kube = r["cluster"]["kubeconfig"]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(values, f)
            f.flush()
            subprocess.run(
                [self.helm, "upgrade", "--install", app["name"], str(self.resolve(app["chart"]["path"])),
                 "-n", app["namespace"], "--create-namespace", "-f", f.name, "--wait",
                 "--timeout", f"{self.fleet['gates']['rollout_timeout_seconds']}s",
                 "--server-side=true", "--force-conflicts",
                 "--kubeconfig", str(self.resolve(kube["path"])), "--kube-context", kube["context"]],
                check=True, capture_output=True,
            )  # fmt: skip

    def edge_serves(self, region: str, digest: str) -> None:
        gate = self.fleet["gates"]["http"]
        deadline, streak = time.monotonic() + gate["timeout_seconds"], 0
        while streak < gate["consecutive_successes"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{region}: the edge does not report {digest}")
            status, body = http("GET", f"{self.regions[region]['edge_url']}/version")
            ok = status == 200 and body.get("digest") == digest and body.get("healthy")
            streak = streak + 1 if ok else 0
            if streak < gate["consecutive_successes"]:
                time.sleep(gate["interval_seconds"])

    # -- DNS: Traffic Manager changes answers only; resolvers keep the old one for the TTL ------------
    def dns_settle(self) -> None:
        """After a disable: the live profile's TTL (the fleet file's as a floor), as Fanout waits."""
        ttl = (self.tm("GET")["properties"].get("dnsConfig") or {}).get("ttl") or 0
        time.sleep(max(ttl, self.fleet["traffic_manager"].get("dns_ttl_seconds", 30)))

    def confirm_drained(self, region: str, quiet: float = 2.0) -> None:
        """Until the edge has seen no user request for `quiet` seconds (or never saw one)."""
        path = self.fleet["gates"]["http"].get("traffic_path")
        if not path:
            return
        deadline = time.monotonic() + max(30, 3 * self.fleet["traffic_manager"].get("dns_ttl_seconds", 30))
        while True:
            status, seen = http("GET", self.regions[region]["edge_url"].rstrip("/") + path)
            if status == 200 and (seen.get("last_at") is None or seen["now"] - seen["last_at"] >= quiet):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{region}: users still arrive after the drain and the TTL")
            time.sleep(0.5)

    def wait_online(self, region: str, timeout: float = 300) -> None:
        """After an enable: until the monitor reports the endpoint Online, before the next wave drains."""
        name = self.regions[region]["endpoint"]["name"]
        deadline = time.monotonic() + timeout
        while self.tm("GET", f"/{self.types[name]}/{name}")["properties"].get("endpointMonitorStatus") != "Online":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{region}: Traffic Manager never reported {name} Online")
            time.sleep(0.5)

    def release_region(self, region: str, digest: str, sha: str) -> None:
        self.set_endpoint(region, enabled=False)
        if self.dns_waits:
            self.dns_settle()
            self.confirm_drained(region)
        self.helm_upgrade(region, digest, sha)
        self.edge_serves(region, digest)
        time.sleep(self.fleet["gates"]["soak_seconds"])
        self.set_endpoint(region, enabled=True)
        if self.dns_waits:
            self.wait_online(region)

    def release(self, waves: list[list[str]], sha: str, digest: str | None, labels: Sequence[str] = ()) -> str:
        reg = self.fleet["registry"]
        if digest is None:
            home = reg["endpoints"][reg["home"]]
            digest = build_and_push(self.context, f"{home}/{reg['repository']}:{sha[:12]}",
                                    self.path.parent / "plain-buildah", labels)  # fmt: skip
        targets = [r for wave in waves for r in wave]
        with ThreadPoolExecutor(max(len(targets), 1)) as pool:
            waits = [pool.submit(wait_for_replica, reg["endpoints"][r], reg["repository"], digest,
                                 reg.get("replication_timeout_seconds", 300)) for r in targets]  # fmt: skip
            for wait in waits:
                wait.result()
            for wave in waves:
                for done in [pool.submit(self.release_region, r, digest, sha) for r in wave]:
                    done.result()
        return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.plain_release", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", type=Path, required=True)
    parser.add_argument("--helm", required=True, help="the helm binary")
    parser.add_argument("--waves", required=True, help='JSON list of waves, e.g. [["westus"],["eastus"]]')
    parser.add_argument("--git-sha", required=True)
    parser.add_argument("--image", help="release this digest instead of building")
    parser.add_argument("--context", type=Path, required=True, help="the folder to build (the app at this sha)")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE, an OCI label for the build")
    parser.add_argument("--no-dns-waits", action="store_true", help="skip the TTL, drained and Online waits")
    args = parser.parse_args(argv)
    started = time.monotonic()
    plain = Plain(args.fleet, args.helm, args.context, dns_waits=not args.no_dns_waits)
    digest = plain.release(json.loads(args.waves), args.git_sha, args.image, args.label)
    print(json.dumps({"digest": digest, "seconds": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
