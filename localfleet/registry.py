"""One real OCI registry per region: Debian's docker-registry (CNCF distribution 2.8).

Each region's docker-registry listens on an internal loopback port (picked once, kept in
`<state_dir>/registry/<region>/internal-port`) and keeps its blobs under
`<state_dir>/registry/<region>/data`. Plain http on loopback, no auth, delete enabled, relative
upload URLs (the Azure SDK needs them). Clients reach it through its front
(localfleet.registry_front) on the fleet file's `registry.endpoints[region]`, which relays every
request and answers 401/403 while the region's `registry-auth` fault knob is set.

    python -m localfleet.registry up|down|status --fleet include/fleets/local.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from fanout.adapters.registry import MANIFEST_TYPES
from fanout.fleet import Fleet, load_fleet
from localfleet import procs

REGISTRY_BIN = "/usr/bin/docker-registry"

# distribution 2.8 answers 404 MANIFEST_UNKNOWN for an OCI manifest unless Accept names
# its type, so every manifest request carries the same types a release asks for.
MANIFEST_ACCEPT = MANIFEST_TYPES


class RegistryError(RuntimeError):
    """A registry did not answer, or answered something other than yes or no."""


def ensure_debian_packages(packages: list[str]) -> None:
    """Install the Debian packages that are missing (needs root; apt must reach its mirror)."""
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {' '.join(missing)}: run `apt-get install {' '.join(missing)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another session may hold the dpkg lock; wait for it instead of failing.
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    steps = [
        ["apt-get", *lock, "update", "-qq"],
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *missing],
    ]
    for argv in steps:
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-10:]
            raise RuntimeError(f"`{' '.join(argv)}` failed ({done.returncode}):\n" + "\n".join(tail))


def proc_name(region: str) -> str:
    """The docker-registry process of `region`."""
    return f"registry-{region}"


def front_name(region: str) -> str:
    """The front process of `region` (localfleet.registry_front), on the fleet file's endpoint."""
    return f"registry-front-{region}"


def _config(endpoint: str, data_dir: Path) -> dict:
    return {
        "version": 0.1,
        # Access logs would grow with every replicator poll (twice a second).
        "log": {"level": "warn", "accesslog": {"disabled": True}, "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": endpoint, "relativeurls": True, "secret": "fanout-local-not-a-secret"},
    }


def internal_endpoint(region: str, state_dir: str | Path) -> str:
    """Where `region`'s docker-registry listens, behind its front: a loopback port picked once."""
    saved = Path(state_dir) / "registry" / region / "internal-port"
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(f"{procs.free_port()}\n")
    return f"127.0.0.1:{int(saved.read_text())}"


def _serving_at(config: Path) -> str | None:
    try:
        return yaml.safe_load(config.read_text())["http"]["addr"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _start_backend(region: str, state_dir: str | Path) -> int:
    name, base = proc_name(region), Path(state_dir) / "registry" / region
    config = base / "config.yml"
    endpoint = internal_endpoint(region, state_dir)
    running = procs.pid(name, state_dir)
    if running is not None and _serving_at(config) == endpoint:
        return running
    # One started before it had a front listens on the fleet's endpoint, where the front goes.
    procs.stop(name, state_dir)
    if procs.port_open(*procs.split_hostport(endpoint)):
        # Someone else took the saved port meanwhile: pick another one.
        (base / "internal-port").unlink()
        endpoint = internal_endpoint(region, state_dir)
    (base / "data").mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(_config(endpoint, base / "data"), sort_keys=False))
    return procs.start(
        name, [REGISTRY_BIN, "serve", str(config)], state_dir, ready=lambda: registry_up(endpoint), timeout=20
    )


def start_registry(fleet: Fleet, region: str, state_dir: str | Path) -> int:
    """Start `region`'s registry and its front (each a no-op if it runs); returns the registry's
    pid once the fleet's endpoint accepts connections."""
    if not Path(REGISTRY_BIN).exists():
        ensure_debian_packages(["docker-registry"])
    endpoint = fleet.registry.endpoint(region)
    registry_pid = _start_backend(region, state_dir)
    name = front_name(region)
    if procs.pid(name, state_dir) is not None:
        return registry_pid
    host, port = procs.split_hostport(endpoint)
    if procs.port_open(host, port):
        raise procs.ProcError(f"{name}: {endpoint} is already taken by a process that is not ours")
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "localfleet.registry_front", "--listen", endpoint, "--region", region]
    argv += ["--backend", internal_endpoint(region, state_dir), "--state-dir", str(Path(state_dir).resolve())]
    procs.start(
        name, argv, state_dir, env={"PYTHONPATH": str(root)}, cwd=root,
        ready=lambda: procs.port_open(host, port), timeout=20,
    )  # fmt: skip
    return registry_pid


def stop_registry(fleet: Fleet, region: str, state_dir: str | Path) -> bool:
    """Stop `region`'s front, then its registry; True if either was running."""
    front = procs.stop(front_name(region), state_dir)
    return procs.stop(proc_name(region), state_dir) or front


def _request(method: str, url: str, accept: str | None = None, timeout: float = 2.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except (OSError, urllib.error.URLError) as err:
        raise RegistryError(f"{method} {url}: {getattr(err, 'reason', err)}") from None


def registry_up(endpoint: str) -> bool:
    return registry_answer(endpoint) == "up"


def registry_answer(endpoint: str) -> str:
    """What GET /v2/ gets: "up", "DOWN" (no answer), or "HTTP 403" and the like (a fault knob;
    502 from a front whose registry is down)."""
    try:
        status = _request("GET", f"http://{endpoint}/v2/", timeout=1.0)[0]
    except RegistryError:
        return "DOWN"
    return "up" if status == 200 else f"HTTP {status}"


def manifest_digest(endpoint: str, repository: str, reference: str, accept: str | None = MANIFEST_ACCEPT) -> str | None:
    """The digest a tag or digest resolves to, None if absent. RegistryError if it cannot tell."""
    url = f"http://{endpoint}/v2/{repository}/manifests/{reference}"
    for pause in (0.05, 0.2, 0.5):
        status, headers, _ = _request("HEAD", url, accept=accept)
        if status < 500:
            break
        # distribution writes a manifest's link file in place: a HEAD that reads it while a
        # copy (re)writes it gets 500 "invalid checksum digest format". Ask again.
        time.sleep(pause)
    if status == 200:
        return headers.get("Docker-Content-Digest") or reference
    if status == 404:
        return None
    raise RegistryError(f"HEAD {url}: HTTP {status}")


def has_manifest(endpoint: str, repository: str, digest: str) -> bool:
    """True if the registry serves `digest`; False on 404; RegistryError if it cannot tell."""
    return manifest_digest(endpoint, repository, digest) is not None


def list_repositories(endpoint: str) -> list[str]:
    url = f"http://{endpoint}/v2/_catalog"
    status, _, body = _request("GET", url)
    if status != 200:
        raise RegistryError(f"GET {url}: HTTP {status}")
    return sorted(json.loads(body).get("repositories") or [])


def list_tags(endpoint: str, repository: str) -> list[str]:
    url = f"http://{endpoint}/v2/{repository}/tags/list"
    status, _, body = _request("GET", url)
    if status == 404:  # NAME_UNKNOWN: nothing was ever pushed to this repository
        return []
    if status != 200:
        raise RegistryError(f"GET {url}: HTTP {status}")
    return sorted(json.loads(body).get("tags") or [])


def tag_digests(endpoint: str, repository: str) -> dict[str, str]:
    """tag -> digest for every tag of `repository` (a tag deleted meanwhile is left out)."""
    out = {}
    for tag in list_tags(endpoint, repository):
        digest = manifest_digest(endpoint, repository, tag)
        if digest is not None:
            out[tag] = digest
    return out


def list_digests(endpoint: str, repository: str) -> list[str]:
    """The distinct digests the tags of `repository` point at."""
    return sorted(set(tag_digests(endpoint, repository).values()))


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.registry", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--fleet", required=True, type=Path)
    parser.add_argument("--state-dir", type=Path, default=procs.DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    fleet = load_fleet(args.fleet)
    for region in fleet.region_names:
        endpoint = fleet.registry.endpoint(region)
        if args.action == "up":
            t0 = time.monotonic()
            pid = start_registry(fleet, region, args.state_dir)
            print(f"{region:12} {endpoint:20} pid {pid} ({time.monotonic() - t0:.2f}s)")
        elif args.action == "down":
            print(f"{region:12} {'stopped' if stop_registry(fleet, region, args.state_dir) else 'not running'}")
        else:
            answer = registry_answer(endpoint)
            digests = list_digests(endpoint, fleet.registry.repository) if answer == "up" else []
            print(f"{region:12} {endpoint:20} {answer:8} {' '.join(d[:19] for d in digests)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
