"""Promise 10 on the real local fleet: a run builds exactly the commit it names, from the fleet's
git server, and the image says which commit it is (its revision label, its tag).

Two merges with different content give two digests and every region ends on the second; a commit
already built is never built again; a commit the server does not have on `source_ref`, a
malformed repository URL, a commit whose Containerfile is broken and a CI image labelled as
another commit are all refused before any region is drained."""

from __future__ import annotations

import time

import pytest
import yaml
from release_checks import TrafficWatch, history, new_commit, snapshot, timed, variant_fleet

from fanout.adapters.builder import BuildahBuilder
from fanout.adapters.git_source import GitRepository
from fanout.adapters.registry import OciRegistry
from fanout.cache import cache_dir
from fanout.provenance import REVISION, SOURCE, build_labels

pytestmark = pytest.mark.localfleet


def home(fleet) -> OciRegistry:
    return OciRegistry(fleet.registry.endpoint(fleet.registry.home), insecure=fleet.registry.insecure)


def assert_refused_before_any_drain(fleet, run, before, watch, named: str, task: str = "build") -> None:
    assert run.returncode != 0, run.tail()
    assert named in run.segments.get(task, run.output), run.tail()
    states = run.states()
    assert states[task] == "failed", states
    drains = {t: s for t, s in states.items() if t.endswith(".drain") or t.endswith(".helm_deploy")}
    assert set(drains.values()) <= {"upstream_failed", "skipped", None}, drains
    assert snapshot(fleet) == before
    assert watch.ever_drained() == set(), watch.report()


@pytest.mark.timeout(1800)  # three releases on a shared, loaded machine
def test_two_merges_give_two_digests_and_a_commit_is_never_built_twice(local_fleet, release):
    started = time.monotonic()
    fleet = local_fleet.fleet
    url, tag = fleet.app.source.git.url, f"{fleet.registry.endpoint('eastus')}/{fleet.registry.repository}"
    first, second = new_commit(fleet, "merge-1"), new_commit(fleet, "merge-2")

    # The first merge, to the canary region only (it is the build that matters here).
    run1 = release({"git_sha": first, "regions": ["westus"]})
    assert run1.returncode == 0, run1.tail()
    d1 = snapshot(fleet)["westus"].digest
    assert f"built and pushed {tag}:{first} as {d1}" in run1.segments["build"], run1.segments["build"]
    # The second merge, everywhere: another digest, and every region ends on it.
    run2 = release({"git_sha": second})
    assert run2.returncode == 0, run2.tail()
    after2 = snapshot(fleet)
    d2 = after2["westus"].digest
    assert f"built and pushed {tag}:{second} as {d2}" in run2.segments["build"], run2.segments["build"]
    assert d2 != d1 and {s.digest for s in after2.values()} == {d2}, after2
    assert all(s.enabled for s in after2.values()), after2

    # Each image says which commit it is, and sits under its commit's tag.
    assert home(fleet).image_labels(fleet.registry.repository, first)[0] == d1
    digest, labels = home(fleet).image_labels(fleet.registry.repository, second)
    assert digest == d2 and labels[REVISION] == second and labels[SOURCE] == url

    # Re-triggering the first merge (by a short sha): its digest is reused, nothing is built, and
    # only the region it was asked for changes.
    untouched = {r: len(history(fleet, r)) for r in fleet.region_names if r != "westus"}
    run3 = release({"git_sha": first[:8], "regions": ["westus"]})
    assert run3.returncode == 0, run3.tail()
    assert f"reusing {d1}" in run3.segments["build"] and "built and pushed" not in run3.segments["build"]
    final = snapshot(fleet)
    assert final["westus"].digest == d1 and all(final[r].digest == d2 for r in untouched), final
    assert {r: len(history(fleet, r)) for r in untouched} == untouched
    assert history(fleet, "westus")[-1].description.endswith(f"git {first} ref main")
    timed("two merges, then the first re-triggered", started)


@pytest.mark.parametrize("case", ["unknown", "other-branch"])
def test_a_commit_not_on_the_source_ref_is_refused(local_fleet, release, case):
    fleet = local_fleet.fleet
    sha = "0" * 40 if case == "unknown" else new_commit(fleet, "side", branch="side-branch")
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": sha, "source_ref": "main"})
    named = f"git_sha: {sha} is not a commit reachable from source_ref 'main' of {fleet.app.source.git.url}"
    assert_refused_before_any_drain(fleet, run, before, watch, named)


def test_a_malformed_repository_url_is_refused_naming_the_field(local_fleet, release, tmp_path):
    fleet = local_fleet.fleet
    path = variant_fleet(fleet, tmp_path)
    data = yaml.safe_load(path.read_text())
    data["app"]["source"]["git"]["url"] = "http//127.0.0.1/hello.git"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": new_commit(fleet, "url")}, fleet_path=path, timeout=240)
    assert run.returncode != 0, run.tail()
    assert f"{path}: app.source.git.url: 'http//127.0.0.1/hello.git' is not an https:// repository URL" in run.output
    assert snapshot(fleet) == before and watch.ever_drained() == set(), watch.report()


def test_a_broken_containerfile_fails_the_build_with_buildahs_message(local_fleet, release):
    fleet = local_fleet.fleet
    sha = new_commit(fleet, "broken", containerfile="FROM scratch\nCOPY no-such-file /srv/\n")
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": sha})
    assert_refused_before_any_drain(fleet, run, before, watch, "buildah build failed")
    assert "no-such-file" in run.segments["build"], run.segments["build"]


def test_a_ci_image_labelled_as_another_commit_is_refused(local_fleet, release):
    fleet = local_fleet.fleet
    url, registry = fleet.app.source.git.url, fleet.registry
    merged, other = new_commit(fleet, "ci-merged"), new_commit(fleet, "ci-other")
    builder = BuildahBuilder(cache_dir() / "buildah", insecure=registry.insecure)
    repo = GitRepository(url)
    with repo.export(repo.resolve(other, "main"), fleet.app.source.git.context_path) as context:
        destination = f"{registry.endpoint(registry.home)}/{registry.repository}:ci-{other}"
        digest = builder.build_and_push(context, destination, build_labels(other, url))
    before = snapshot(fleet)
    with TrafficWatch(fleet) as watch:
        run = release({"git_sha": merged, "image": digest})
    named = f"image: {digest} is labelled as commit {other}, but this run releases git_sha {merged}"
    assert_refused_before_any_drain(fleet, run, before, watch, named)
