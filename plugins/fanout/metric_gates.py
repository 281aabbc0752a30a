"""Metric gates: what users felt in a region on the release digest, judged over a window.

Pure: the PromQL comes from the fleet's `gates.metrics`, the numbers from any `MetricReader`
(the Prometheus adapter in production, a fake in unit tests), and the verdicts are plain data.

- absolute: one value over the whole window against `max`; fewer than `min_requests` requests
  on the release digest make it inconclusive.
- comparative: one sample per `step_seconds` on each side — the region on the release digest,
  and its baseline (its pair partner, or the regions the run has not changed yet, on any other
  digest) — compared with a one-sided Mann–Whitney U test, as Kayenta's judge does. The region
  fails only if it is worse with significance *and* by more than the tolerance and the margin,
  so noise between healthy regions does not stop a release.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from fanout.fleet import Fleet, MetricCheck, MetricGates, MetricSource

Outcome = Literal["pass", "fail", "inconclusive", "skipped"]
MIN_SAMPLES = 3  # per side: fewer and no rank test can be significant
SCRAPE_SLACK_SECONDS = 3.0  # a window is read this long after it ends: its last requests are scraped by then
UNITS = {"error_ratio": "", "latency_ms": " ms"}


class MetricReader(Protocol):
    def value(self, query: str, at: float) -> float | None:
        """The query's single value at `at` (epoch seconds); None when it has no sample."""
        ...

    def series(self, query: str, start: float, end: float, step: float) -> list[float]:
        """The query's values from `start` to `end` every `step` seconds (steps without a value left out)."""
        ...


@dataclass(frozen=True)
class Verdict:
    check: str
    region: str
    outcome: Outcome
    detail: str
    observed: float | None = None
    baseline: float | None = None
    threshold: float | None = None
    requests: int | None = None
    baseline_regions: tuple[str, ...] = ()
    p_value: float | None = None

    def line(self) -> str:
        return f"{self.region} {self.check}: {self.outcome}: {self.detail}"

    def to_xcom(self) -> dict[str, Any]:
        return {**asdict(self), "baseline_regions": list(self.baseline_regions)}


# -- PromQL ------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(source: MetricSource, regions: Sequence[str], digest: str, *, same_digest: bool = True) -> str:
    """Label matchers for requests of `regions` served by `digest` (or by any other digest)."""
    if len(regions) == 1:
        where = f"{source.region_label}={_quote(regions[0])}"
    else:
        where = f"{source.region_label}=~{_quote('|'.join(re.escape(r) for r in sorted(regions)))}"
    return f"{where},{source.digest_label}{'=' if same_digest else '!='}{_quote(digest)}"


def requests_query(source: MetricSource, match: str, seconds: float) -> str:
    return f"sum(increase({source.requests_metric}{{{match}}}[{seconds:g}s]))"


def measure_query(source: MetricSource, check: MetricCheck, match: str, seconds: float) -> str:
    """The check's measure over the `seconds` before each evaluation time."""
    if check.measure == "error_ratio":
        errors = f'{source.requests_metric}{{{match},{source.status_label}=~"5.."}}'
        # No 5xx series at all is a ratio of 0, not a missing value.
        return f"(sum(increase({errors}[{seconds:g}s])) or vector(0)) / {requests_query(source, match, seconds)}"
    buckets = f"{source.latency_histogram}_bucket{{{match}}}"
    return f"1000 * histogram_quantile({check.quantile:g}, sum by (le) (increase({buckets}[{seconds:g}s])))"


# -- who the baseline is -----------------------------------------------------------------------


def baseline_regions(fleet: Fleet, waves: Sequence[Sequence[str]], region: str, compare: str,
                     run_regions: Sequence[str] | None) -> list[str]:  # fmt: skip
    """The regions a comparative check of `region` measures against: its serving pair partner, or
    every serving region this run has not changed yet (a later wave, or not in the run)."""
    serving = {r.name for r in fleet.regions if r.traffic_weight > 0}
    if compare == "pair":
        partner = fleet.region(region).pair
        return [partner] if partner in serving else []
    wave_of = {name: number for number, wave in enumerate(waves) for name in wave}
    mine = wave_of.get(region, len(waves))
    in_run = set(run_regions) if run_regions else set(fleet.region_names)
    return [
        name for name in fleet.region_names
        if name != region and name in serving and (name not in in_run or wave_of.get(name, mine) > mine)
    ]  # fmt: skip


def baselines(fleet: Fleet, gates: MetricGates, waves: Sequence[Sequence[str]], region: str,
              run_regions: Sequence[str] | None) -> dict[str, list[str]]:  # fmt: skip
    """Each comparative check's baseline regions for `region` (see baseline_regions)."""
    return {
        check.name: baseline_regions(fleet, waves, region, check.compare, run_regions)
        for check in gates.checks
        if check.compare is not None
    }


# -- verdicts ----------------------------------------------------------------------------------


def _fmt(check: MetricCheck, value: float | None) -> str:
    if value is None:
        return "no value"
    return f"{value:.4f}" if check.measure == "error_ratio" else f"{value:.1f}{UNITS[check.measure]}"


def _name(check: MetricCheck) -> str:
    return f"p{check.quantile * 100:g} latency" if check.measure == "latency_ms" else "error ratio"


def absolute(gates: MetricGates, check: MetricCheck, region: str, value: float | None, requests: float | None,
             window: float) -> Verdict:  # fmt: skip
    assert check.max is not None
    count = round(requests or 0)
    base = {"check": check.name, "region": region, "observed": value, "threshold": check.max, "requests": count}
    if count < gates.min_requests or value is None:
        why = f"{count} requests on the release digest in {window:g} s, fewer than min_requests {gates.min_requests}"
        return Verdict(outcome="inconclusive", detail=why, **base)
    over = value > check.max
    detail = (
        f"{_name(check)} {_fmt(check, value)} {'>' if over else '<='} max {_fmt(check, check.max)} "
        f"over {window:g} s ({count} requests)"
    )
    return Verdict(outcome="fail" if over else "pass", detail=detail, **base)


def comparative(gates: MetricGates, check: MetricCheck, region: str, canary: Sequence[float],
                baseline: Sequence[float], requests: tuple[float | None, float | None],
                baseline_names: Sequence[str], no_baseline: str | None = None) -> Verdict:  # fmt: skip
    """Is `canary` (samples of the region on the release) worse than `baseline`, beyond doubt and tolerance?"""
    from scipy.stats import mannwhitneyu  # a worker-side import: DAG parsing never needs scipy

    counts = (round(requests[0] or 0), round(requests[1] or 0))
    base = {"check": check.name, "region": region, "requests": counts[0], "baseline_regions": tuple(baseline_names)}
    against = f"{check.compare} ({', '.join(baseline_names)})"
    if not baseline_names or no_baseline:
        default = (
            "no pair partner serves" if check.compare == "pair" else "no region serves the previous digest any more"
        )
        return Verdict(outcome="skipped", detail=f"no baseline: {no_baseline or default}", **base)
    short = [f"{side} has {n} requests" for side, n in zip(("the region", "the baseline"), counts, strict=True)
             if n < gates.min_requests]  # fmt: skip
    if short or min(len(canary), len(baseline)) < MIN_SAMPLES:
        why = "; ".join(short) or f"{len(canary)} and {len(baseline)} samples, fewer than {MIN_SAMPLES} a side"
        return Verdict(outcome="inconclusive", detail=f"against {against}: {why} (min_requests {gates.min_requests})",
                       **base)  # fmt: skip
    observed, reference = statistics.median(canary), statistics.median(baseline)
    threshold = max(reference * (1 + check.tolerance), reference + check.margin)
    p_value = float(mannwhitneyu(canary, baseline, alternative="greater").pvalue)
    worse = observed > threshold and p_value < gates.significance
    detail = (
        f"{_name(check)} {_fmt(check, observed)} against {_fmt(check, reference)} on {against}, "
        f"threshold {_fmt(check, threshold)} (tolerance {check.tolerance:g}, margin {check.margin:g}); "
        f"Mann-Whitney U p={p_value:.3g} (significance {gates.significance:g}); "
        f"{len(canary)} and {len(baseline)} samples of {gates.step_seconds} s"
    )
    return Verdict(outcome="fail" if worse else "pass", detail=detail, observed=observed, baseline=reference,
                   threshold=threshold, p_value=p_value, **base)  # fmt: skip


def evaluate(gates: MetricGates, reader: MetricReader, region: str, digest: str,
             baselines: dict[str, list[str]], start: float, end: float) -> list[Verdict]:  # fmt: skip
    """Every check of `gates` for `region` on `digest` over [start, end]. `baselines` names each
    comparative check's baseline regions (see baseline_regions)."""
    source, window, step = gates.source, end - start, float(gates.step_seconds)
    mine = selector(source, [region], digest)
    requests = reader.value(requests_query(source, mine, window), end)
    verdicts = []
    for check in gates.checks:
        if check.max is not None:
            value = reader.value(measure_query(source, check, mine, window), end)
            verdicts.append(absolute(gates, check, region, value, requests, window))
        if check.compare is not None:
            names = baselines.get(check.name, [])
            canary = reader.series(measure_query(source, check, mine, step), start + step, end, step)
            baseline: list[float] = []
            others, why = None, None
            if names:
                theirs = selector(source, names, digest, same_digest=False)
                baseline = reader.series(measure_query(source, check, theirs, step), start + step, end, step)
                others = reader.value(requests_query(source, theirs, window), end)
                if not others and reader.value(requests_query(source, selector(source, names, digest), window), end):
                    # A digest released again: its users are all on it already, there is no previous build.
                    why = f"every baseline region ({', '.join(names)}) already runs the release digest"
            verdicts.append(comparative(gates, check, region, canary, baseline, (requests, others), names, why))
    return verdicts


def gate_outcome(gates: MetricGates, verdicts: Sequence[Verdict]) -> tuple[bool, str]:
    """(passed, one line naming what decided): a failed check fails the gate; an inconclusive one
    fails it too unless the fleet's `inconclusive` policy is "pass"."""
    failed = [v for v in verdicts if v.outcome == "fail"]
    unsure = [v for v in verdicts if v.outcome == "inconclusive"]
    if failed:
        return False, "; ".join(v.line() for v in failed)
    if unsure and gates.inconclusive == "fail":
        return False, "; ".join(v.line() for v in unsure) + " (gates.metrics.inconclusive: fail)"
    return True, "; ".join(v.line() for v in verdicts)
