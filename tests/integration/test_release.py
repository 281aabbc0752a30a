"""The release DAG on the real local fleet (control planes, registries, Traffic Manager stand-in)."""

import subprocess

import pytest

from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential

pytestmark = pytest.mark.localfleet


def git_sha() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def traffic(fleet):
    tm = fleet.traffic_manager
    with AzureTrafficManager(
        StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url
    ) as client:
        return client.endpoints()


def serving(fleet, region):
    import json
    import urllib.request

    with urllib.request.urlopen(fleet.region(region).edge_url + "/version", timeout=5) as response:
        return json.loads(response.read())["digest"]


def test_a_release_reaches_every_region(local_fleet, run_dag):
    done = run_dag("release_hello", {"git_sha": git_sha()})
    assert done.returncode == 0, done.stdout[-4000:]
    assert "state=success" in done.stdout
    digests = {serving(local_fleet.fleet, r) for r in local_fleet.fleet.region_names}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:")
    endpoints = traffic(local_fleet.fleet)
    assert all(e.enabled and e.weight == 100 for e in endpoints.values()), endpoints
