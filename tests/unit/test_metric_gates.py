"""Metric gates without Prometheus: the PromQL they ask, the verdicts they reach, who the baseline is."""

from __future__ import annotations

import random
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from fanout import metric_gates as mg
from fanout import names
from fanout.airflow import region_steps as rs
from fanout.fleet import FleetError, MetricCheck, MetricGates, parse_fleet
from tests.fakes import DIGEST, FakeHook, FakeTI, released, run_task
from tests.unit.test_hostile_inputs import local
from tests.unit.test_operators import region_op

FLEET = parse_fleet(local(), "local.yaml")
GATES = FLEET.gates.metrics
assert GATES is not None
WAVES = [["westus"], ["eastus", "northeurope"], ["westeurope"]]


def gates(**changes: Any) -> MetricGates:
    return GATES.model_copy(update=changes)


def check(**fields: Any) -> MetricCheck:
    return MetricCheck(**{"name": "c", "measure": "latency_ms", **fields})


# -- PromQL -------------------------------------------------------------------------------------


def test_queries_select_the_region_and_the_release_digest():
    mine = mg.selector(GATES.source, ["westus"], DIGEST)
    assert mine == f'region="westus",digest="{DIGEST}"'
    theirs = mg.selector(GATES.source, ["westeurope", "eastus"], DIGEST, same_digest=False)
    assert theirs == f'region=~"eastus|westeurope",digest!="{DIGEST}"'
    errors = mg.measure_query(GATES.source, check(measure="error_ratio", max=0.1), mine, 20)
    assert errors == (
        f'(sum(increase(fanout_edge_requests_total{{{mine},code=~"5.."}}[20s])) or vector(0)) / '
        f"sum(increase(fanout_edge_requests_total{{{mine}}}[20s]))"
    )
    latency = mg.measure_query(GATES.source, check(quantile=0.99, max=1), mine, 2)
    buckets = f"fanout_edge_request_duration_seconds_bucket{{{mine}}}"
    assert latency == f"1000 * histogram_quantile(0.99, sum by (le) (increase({buckets}[2s])))"


def test_a_label_value_cannot_break_out_of_its_quotes():
    assert mg.selector(GATES.source, ['a"}or vector(1)#'], "d") == 'region="a\\"}or vector(1)#",digest="d"'


# -- verdicts ------------------------------------------------------------------------------------


def test_absolute_check_passes_fails_and_is_inconclusive_on_too_little_traffic():
    c = check(measure="error_ratio", max=0.02)
    g = gates(min_requests=30)
    assert mg.absolute(g, c, "westus", 0.01, 200, 20).outcome == "pass"
    failed = mg.absolute(g, c, "westus", 0.2, 200, 20)
    assert failed.outcome == "fail"
    assert failed.detail == "error ratio 0.2000 > max 0.0200 over 20 s (200 requests)"
    thin = mg.absolute(g, c, "westus", 0.0, 12, 20)
    assert thin.outcome == "inconclusive" and "12 requests" in thin.detail and "min_requests 30" in thin.detail
    assert mg.absolute(g, c, "westus", None, 0, 20).outcome == "inconclusive"


def _samples(seed: int, centre: float, n: int = 10) -> list[float]:
    rng = random.Random(seed)
    return [centre * rng.uniform(0.8, 1.2) for _ in range(n)]


def test_comparative_check_catches_a_slower_region_with_both_values_and_the_threshold():
    c = check(compare="previous", tolerance=0.5, margin=20)
    verdict = mg.comparative(gates(), c, "eastus", _samples(1, 250), _samples(2, 5), (200, 400), ["westeurope"])
    assert verdict.outcome == "fail"
    assert verdict.observed == pytest.approx(250, rel=0.2) and verdict.baseline == pytest.approx(5, rel=0.2)
    assert verdict.threshold == pytest.approx(verdict.baseline + 20)
    assert verdict.p_value is not None and verdict.p_value < 0.05
    assert "against" in verdict.detail and "(westeurope)" in verdict.detail and "threshold" in verdict.detail


def test_comparative_check_passes_noise_and_small_differences():
    c = check(compare="previous", tolerance=0.5, margin=20)
    same = mg.comparative(gates(), c, "eastus", _samples(3, 5), _samples(4, 5), (200, 400), ["westeurope"])
    assert same.outcome == "pass"
    # Significantly slower, but by less than the margin: not worth stopping a release for.
    slightly = mg.comparative(gates(), c, "eastus", _samples(5, 15), _samples(6, 5), (200, 400), ["westeurope"])
    assert slightly.outcome == "pass" and slightly.p_value is not None and slightly.p_value < 0.05


def test_comparative_check_without_baseline_is_skipped_and_with_thin_traffic_inconclusive():
    c = check(compare="previous")
    none = mg.comparative(gates(), c, "westeurope", _samples(1, 5), [], (200, None), [])
    assert none.outcome == "skipped" and "no region serves the previous digest" in none.detail
    why = "every baseline region (x) already runs the release digest"
    again = mg.comparative(gates(), c, "eastus", _samples(1, 5), [], (200, 0), ["x"], why)
    assert again.outcome == "skipped" and again.detail == f"no baseline: {why}"
    thin = mg.comparative(gates(min_requests=30), c, "eastus", _samples(1, 5), _samples(2, 5), (200, 3), ["x"])
    assert thin.outcome == "inconclusive" and "the baseline has 3 requests" in thin.detail


def test_the_gate_fails_on_a_failed_check_and_on_inconclusive_unless_told_to_pass():
    ok = mg.Verdict("a", "westus", "pass", "fine")
    unsure = mg.Verdict("b", "westus", "inconclusive", "12 requests")
    bad = mg.Verdict("c", "westus", "fail", "p95 latency 600.0 ms > max 500.0 ms")
    assert mg.gate_outcome(gates(), [ok, bad, unsure]) == (False, "westus c: fail: p95 latency 600.0 ms > max 500.0 ms")
    passed, line = mg.gate_outcome(gates(inconclusive="fail"), [ok, unsure])
    assert not passed and "inconclusive" in line and "gates.metrics.inconclusive: fail" in line
    assert mg.gate_outcome(gates(inconclusive="pass"), [ok, unsure])[0]


class FakeReader:
    """Answers by which selector a query carries: the region's own, or the baseline's."""

    def __init__(self, mine: dict[str, Any], theirs: dict[str, Any]):
        self.mine, self.theirs = mine, theirs
        self.asked: list[str] = []

    def _side(self, query: str) -> dict[str, Any]:
        self.asked.append(query)
        return self.theirs if 'digest!="' in query else self.mine

    def value(self, query: str, at: float) -> float | None:
        side = self._side(query)
        if query.startswith("sum(increase("):
            return side["requests"]
        return side["errors"] if 'code=~"5.."' in query else side["latency"]

    def series(self, query: str, start: float, end: float, step: float) -> list[float]:
        return self._side(query)["series"]


def test_evaluate_asks_over_the_window_and_judges_every_check():
    reader = FakeReader(
        mine={"requests": 300, "errors": 0.0, "latency": 240.0, "series": _samples(1, 240)},
        theirs={"requests": 500, "errors": 0.0, "latency": 5.0, "series": _samples(2, 5)},
    )
    verdicts = mg.evaluate(GATES, reader, "eastus", DIGEST, {"p95-vs-previous": ["westeurope"]}, 1000.0, 1020.0)
    assert [(v.check, v.outcome) for v in verdicts] == [
        ("errors", "pass"), ("p95-latency", "pass"), ("p95-vs-previous", "fail"),
    ]  # fmt: skip
    # The absolute gate alone would have let a 50x slower build through.
    assert any("[20s]" in q for q in reader.asked) and any("[2s]" in q for q in reader.asked)


def test_a_digest_released_again_has_no_previous_build_to_compare_with():
    class EveryoneOnTheRelease(FakeReader):
        def value(self, query: str, at: float) -> float | None:
            if query.startswith("sum(increase("):  # requests: the baseline has none on another digest
                return 0 if 'digest!="' in query else 300
            return 5.0

    reader = EveryoneOnTheRelease(mine={"series": _samples(1, 5)}, theirs={"series": []})
    verdicts = mg.evaluate(GATES, reader, "eastus", DIGEST, {"p95-vs-previous": ["westeurope"]}, 1000.0, 1016.0)
    assert verdicts[-1].outcome == "skipped"
    assert verdicts[-1].detail == "no baseline: every baseline region (westeurope) already runs the release digest"


# -- the baseline ---------------------------------------------------------------------------------


def test_previous_baseline_is_the_regions_the_run_has_not_changed_yet():
    assert mg.baseline_regions(FLEET, WAVES, "westus", "previous", None) == ["eastus", "northeurope", "westeurope"]
    assert mg.baseline_regions(FLEET, WAVES, "eastus", "previous", None) == ["westeurope"]
    assert mg.baseline_regions(FLEET, WAVES, "westeurope", "previous", None) == []
    # A region outside the run's subset keeps the previous digest, whatever its wave.
    assert mg.baseline_regions(FLEET, WAVES, "westeurope", "previous", ["westus", "westeurope"]) == [
        "eastus", "northeurope",
    ]  # fmt: skip
    assert mg.baseline_regions(FLEET, WAVES, "eastus", "pair", None) == ["westus"]


def test_a_warm_standby_is_no_baseline():
    fleet = parse_fleet(local(**{"regions/3/standby": "warm"}), "local.yaml")
    assert mg.baseline_regions(fleet, WAVES, "eastus", "previous", None) == []


# -- the fleet file ----------------------------------------------------------------------------------


def test_a_check_needs_a_bound_and_comparisons_need_samples():
    with pytest.raises(FleetError, match=r"gates\.metrics\.checks\[0\]: .*give 'max'"):
        parse_fleet(local(**{"gates/metrics/checks": [{"name": "x", "measure": "error_ratio"}]}), "f.yaml")
    with pytest.raises(FleetError, match=r"gates\.metrics: .*at least 3 × step_seconds"):
        parse_fleet(local(**{"gates/metrics/window_seconds": 10, "gates/metrics/step_seconds": 5}), "f.yaml")


def test_azure_monitor_tokens_go_only_to_an_azure_monitor_query_endpoint():
    bad = {"gates/metrics/source": {"kind": "azure-monitor", "url": "https://prom.attacker.example"}}
    with pytest.raises(FleetError, match=r"gates\.metrics\.source\.url: an azure-monitor source is https://"):
        parse_fleet(local(**bad), "f.yaml")
    good = {"kind": "azure-monitor", "url": "https://amw-1a2b.westeurope.prometheus.monitor.azure.com"}
    assert parse_fleet(local(**{"gates/metrics/source": good}), "f.yaml").gates.metrics is not None


# -- the operator ---------------------------------------------------------------------------------------


def test_the_operator_defers_for_the_window_with_each_comparison_s_baseline():
    hook, ti = FakeHook(FLEET), released(FakeTI())
    with pytest.raises(TaskDeferred) as deferred:
        run_task(region_op(rs.MetricGatesOperator, "eastus"), ti, hook)
    trigger = deferred.value.trigger
    assert trigger.baselines == {"p95-vs-previous": ["westeurope"]} and trigger.digest == DIGEST
    assert trigger.not_before - trigger.window_start == pytest.approx(GATES.window_seconds + 3.0)
    assert trigger.ending["gate"] == names.GATE_METRICS and trigger.ending["region"] == "eastus"
