"""Release policy: drain refusals, rollout completeness, the traffic a run ends with."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fanout.fleet import load_fleet, parse_fleet
from fanout.policy import (
    EndpointState,
    PolicyError,
    RunRequest,
    chart_values,
    check_drain,
    digest_of,
    final_traffic,
    helm_description,
    rollback_all_targets,
    rollout_status,
    superseding_run,
    traffic_after_failure,
)

REPO = Path(__file__).resolve().parents[2]
FLEET = load_fleet(REPO / "include/fleets/local.yaml")  # 4 regions, weight 100 each, share 50 %, min serving 2
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def endpoints(disabled=(), weight=100):
    return {r: EndpointState(r, "ExternalEndpoints", r not in disabled, weight, "Online") for r in FLEET.region_names}


def test_digest_of():
    assert digest_of(f"127.0.0.1:5101/fanout/hello@{D1}") == D1
    assert digest_of("registry/app:latest") is None
    assert digest_of("registry/app@sha256:abc") is None


def test_drain_allowed_within_the_rules():
    check_drain(FLEET, endpoints(), "westus")
    check_drain(FLEET, endpoints(disabled=["eastus"]), "northeurope")
    check_drain(FLEET, endpoints(disabled=["westus"]), "westus")  # already drained: a re-run is fine


def test_drain_refused_below_min_serving():
    with pytest.raises(PolicyError, match=r"draining westus would leave 1 region\(s\) serving \(westeurope\)"):
        check_drain(FLEET, endpoints(disabled=["eastus", "northeurope"]), "westus")


def test_drain_refused_above_the_share():
    fleet = FLEET.model_copy(update={"min_serving_regions": 1})
    with pytest.raises(PolicyError, match=r"300/400 of the weight out of service .* above rollout.max_drain_share 50%"):
        check_drain(fleet, endpoints(disabled=["eastus", "northeurope"]), "westus")


def test_drain_needs_every_endpoint():
    eps = endpoints()
    del eps["westeurope"]
    with pytest.raises(PolicyError, match=r"no endpoint for region.s. westeurope"):
        check_drain(FLEET, eps, "westus")


def deployment(image=f"r/app@{D1}", replicas=2, generation=2, observed=2, updated=2, available=2, total=2):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": image}]}}},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "replicas": total,
        },
    }


@pytest.mark.parametrize(
    ("dep", "done", "reason"),
    [
        (None, False, "the Deployment does not exist"),
        (deployment(), True, "2/2 replicas available"),
        (deployment(image=f"r/app@{D2}"), False, f"runs r/app@{D2}, not {D1}"),
        (deployment(image="r/app:latest"), False, "not sha256:1111"),
        (deployment(observed=1), False, "generation 2 not yet observed"),
        (deployment(updated=1, total=3), False, "1/2 replicas updated"),
        (deployment(total=3), False, "1 old replica(s) still terminating"),
        (deployment(available=1), False, "1/2 replicas available"),
    ],
)
def test_rollout_status(dep, done, reason):
    status = rollout_status(dep, D1)
    assert status.done is done
    assert reason in status.reason


def test_final_traffic_enables_fresh_and_drains_stale():
    serving = {"eastus": D1, "westus": D1, "northeurope": D1, "westeurope": D2}
    desired, warnings = final_traffic(FLEET, endpoints(disabled=["westus"], weight=7), serving, D1)
    assert {r: (e.enabled, e.weight) for r, e in desired.items()} == {
        "eastus": (True, 100),
        "westus": (True, 100),
        "northeurope": (True, 100),
        "westeurope": (False, 7),
    }
    assert warnings == [f"westeurope serves {D2}, not {D1}: left drained"]


def test_final_traffic_keeps_min_serving_even_if_stale():
    serving = {"eastus": D1, "westus": D2, "northeurope": None, "westeurope": D2}
    desired, warnings = final_traffic(FLEET, endpoints(), serving, D1)
    assert [r for r, e in desired.items() if e.enabled] == ["eastus", "westus"]
    assert "westus does not serve" in warnings[0] and "is enabled: min_serving_regions" in warnings[0]


def test_final_traffic_never_disables_everything():
    fleet = FLEET.model_copy(update={"min_serving_regions": 1})
    desired, _ = final_traffic(fleet, endpoints(), dict.fromkeys(fleet.region_names, D2), D1)
    assert sum(e.enabled for e in desired.values()) == 1


def test_final_traffic_without_a_release_changes_nothing():
    eps = endpoints(disabled=["westus"])
    desired, warnings = final_traffic(FLEET, eps, {}, None)
    assert desired == {r: eps[r] for r in FLEET.region_names} and warnings == []


def test_final_traffic_leaves_regions_outside_the_scope_alone():
    serving = {"eastus": D2, "westus": D1, "northeurope": D2, "westeurope": D2}
    desired, warnings = final_traffic(FLEET, endpoints(), serving, D1, scope=["westus"])
    assert all(e.enabled for e in desired.values()) and warnings == []


def test_final_traffic_brings_back_a_drained_region_to_keep_the_floor():
    serving = {"eastus": D2, "westus": None, "northeurope": D2, "westeurope": D2}
    eps = endpoints(disabled=["eastus", "westus", "northeurope"])
    desired, warnings = final_traffic(FLEET, eps, serving, None)
    assert [r for r, e in desired.items() if e.enabled] == ["eastus", "westeurope"]
    assert warnings == ["eastus was drained but is enabled: min_serving_regions is 2"]


def test_rollback_all_targets_every_region_this_run_upgraded():
    deploys = {
        "westus": {"changed": True, "previous_revision": 3, "revision": 4},  # passed its gates
        "eastus": {"changed": True, "previous_revision": 2, "revision": 5},  # failed, rolled itself back
        "northeurope": {"changed": False, "previous_revision": 7, "revision": 7},  # already live: untouched
        "westeurope": None,  # a later wave that never started
    }
    own = {"eastus": {"rolled_back_to": 2}, "westus": None}
    assert rollback_all_targets(deploys, own) == {"westus": 3}


def test_rollback_all_targets_a_first_install_has_nothing_to_return_to():
    deploys = {"westus": {"changed": True, "previous_revision": None, "revision": 1}}
    assert rollback_all_targets(deploys, {}) == {"westus": None}


def test_rollback_all_targets_a_failed_first_install_that_could_not_roll_back():
    # Its own rollback found nothing to go back to: rollback-all reports it, once.
    deploys = {"eastus": {"changed": True, "previous_revision": None}}
    assert rollback_all_targets(deploys, {"eastus": {"rolled_back_to": None}}) == {"eastus": None}


@pytest.mark.parametrize(
    ("was_enabled", "healthy", "known_good", "enable"),
    [
        (True, True, True, True),  # drained by this run, back on healthy old code
        (True, False, True, False),  # still unhealthy after the rollback: stays drained
        (True, True, False, False),  # a first install that failed: nothing known good runs
        (False, True, True, False),  # drained before this run: the run does not undo that
    ],
)
def test_traffic_after_failure(was_enabled, healthy, known_good, enable):
    assert traffic_after_failure(was_enabled=was_enabled, healthy=healthy, runs_known_good=known_good) is enable


def test_chart_values_pin_the_image_by_digest_per_region():
    values = chart_values(FLEET, "westus", D1, "manual__1", "a" * 40, "main")
    assert values["image"] == {"repository": "127.0.0.1:5102/fanout/hello", "digest": D1}
    assert values["replicaCount"] == 2  # the fleet's own values stay
    assert values["release"] == {"runId": "manual__1", "gitSha": "a" * 40, "sourceRef": "main"}
    assert helm_description("manual__1", "a" * 40, "main") == f"fanout run manual__1 git {'a' * 40} ref main"


def test_the_chart_refuses_values_that_do_not_render():
    from fanout.adapters.helm import HelmError, helm_binary, render_chart

    good = chart_values(FLEET, "westus", D1, "r", "a" * 40, "release/1.2")
    rendered = render_chart(helm_binary(), "hello", FLEET.chart_ref, "hello", good)
    assert 'image: "127.0.0.1:5102/fanout/hello@' + D1 in rendered
    # The Deployment says which commit and ref it runs; the consistency check reads both back.
    assert f'fanout.dev/git-sha: "{"a" * 40}"' in rendered and 'fanout.dev/source-ref: "release/1.2"' in rendered
    cases = [
        ({"image": {"repository": "r/app", "digest": "latest"}}, "at '/image/digest': 'latest' does not match"),
        ({"image": {"repository": "r/app", "digest": ""}}, "Fanout deploys by digest, never by tag"),
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ]
    for change, message in cases:
        with pytest.raises(HelmError, match=message):
            render_chart(helm_binary(), "hello", FLEET.chart_ref, "hello", {**good, **change})


T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def request(run_id, minute, regions=None, dry_run=False, sha="abcdef1"):
    return RunRequest(run_id, T0 + timedelta(minutes=minute), sha, tuple(regions) if regions else None, dry_run)


def test_a_burst_of_merges_is_superseded_by_the_newest():
    me = request("m1", 0)
    queued = [request("m3", 2, sha="ccccccc"), request("m2", 1, sha="bbbbbbb")]
    assert superseding_run(me, queued).run_id == "m3"
    # The newest of the burst goes ahead: nothing queued is newer than it.
    assert superseding_run(queued[0], [me, queued[1]]) is None


def test_only_newer_runs_supersede():
    me = request("m2", 5)
    assert superseding_run(me, [request("m1", 1), me]) is None


def test_a_newer_partial_run_does_not_supersede_a_full_release():
    # A consistency repair of one region, queued behind a merge, must not cancel the merge.
    assert superseding_run(request("merge", 0), [request("repair", 1, regions=["eastus"])]) is None


def test_a_newer_run_covering_my_regions_supersedes_me():
    me = request("repair", 0, regions=["eastus"])
    assert superseding_run(me, [request("merge", 1)]).run_id == "merge"
    assert superseding_run(me, [request("two", 1, regions=["westus", "eastus"])]).run_id == "two"
    assert superseding_run(me, [request("other", 1, regions=["westus"])]) is None


def test_dry_runs_neither_supersede_nor_are_superseded():
    assert superseding_run(request("m1", 0), [request("dry", 1, dry_run=True)]) is None
    assert superseding_run(request("dry", 0, dry_run=True), [request("m2", 1)]) is None


def test_runs_queued_at_the_same_instant_are_ordered_by_run_id():
    a, b = request("merge__a", 0), request("merge__b", 0)
    assert superseding_run(a, [b]).run_id == "merge__b"
    assert superseding_run(b, [a]) is None


def test_run_request_from_conf():
    req = RunRequest.from_conf("r", T0, {"git_sha": "abc1234", "regions": ["eastus"], "dry_run": True})
    assert req == RunRequest("r", T0, "abc1234", ("eastus",), True)
    assert RunRequest.from_conf("r", T0, None) == RunRequest("r", T0, None, None, False, ("no git_sha",))
    typo = RunRequest.from_conf("r", T0, {"git_sha": "abc1234", "regoins": ["x"]}, declared=["git_sha", "regions"])
    assert typo.problems == ("unknown conf key 'regoins'",)


def test_final_traffic_leaves_a_released_warm_standby_as_the_profile_has_it():
    data = FLEET.model_dump(exclude={"source_path"})
    data["regions"][3]["standby"] = "warm"
    fleet = parse_fleet(data)
    serving = dict.fromkeys(fleet.region_names, D1)
    desired, warnings = final_traffic(fleet, endpoints(disabled=["westeurope"]), serving, D1)
    assert not desired["westeurope"].enabled and desired["eastus"].enabled and warnings == []


def test_a_disabled_warm_standby_does_not_eat_the_drain_budget():
    """A warm standby left disabled, as the profile intends, serves nobody: draining one serving
    region (100 of the 300 serving weight) is within 50 %, a second one is not."""
    data = FLEET.model_dump(exclude={"source_path"})
    data["regions"][3]["standby"] = "warm"
    data["min_serving_regions"] = 1
    fleet = parse_fleet(data)
    check_drain(fleet, endpoints(disabled=["westeurope"]), "westus")
    with pytest.raises(PolicyError, match=r"200/300 of the weight"):
        check_drain(fleet, endpoints(disabled=["westeurope", "eastus"]), "westus")
