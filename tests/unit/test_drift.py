"""Consistency classification: every class, the precedence between them, first-seen times,
what a repair may do, and that the report stays JSON-able and free of secrets."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from fanout.drift import (
    DRIFTED,
    HELD_BACK,
    IN_SYNC,
    NO_RELEASE,
    STALE,
    STUCK,
    TRAFFIC,
    UNREACHABLE,
    age,
    classify_fleet,
    content_state,
    first_seen,
    redact,
    repair_plan,
    table,
    traffic_problem,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WEIGHTS = {"eastus": 100, "westus": 100, "northeurope": 100, "westeurope": 100}
DESIRED = {"digest": D2, "git_sha": "a" * 40, "chart_version": "0.1.0", "run_id": "manual__1"}


def obs(digest=D2, helm_digest=None, status="deployed", revision=3, pods=None, enabled=True, weight=100, **dep):
    helm_digest = digest if helm_digest is None else helm_digest
    deployment = {"image": f"r/app@{digest}", "digest": digest, "replicas": 2, "updated": 2, "available": 2,
                  "generation": 3, "observed_generation": 3, **dep}  # fmt: skip
    return {
        "reachable": True,
        "error": None,
        "deployment": deployment,
        "pods": [digest, digest] if pods is None else pods,
        "helm": {"revision": revision, "status": status, "digest": helm_digest, "rollback_to": revision - 1},
        "replica_has_digest": True,
        "endpoint": {"name": "x", "enabled": enabled, "weight": weight, "monitor_status": "Online"},
    }


def fleet(**regions):
    return {r: regions.get(r, obs()) for r in WEIGHTS}


# -- one region's content ------------------------------------------------------------


def test_in_sync():
    assert content_state(D2, obs())[0] == IN_SYNC


def test_unreachable_when_not_observed_or_no_answer():
    assert content_state(D2, None) == (UNREACHABLE, "not observed: the observe task failed (see its log)")
    down = {"reachable": False, "error": "westus: cluster unreachable: connection refused"}
    assert content_state(D2, down) == (UNREACHABLE, down["error"])


def test_stuck_when_helm_is_pending():
    state, why = content_state(D2, obs(status="pending-upgrade"))
    assert state == STUCK and "pending-upgrade" in why


def test_stale_when_helm_pins_an_older_release():
    state, why = content_state(D2, obs(digest=D1))
    assert state == STALE and short_of(D1) in why


def test_stale_when_helm_is_old_even_if_someone_set_the_new_image():
    assert content_state(D2, obs(digest=D2, helm_digest=D1))[0] == STALE


def test_stale_when_the_release_failed_or_is_missing():
    assert content_state(D2, obs(status="failed"))[0] == STALE
    assert content_state(D2, {**obs(), "deployment": None, "helm": None}) == (
        STALE,
        "the Deployment does not exist and Helm has no release",
    )
    assert content_state(D2, {**obs(), "helm": None})[0] == STALE


def test_stale_while_a_rollout_is_unfinished_or_unavailable():
    assert content_state(D2, obs(updated=1, pods=[D1, D2]))[0] == STALE
    assert content_state(D2, obs(observed_generation=2))[0] == STALE
    assert content_state(D2, obs(available=0))[0] == STALE


def test_drifted_when_the_deployment_was_edited_behind_helm():
    state, why = content_state(D2, obs(digest=D3, helm_digest=D2))
    assert state == DRIFTED and short_of(D3) in why and short_of(D2) in why


def test_drifted_when_a_pod_was_edited():
    assert content_state(D2, obs(pods=[D2, D3]))[0] == DRIFTED


def test_precedence_unreachable_then_stuck_then_stale_then_drifted():
    down = {**obs(status="pending-upgrade"), "reachable": False, "error": "gone"}
    assert content_state(D2, down)[0] == UNREACHABLE
    assert content_state(D2, obs(digest=D1, status="pending-upgrade"))[0] == STUCK
    # Old Helm release and an edited Deployment: the release is what is missing.
    assert content_state(D2, obs(digest=D3, helm_digest=D1))[0] == STALE


# -- traffic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "enabled", "weight", "tolerate", "problem"),
    [
        (IN_SYNC, True, 100, False, None),
        (IN_SYNC, False, 100, False, "disabled"),
        (IN_SYNC, True, 50, False, "weight 50"),
        (STALE, True, 100, False, "enabled although"),
        (STALE, False, 100, False, None),
        (STALE, True, 100, True, None),  # below min serving, old code beats NXDOMAIN
        (UNREACHABLE, True, 100, False, None),
    ],
)
def test_traffic_problem(content, enabled, weight, tolerate, problem):
    found = traffic_problem(content, {"enabled": enabled, "weight": weight}, 100, tolerate)
    assert (found is None) if problem is None else (problem in found)


# -- the fleet report ----------------------------------------------------------------


def report(observations, previous=None, now=NOW, desired=DESIRED, min_serving=2):
    return classify_fleet(desired, observations, WEIGHTS, min_serving, previous or {}, now, {D1: "b" * 40})


def test_every_region_in_sync():
    r = report(fleet())
    assert {x["state"] for x in r["regions"].values()} == {IN_SYNC}
    assert r["message"] == f"every region runs {D2[:19]}" and r["counts"] == {IN_SYNC: 4}


def test_each_class_in_one_report():
    r = report(
        fleet(
            eastus=obs(digest=D1),
            westus={"reachable": False, "error": "connection refused"},
            northeurope=obs(status="pending-upgrade"),
            westeurope=obs(weight=7),
        )
    )
    states = {k: v["state"] for k, v in r["regions"].items()}
    assert states == {"eastus": STALE, "westus": UNREACHABLE, "northeurope": STUCK, "westeurope": TRAFFIC}
    assert r["regions"]["eastus"]["running_release"] == "b" * 40
    # Only westeurope serves the release, below min_serving_regions: the enabled stale region is tolerated.
    assert set(r["regions"]["eastus"]["classes"]) == {STALE}
    assert r["message"] == "1 unreachable, 1 stuck, 1 stale, 1 traffic-mismatch" + (
        "; only 1 region(s) serve the release, below min_serving_regions 2"
    )


def test_an_enabled_stale_region_keeps_both_classes():
    r = report(fleet(eastus=obs(digest=D1)))
    assert r["regions"]["eastus"]["state"] == STALE
    assert set(r["regions"]["eastus"]["classes"]) == {STALE, TRAFFIC}
    assert "endpoint enabled although" in r["regions"]["eastus"]["detail"]


def test_traffic_mismatch_only_outranks_in_sync():
    r = report(fleet(eastus=obs(digest=D3, helm_digest=D2, enabled=True)))
    assert r["regions"]["eastus"]["state"] == DRIFTED
    assert TRAFFIC in r["regions"]["eastus"]["classes"]
    r = report(fleet(eastus=obs(enabled=False)))
    assert r["regions"]["eastus"]["state"] == TRAFFIC and "disabled" in r["regions"]["eastus"]["detail"]


def test_stale_regions_may_stay_enabled_below_min_serving():
    r = report(fleet(eastus=obs(digest=D1), westus=obs(digest=D1), northeurope=obs(digest=D1)))
    assert all(TRAFFIC not in x["classes"] for x in r["regions"].values())


def test_since_is_kept_while_a_class_holds_and_reset_when_it_changes():
    first = report(fleet(eastus=obs(digest=D1)))
    assert first["regions"]["eastus"]["since"] == NOW.isoformat()
    later = NOW + timedelta(minutes=15)
    second = report(fleet(eastus=obs(digest=D1)), previous=first_seen(first), now=later)
    assert second["regions"]["eastus"]["since"] == NOW.isoformat()
    assert second["regions"]["westus"]["since"] == NOW.isoformat()
    third = report(fleet(), previous=first_seen(second), now=later + timedelta(minutes=15))
    assert third["regions"]["eastus"]["since"] == (later + timedelta(minutes=15)).isoformat()
    assert "15m00s" in table(second).splitlines()[2 + list(WEIGHTS).index("eastus")]


def test_no_release_yet():
    r = report(fleet(westus={"reachable": False, "error": "down"}), desired=None)
    assert r["message"].startswith("no release recorded yet")
    assert r["regions"]["eastus"]["state"] == NO_RELEASE and r["regions"]["westus"]["state"] == UNREACHABLE
    assert repair_plan(r) == {"rollback": [], "release": [], "skipped": {}}


# -- repair --------------------------------------------------------------------------


def test_repair_takes_every_fixable_region():
    r = report(fleet(eastus=obs(digest=D1), westus=obs(digest=D3, helm_digest=D2), westeurope=obs(weight=7)))
    assert repair_plan(r) == {"rollback": [], "release": ["eastus", "westus", "westeurope"], "skipped": {}}


def test_repair_leaves_unreachable_regions_alone():
    plan = repair_plan(report(fleet(westus={"reachable": False, "error": "down"})))
    assert plan["release"] == [] and "unreachable" in plan["skipped"]["westus"]


def test_a_region_the_release_held_back_is_reported_and_never_repaired_to_the_refused_build():
    held = {**DESIRED, "held_back": {"eastus": "gate_metrics: errors: fail: error ratio 0.3"}}
    r = report(fleet(eastus=obs(digest=D1)), desired=held)
    eastus = r["regions"]["eastus"]
    assert eastus["state"] == HELD_BACK and set(eastus["classes"]) == {HELD_BACK}  # enabled on D1 is expected
    assert eastus["detail"].startswith("held back by the release: gate_metrics: errors: fail")
    plan = repair_plan(r)
    assert plan["release"] == [] and plan["skipped"]["eastus"].startswith("held back by the release")
    # Released again by hand, it is simply in sync; edited behind Helm, it is drifted as any region.
    assert report(fleet(), desired=held)["regions"]["eastus"]["state"] == IN_SYNC
    assert report(fleet(eastus=obs(digest=D3, helm_digest=D2)), desired=held)["regions"]["eastus"]["state"] == DRIFTED


def test_stuck_is_rolled_back_only_when_an_earlier_check_saw_it():
    stuck = fleet(northeurope=obs(status="pending-upgrade", revision=5))
    first = report(stuck)
    plan = repair_plan(first)
    assert plan["rollback"] == [] and plan["release"] == [] and "next" in plan["skipped"]["northeurope"]
    second = report(stuck, previous=first_seen(first), now=NOW + timedelta(minutes=15))
    assert repair_plan(second) == {
        "rollback": [{"region": "northeurope", "revision": 4}],
        "release": ["northeurope"],
        "skipped": {},
    }


def test_stuck_without_a_deployed_revision_needs_a_person():
    o = obs(status="pending-install", revision=1)
    o["helm"]["rollback_to"] = None
    first = report(fleet(eastus=o))
    second = report(fleet(eastus=o), previous=first_seen(first), now=NOW + timedelta(minutes=15))
    assert "needs a person" in repair_plan(second)["skipped"]["eastus"]


# -- output --------------------------------------------------------------------------


def test_report_is_json_and_carries_no_secrets():
    down = {"reachable": False, "error": "401 Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln"}
    r = report(fleet(westus={**down, "error": redact(down["error"])}))
    text = json.dumps(r)
    assert "eyJ" not in text and "Bearer ***" in text
    assert len(redact("x" * 1000)) == 300


def test_table_has_a_row_per_region():
    lines = table(report(fleet(eastus=obs(digest=D1)))).splitlines()
    assert lines[0].startswith(f"desired: {D2[:19]}") and len(lines) == 3 + len(WEIGHTS)
    assert "git bbbbbbb" in lines[2] and "stale" in lines[2]


def test_age():
    assert age(NOW.isoformat(), NOW + timedelta(seconds=42)) == "42s"
    assert age(NOW.isoformat(), NOW + timedelta(hours=2, minutes=3)) == "2h03m"


def short_of(digest):
    return digest[:19]


def test_a_warm_standby_on_the_release_is_in_sync_with_its_endpoint_disabled():
    observations = fleet()
    observations["westus"]["endpoint"]["enabled"] = False
    assert report(observations)["regions"]["westus"]["state"] != IN_SYNC
    standby = classify_fleet(DESIRED, observations, WEIGHTS, 2, {}, NOW, {D1: "b" * 40}, standby=["westus"])
    assert standby["regions"]["westus"]["state"] == IN_SYNC
    # On an older release it is stale all the same: a failover must never land on old code.
    assert traffic_problem(STALE, {"enabled": False, "weight": 100}, 100, False, standby=True) is None
