"""The fault matrix's promise checker (localfleet.fault_matrix.promises) over hand-made fleet states:
it must pass a consistent fleet and name each way a fleet can break a promise."""

from __future__ import annotations

from dataclasses import replace

from localfleet.fault_matrix.promises import (
    FleetView,
    RegionView,
    UsersView,
    check_fleet,
    check_message,
    check_users,
    fewest_enabled,
)

NEW, OLD = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def region(name: str, digest: str = NEW, **changes) -> RegionView:
    image = f"127.0.0.1:5000/fanout/hello@{digest}"
    base = RegionView(name, "deployed", 3, (image, image, image), True, digest, True)
    return replace(base, **changes)


def fleet(*regions: RegionView, fewest: int = 3) -> FleetView:
    return FleetView({r.name: r for r in regions}, fewest, 2)


def broken(checks) -> dict[str, str]:
    return {c.promise: c.detail for c in checks if not c.ok}


def test_a_consistent_fleet_keeps_every_promise():
    assert broken(check_fleet(fleet(region("eastus"), region("westus")), NEW)) == {}


def test_each_broken_promise_is_named_with_its_region():
    pending = region("eastus", helm_status="pending-upgrade")
    tagged = region("westus", images=("r/fanout/hello:latest",))
    stale = region("northeurope", OLD)
    mixed = region("westeurope", images=(f"r/x@{NEW}", f"r/x@{OLD}"))
    found = broken(check_fleet(fleet(pending, tagged, stale, mixed, fewest=0), NEW))
    assert set(found) == {"one digest", "nothing half-applied", "never all endpoints disabled",
                          "no stale region with traffic"}  # fmt: skip
    assert "westus" in found["one digest"] and "westeurope" in found["one digest"]
    assert "northeurope" in found["one digest"]
    assert "eastus helm pending-upgrade" in found["nothing half-applied"]
    assert "northeurope enabled" in found["no stale region with traffic"]
    assert "fewest enabled 0" in found["never all endpoints disabled"]


def test_after_a_failure_the_previous_release_is_allowed_but_only_drained_if_half_done():
    kept_old = region("westeurope", OLD)
    unfinished = region("eastus", rolled_out=False, enabled=False)
    found = broken(check_fleet(fleet(region("westus"), kept_old, unfinished), NEW, {NEW, OLD}))
    assert set(found) == {"nothing half-applied"} and "eastus rollout unfinished" in found["nothing half-applied"]


def test_an_edge_serving_other_than_the_cluster_is_half_applied():
    found = broken(check_fleet(fleet(region("eastus", serving=OLD, enabled=False)), NEW))
    assert "eastus edge serves" in found["nothing half-applied"]


def test_fewer_enabled_than_min_serving_breaks_the_floor():
    assert "never all endpoints disabled" in broken(check_fleet(fleet(region("eastus"), fewest=1), NEW))


def test_replaying_the_change_log_finds_the_fewest_enabled_moment():
    initial = {"a": True, "b": True, "c": True}
    changes = [
        {"at": 5, "endpoint": "a", "status": "Disabled"},  # before the scenario: ignored
        {"at": 10, "endpoint": "a", "status": "Disabled"},
        {"at": 11, "endpoint": "b", "status": "Disabled"},
        {"at": 12, "endpoint": "a", "status": "Enabled"},
        {"at": 13, "endpoint": "x", "status": "Disabled"},  # not an endpoint of this fleet
    ]
    assert fewest_enabled(initial, changes, since=8) == 1


def test_the_failure_message_must_name_what_the_scenario_broke():
    progress = "07:26:21  merge__x  running\n07:26:40  deploy_eastus.gate_http  failed\nmerge__x: failed\n"
    message = progress + "  failed: deploy_eastus.gate_http\n    eastus / gate_http: edge unreachable (after 40 s)"
    assert check_message("failed", message, True, ("eastus", "gate_http")).ok
    missing = check_message("failed", message, True, ("westeurope",))
    assert not missing.ok and "westeurope" in missing.detail
    # Task ids in progress lines are no message: a failed task with no cause recorded is not clear.
    bare = progress + "  failed: deploy_eastus.gate_http\n  failed: rebalance"
    assert not check_message("failed", bare, True, ("gate_http",)).ok
    assert not check_message("success", "", True, ("eastus",)).ok  # it was meant to fail
    assert not check_message("failed", message, False, ()).ok  # it was meant to pass
    assert check_message("success", "", False, ()).ok


def test_users_harmed_or_unrecorded_break_the_promise():
    assert check_users(UsersView(100, 0, 0, 0)).ok
    assert not check_users(UsersView(100, 1, 0, 0)).ok
    assert not check_users(UsersView(100, 0, 2, 0)).ok
    assert not check_users(UsersView(0, 0, 0, 0)).ok
    assert not check_users(None).ok
