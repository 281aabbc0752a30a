"""Wave verdicts (rollout.wave_quorum): the rule, the bake that applies it, and what rebalance and
rollback-all make of a region that a passing wave held back. The local fleet's waves are
[westus] (canary), [eastus, northeurope], [westeurope]."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from fanout import names
from fanout.airflow import fleet_steps as fs
from fanout.fleet import load_fleet
from fanout.policy import tolerated_failures, wave_verdict
from tests.fakes import DIGEST, LOCAL, OLD, FakeHook, FakeTI, released, run_task

FLEET = load_fleet(LOCAL)
QUORUM_ONE = FLEET.model_copy(update={"rollout": FLEET.rollout.model_copy(update={"wave_quorum": 1})})
CAUSE = "errors: fail: error ratio 0.3000 > max 0.0200"


def test_all_needs_every_region_and_n_needs_n():
    assert not wave_verdict(2, ["a", "b"], ["b"], True, "all", canary=False).ok
    one = wave_verdict(2, ["a", "b"], ["b"], True, 1, canary=False)
    assert one.ok and one.held_back == ("a",)
    assert one.line() == "wave 2 passes: 1 of 2 regions passed, 1 needed; held back: a"
    assert not wave_verdict(2, ["a", "b", "c"], ["b"], True, 2, canary=False).ok
    # N above the wave's size needs every region of it, not more than there are.
    assert wave_verdict(3, ["a"], ["a"], True, 2, canary=False).ok


def test_a_canary_wave_needs_every_region_whatever_the_quorum():
    verdict = wave_verdict(1, ["a", "b"], ["b"], True, 1, canary=True)
    assert not verdict.ok and verdict.needed == 2


def test_a_wave_that_never_started_fails_and_tolerates_nothing():
    verdict = wave_verdict(3, ["a"], [], False, 1, canary=False)
    assert not verdict.ok and verdict.line() == "wave 3 did not start: no region of it was drained"
    assert verdict.held_back == ()
    assert tolerated_failures([verdict, wave_verdict(2, ["b", "c"], ["c"], True, 1, canary=False)]) == {"b"}


def regions_done(ti: FakeTI, passed: list[str], failed: dict[str, str]) -> FakeTI:
    """A run in which `passed` regions passed every step and each of `failed` failed its metric gate."""
    for region in [*passed, *failed]:
        ti.states[names.region_task(region, names.DRAIN)] = "success"
    for region in passed:
        ti.states[names.region_task(region, names.GATE_METRICS)] = "success"
    for region, cause in failed.items():
        task = names.region_task(region, names.GATE_METRICS)
        ti.states[task] = "failed"
        ti.xcoms[(task, names.FAILURE_KEY)] = {"region": region, "gate": names.GATE_METRICS, "cause": cause}
    return ti


def bake(number: int, regions: list[str]) -> fs.BakeOperator:
    task = names.bake_after_wave(number)
    return fs.BakeOperator(task_id=task, fleet_path=str(LOCAL), wave_number=number, wave_regions=regions)


@pytest.fixture
def paused(monkeypatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(fs.BakeOperator, "pause", lambda self, seconds: waits.append(seconds))
    return waits


def test_a_wave_short_of_its_quorum_stops_the_release_and_only_the_region_is_named(paused):
    ti = regions_done(released(FakeTI()), ["westus", "northeurope"], {"eastus": CAUSE})
    with pytest.raises(AirflowFailException, match=r"wave 2 fails: 1 of 2 regions passed, 2 needed; held back: eastus"):
        run_task(bake(2, ["eastus", "northeurope"]), ti, FakeHook(FLEET))
    assert paused == [] and ti.xcoms[(names.bake_after_wave(2), names.FAILURE_KEY)]["consequence"] is True
    ti.states[names.bake_after_wave(2)] = "failed"
    # The run's message names the cause (eastus's gate), not the wave that it stopped.
    hook = FakeHook(FLEET, serving={"westus": DIGEST, "northeurope": DIGEST, "eastus": OLD, "westeurope": OLD})
    with pytest.raises(AirflowFailException) as caught:
        run_task(fs.RebalanceOperator(task_id=names.REBALANCE, fleet_path=str(LOCAL)), ti, hook)
    assert f"eastus: gate_metrics: {CAUSE}" in str(caught.value) and "bake_after_wave" not in str(caught.value)


def test_a_wave_that_meets_its_quorum_holds_the_failed_region_back_and_bakes(paused, capsys):
    ti = regions_done(released(FakeTI()), ["westus", "northeurope"], {"eastus": CAUSE})
    run_task(bake(2, ["eastus", "northeurope"]), ti, FakeHook(QUORUM_ONE))
    assert paused == [QUORUM_ONE.rollout.bake_seconds]
    assert (
        "wave 2 passes: 1 of 2 regions passed, 1 needed; held back: eastus (rollout.wave_quorum 1)"
        in capsys.readouterr().out
    )


def test_a_failed_canary_stops_the_release_whatever_the_quorum(paused):
    ti = regions_done(released(FakeTI()), [], {"westus": CAUSE})
    with pytest.raises(AirflowFailException, match=r"wave 1 fails: 0 of 1 regions passed, 1 needed"):
        run_task(bake(1, ["westus"]), ti, FakeHook(QUORUM_ONE))


def test_a_wave_nothing_reached_fails_its_bake_as_a_consequence_and_holds_nobody_back(paused):
    ti = released(FakeTI())
    ti.states[names.BUILD] = "failed"
    ti.states.update({names.region_task(r, names.DRAIN): "upstream_failed" for r in ("eastus", "northeurope")})
    with pytest.raises(AirflowFailException, match=r"wave 2 did not start: no region of it was drained$"):
        run_task(bake(2, ["eastus", "northeurope"]), ti, FakeHook(QUORUM_ONE))
    assert ti.xcoms[(names.bake_after_wave(2), names.FAILURE_KEY)]["consequence"] is True


def test_a_held_back_region_keeps_its_traffic_and_the_release_succeeds():
    ti = regions_done(released(FakeTI()), ["westus", "northeurope", "westeurope"], {"eastus": CAUSE})
    # eastus's own rollback put it back on the old build and gave it its traffic back.
    serving = {"westus": DIGEST, "northeurope": DIGEST, "westeurope": DIGEST, "eastus": OLD}
    hook = FakeHook(QUORUM_ONE, serving=serving)
    out = run_task(fs.RebalanceOperator(task_id=names.REBALANCE, fleet_path=str(LOCAL)), ti, hook)
    assert out["held_back"] == {"eastus": f"gate_metrics: {CAUSE}"}
    assert hook.tm.calls == [] and out["regions"]["eastus"]["enabled"]
    with pytest.raises(AirflowSkipException, match="the release did not fail"):
        run_task(fs.RollbackAllOperator(task_id=names.ROLLBACK_ALL, fleet_path=str(LOCAL)), ti, hook)
    # The same run under "all" fails, and names eastus.
    with pytest.raises(AirflowFailException, match=f"eastus: gate_metrics: {CAUSE}"):
        run_task(fs.RebalanceOperator(task_id=names.REBALANCE, fleet_path=str(LOCAL)), ti, FakeHook(FLEET, serving))
