"""Registries, replication and its fault knobs on real local registries (Debian docker-registry)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.registry import OciRegistry, RegistryUnusable
from fanout.fleet import Fleet
from fanout.provenance import REVISION, SOURCE, build_labels
from localfleet import procs, registry, replicator
from localfleet.faults import read_faults, update_faults
from localfleet.replicator import Replicator, read_state
from localfleet.testing import wait_until

pytestmark = pytest.mark.localfleet

REPO = "fanout/hello"
ROOT = Path(__file__).resolve().parents[2]
# eastus is home; westus gets copies at once, northeurope late; westeurope is for stuck tests.
LAGS = {"eastus": 0, "westus": 0, "northeurope": 4, "westeurope": 0}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, make_fleet: Callable[..., Fleet]) -> Iterator[Fleet]:
    """Four registries and a replicator process on free ports, for the whole module."""
    fleet = make_fleet(tmp_path_factory.mktemp("fleet"), LAGS)
    state = fleet.source_path.parent / "state"
    t0 = time.monotonic()
    try:
        for region in fleet.region_names:
            registry.start_registry(fleet, region, state)
        print(f"4 registries up in {time.monotonic() - t0:.2f}s", file=sys.stderr)
        replicator.start_replicator(fleet, state)
        yield fleet
    finally:
        replicator.stop_replicator(state)
        for region in fleet.region_names:
            registry.stop_registry(fleet, region, state)


def state_dir(fleet: Fleet) -> Path:
    return fleet.source_path.parent / "state"


def home(fleet: Fleet) -> str:
    return fleet.registry.endpoint("eastus")


def arrival(fleet: Fleet, region: str, digest: str, timeout: float) -> float | None:
    """Seconds until `region` serves `digest` (polled every 50 ms), None if not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if registry.has_manifest(fleet.registry.endpoint(region), REPO, digest):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_procs_refuses_and_names_the_log(tmp_path: Path) -> None:
    with pytest.raises(procs.ProcError) as err:
        procs.start("boom", ["sh", "-c", "echo cannot bind; exit 3"], tmp_path, ready=lambda: False)
    assert "boom: exited with code 3" in str(err.value)
    assert "cannot bind" in str(err.value) and str(procs.log_path("boom", tmp_path)) in str(err.value)
    first = procs.start("sleeper", ["sleep", "60"], tmp_path)
    assert procs.start("sleeper", ["sleep", "60"], tmp_path) == first  # idempotent
    assert procs.stop("sleeper", tmp_path) and not procs.alive("sleeper", tmp_path)
    assert not procs.stop("sleeper", tmp_path)


def test_registries_answer_and_start_is_idempotent(fleet: Fleet) -> None:
    for region in fleet.region_names:
        assert registry.registry_up(fleet.registry.endpoint(region))
    pid = procs.pid(registry.proc_name("westus"), state_dir(fleet))
    assert registry.start_registry(fleet, "westus", state_dir(fleet)) == pid


def test_has_manifest_needs_the_accept_header(fleet: Fleet, push_image: Callable[[str, str], str]) -> None:
    digest = push_image(f"{home(fleet)}/{REPO}:accept", "accept")
    bare = urllib.request.Request(f"http://{home(fleet)}/v2/{REPO}/manifests/{digest}", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bare, timeout=2)
    assert err.value.code == 404  # distribution 2.8 hides OCI manifests from a request without Accept
    assert registry.has_manifest(home(fleet), REPO, digest)
    assert not registry.has_manifest(home(fleet), REPO, "sha256:" + "0" * 64)
    assert digest in registry.list_digests(home(fleet), REPO)


def test_copies_arrive_after_each_regions_lag(fleet: Fleet, push_image: Callable[[str, str], str]) -> None:
    pushed = time.monotonic()
    digest = push_image(f"{home(fleet)}/{REPO}:lag", "lag")
    fast = arrival(fleet, "westus", digest, timeout=3)
    assert fast is not None, "a region with lag 0 should have the image within a second or two"
    assert not registry.has_manifest(fleet.registry.endpoint("northeurope"), REPO, digest)
    slow = arrival(fleet, "northeurope", digest, timeout=8)
    assert slow is not None
    assert time.monotonic() - pushed >= LAGS["northeurope"]
    # The replicator records a copy just after skopeo returns, so the file may trail the registry.
    regions = wait_until(
        lambda: (rs := read_state(state_dir(fleet))["digests"][digest]["regions"]) and "northeurope" in rs and rs,
        timeout=2, interval=0.05, what="replication.json records the copy",
    )  # fmt: skip
    assert LAGS["northeurope"] <= regions["northeurope"]["waited"] < LAGS["northeurope"] + 1.5
    assert registry.tag_digests(fleet.registry.endpoint("northeurope"), REPO)["lag"] == digest


def test_lag_override_and_stuck_region(fleet: Fleet, push_image: Callable[[str, str], str]) -> None:
    update_faults(state_dir(fleet), replica_lag={"westus": 3}, replica_stuck=["westeurope"])
    try:
        digest = push_image(f"{home(fleet)}/{REPO}:stuck", "stuck")
        assert arrival(fleet, "westus", digest, timeout=1.5) is None, "the 3 s lag override was ignored"
        assert arrival(fleet, "westus", digest, timeout=5) is not None
        assert arrival(fleet, "westeurope", digest, timeout=2) is None, "a stuck region received a copy"
        update_faults(state_dir(fleet), replica_stuck=None)
        assert arrival(fleet, "westeurope", digest, timeout=3) is not None, "no catch-up after clearing stuck"
    finally:
        update_faults(state_dir(fleet), replica_lag=None, replica_stuck=None)
    assert read_faults(state_dir(fleet)) == {}


def test_replicator_logic_with_fake_clock(fleet: Fleet, push_image: Callable[[str, str], str], tmp_path: Path) -> None:
    """Drive Replicator.step on a fake clock with a recording copier: exact lag boundaries,
    a retry after a failed copy, and no recopy after a restart."""
    digest = push_image(f"{home(fleet)}/{REPO}:clock", "clock")
    copies: list[str] = []
    failing = {fleet.registry.endpoint("northeurope")}
    now = [1000.0]

    def copier(src: str, dest: str) -> None:
        if dest.split("/")[0] in failing:
            raise RuntimeError("connection refused")
        copies.append(dest)

    def arrived(region: str) -> bool:
        # A digest travels with its tag when it has one (a single manifest PUT).
        return f"{fleet.registry.endpoint(region)}/{REPO}:clock" in copies

    rep = Replicator(fleet, tmp_path, copier=copier, clock=lambda: now[0])
    rep.step()
    assert arrived("westus") and arrived("westeurope") and not arrived("northeurope")
    now[0] = 1003.9
    rep.step()
    assert not arrived("northeurope")  # 0.1 s before its 4 s lag
    now[0] = 1004.0
    rep.step()
    assert not arrived("northeurope")  # due, but its registry "refuses"
    failing.clear()
    now[0] = 1005.0
    rep.step()
    assert not arrived("northeurope"), "retried before the retry delay"
    now[0] = 1006.5
    rep.step()
    assert arrived("northeurope")
    assert read_state(tmp_path)["digests"][digest]["regions"]["northeurope"]["waited"] == 6.5
    copies.clear()
    Replicator(fleet, tmp_path, copier=copier, clock=lambda: now[0]).step()
    assert copies == [], "a restarted replicator copied again"


def test_a_labelled_build_is_read_back_by_tag_and_by_digest(fleet: Fleet, tmp_path: Path) -> None:
    """What the release's reuse and CI-image checks read: the labels of the image config blob."""
    context = tmp_path / "ctx"
    shutil.copytree(ROOT / "include/app", context)
    (context / "VERSION").write_text(f"labels-{time.time_ns()}\n")
    builder = BuildahBuilder(tmp_path / "buildah", insecure=True)
    sha, url = "ab" * 20, "http://127.0.0.1:1/team/app.git"
    digest = builder.build_and_push(context, f"{home(fleet)}/{REPO}:{sha}", build_labels(sha, url))
    reader = OciRegistry(home(fleet), insecure=True)
    found = reader.image_labels(REPO, sha)
    assert found is not None and found[0] == digest
    # The --label flags win over the Containerfile's own LABEL org.opencontainers.image.source.
    assert (found[1][REVISION], found[1][SOURCE]) == (sha, url), found[1]
    assert reader.image_labels(REPO, digest) == found
    assert reader.image_labels(REPO, "cd" * 20) is None
    # The same tree and labels build the same digest (--timestamp 0).
    assert builder.build_and_push(context, f"{home(fleet)}/{REPO}:{sha}", build_labels(sha, url)) == digest


def _delete_at_home(fleet: Fleet, digest: str) -> None:
    request = urllib.request.Request(f"http://{home(fleet)}/v2/{REPO}/manifests/{digest}", method="DELETE")
    with contextlib.suppress(urllib.error.HTTPError):  # already deleted by another region's copy
        urllib.request.urlopen(request, timeout=5).close()


def test_a_digest_deleted_at_home_and_pushed_again_is_replicated_again(
    fleet: Fleet, push_image: Callable[[str, str], str], tmp_path: Path
) -> None:
    """Rebuilding a reverted commit gives its old digest back: once seen deleted at home, a digest
    must still be copied when it is pushed again."""
    digest = push_image(f"{home(fleet)}/{REPO}:again", "again")
    copies: list[str] = []
    deleting = [True]

    def copier(src: str, dest: str) -> None:
        if deleting[0] and src.endswith(digest):
            _delete_at_home(fleet, digest)  # deleted while the copy ran
            raise RuntimeError("manifest unknown")
        copies.append(dest)

    now = [1000.0]
    rep = Replicator(fleet, tmp_path, copier=copier, clock=lambda: now[0])
    rep.step()
    assert read_state(tmp_path)["digests"][digest].get("gone"), "the deletion was not noticed"
    deleting[0] = False
    assert push_image(f"{home(fleet)}/{REPO}:again", "again") == digest
    now[0] += 60
    rep.step()
    assert f"{fleet.registry.endpoint('westus')}/{REPO}:again" in copies, "a digest back at home was not copied"


def test_a_replication_record_of_another_fleet_is_not_believed(
    fleet: Fleet, push_image: Callable[[str, str], str], tmp_path: Path
) -> None:
    """replication.json written for another fleet (here: another home region) says nothing true
    about this one's registries: the replicator starts afresh instead of skipping 'done' copies."""
    digest = push_image(f"{home(fleet)}/{REPO}:other-fleet", "other-fleet")
    done = {"at": 1.0, "waited": 0.0, "lag": 0.0}
    record = {  # every copy and tag "done", as the other fleet's registries had them
        "home": "westus", "repository": REPO,
        "digests": {digest: {"seen": 1.0, "regions": dict.fromkeys(fleet.region_names, done)}},
        "tags": {"other-fleet": {"digest": digest, "seen": 1.0}},
        "region_tags": {r: {"other-fleet": digest} for r in fleet.region_names},
    }  # fmt: skip
    (tmp_path / "replication.json").write_text(json.dumps(record))
    copies: list[str] = []
    Replicator(fleet, tmp_path, copier=lambda src, dest: copies.append(dest), clock=lambda: 1000.0).step()
    assert f"{fleet.registry.endpoint('westus')}/{REPO}:other-fleet" in copies
    assert read_state(tmp_path)["home"] == "eastus"


def get_v2(endpoint: str) -> tuple[int, dict[str, str], dict]:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/v2/", timeout=2) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def test_the_front_carries_a_push_and_a_pull_and_the_auth_knob_flips_its_answer(
    fleet: Fleet, push_image: Callable[[str, str], str], tmp_path: Path
) -> None:
    region, state = "westeurope", state_dir(fleet)
    front, inside = fleet.registry.endpoint(region), registry.internal_endpoint(region, state)
    assert front != inside and procs.alive(registry.front_name(region), state)
    # A push through the front (buildah: chunked blob uploads), a pull back through it (skopeo).
    digest = push_image(f"{front}/fanout/front:push", f"front-{time.time_ns()}")
    assert registry.has_manifest(inside, "fanout/front", digest), "the push did not reach the registry behind"
    pulled = tmp_path / "pulled"
    argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{front}/fanout/front@{digest}"]
    subprocess.run([*argv, f"dir:{pulled}"], check=True, capture_output=True, timeout=60)
    assert len(list(pulled.iterdir())) >= 3  # manifest, config and layer blobs
    reader = OciRegistry(front, insecure=True)
    assert reader.has_manifest("fanout/front", digest)

    update_faults(state, registry_auth={region: 403})
    try:
        status, _, body = get_v2(front)
        assert (status, body["errors"][0]["code"]) == (403, "DENIED")
        with pytest.raises(RegistryUnusable, match=rf"registry {front}: HEAD manifest answered 403"):
            reader.has_manifest("fanout/front", digest)
        assert registry.has_manifest(home(fleet), REPO, "sha256:" + "0" * 64) is False, "other regions still serve"
        update_faults(state, registry_auth={region: 401})
        status, headers, body = get_v2(front)
        assert (status, body["errors"][0]["code"]) == (401, "UNAUTHORIZED")
        assert headers["WWW-Authenticate"].startswith(f'Bearer realm="http://{front}/'), headers
        with pytest.raises(RegistryUnusable, match="answered 401"):
            reader.has_manifest("fanout/front", digest)
    finally:
        update_faults(state, registry_auth=None)
    assert reader.has_manifest("fanout/front", digest), "clearing the knob did not restore service at once"


def test_a_stopped_registry_leaves_no_process_and_starts_again(fleet: Fleet) -> None:
    region, state = "westeurope", state_dir(fleet)
    names = (registry.proc_name(region), registry.front_name(region))
    pids = [procs.pid(name, state) for name in names]
    assert all(pids), pids
    assert registry.stop_registry(fleet, region, state)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "a registry or front process outlived stop"
    assert not procs.port_open(*procs.split_hostport(fleet.registry.endpoint(region)))
    registry.start_registry(fleet, region, state)
    assert registry.registry_up(fleet.registry.endpoint(region))
