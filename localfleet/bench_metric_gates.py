"""How often the metric gates' comparison cries wolf, and how often it catches a slow build.

    python -m localfleet.bench_metric_gates [--windows 20] [--latency-ms 30]   (make bench-metric-gates)

A test fleet with the local fleet file's metric gates comes up (Prometheus included), every region
runs the app (the Deployment applied directly: no release needed to measure users), the simulated
users send their requests through DNS, and `westus` runs a digest of its own while the others keep
the old one — as after a canary. Then the gate's own evaluation (fanout.metric_gates.evaluate over
the real Prometheus) judges `westus` against the regions on the old digest, window after window:

- `--windows` good-build windows: every `fail` of the comparison is a false alarm;
- then the `bad-build latency` knob on westus and a new digest there, and as many windows again:
  every `pass` is a slow build let through.

Prints one line per window and the two rates. Not a timed test: it takes windows × window_seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from fanout.adapters.metrics import PrometheusQuery
from fanout.fleet import Fleet
from fanout.metric_gates import SCRAPE_SLACK_SECONDS, Verdict, baselines, evaluate
from fanout.planner import plan_waves
from localfleet import cli
from localfleet.metrics import prometheus
from localfleet.testing import apply_deployment, start_test_fleet, wait_until
from localfleet.traffic import users

CANARY = "westus"
OLD, GOOD, SLOW = ("sha256:" + c * 64 for c in "0ab")


def judge(fleet: Fleet, digest: str, source: PrometheusQuery) -> list[Verdict]:
    """One window of the canary's comparative checks, measured from now."""
    gates = fleet.gates.metrics
    assert gates is not None
    waves = [list(w.regions) for w in plan_waves(fleet).waves]
    only_comparisons = gates.model_copy(update={"checks": [c for c in gates.checks if c.compare is not None]})
    compared_with = baselines(fleet, only_comparisons, waves, CANARY, None)
    start = time.time()
    time.sleep(gates.window_seconds + SCRAPE_SLACK_SECONDS)
    return evaluate(only_comparisons, source, CANARY, digest, compared_with, start, start + gates.window_seconds)


def windows(fleet: Fleet, digest: str, count: int, source: PrometheusQuery, label: str) -> list[str]:
    outcomes = []
    for n in range(1, count + 1):
        for verdict in judge(fleet, digest, source):
            print(f"{label} window {n:2d}: {verdict.line()}", flush=True)
            outcomes.append(verdict.outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.bench_metric_gates", description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=30.0, help="what the slow build adds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fanout-bench-metrics-") as tmp:
        folder = Path(tmp)
        print("bringing a test fleet with metric gates up…", flush=True)
        fleet, state = start_test_fleet(folder, metrics=True)
        try:
            for region in fleet.region_names:
                apply_deployment(fleet, region, GOOD if region == CANARY else OLD, admin=True)
            url = prometheus.url_of(fleet)
            assert url is not None
            wait_until(lambda: prometheus.target_health(url) and set(prometheus.target_health(url).values()) == {"up"},
                       timeout=60, what="Prometheus scraping every edge")  # fmt: skip
            users.start(fleet, state, users=8, rate=4, duration=3600)
            time.sleep(5)
            source = PrometheusQuery(url)
            good = windows(fleet, GOOD, args.windows, source, "good")
            cli.bad_build(fleet, state, CANARY, "latency", f"{args.latency_ms:g}", clear=False)
            apply_deployment(fleet, CANARY, SLOW, admin=True)
            time.sleep(5)
            slow = windows(fleet, SLOW, args.windows, source, "slow")
        finally:
            users.stop(state)
            cli.down(fleet, state, progress=lambda _: None)
    gates = fleet.gates.metrics
    assert gates is not None
    print(f"\nwindows of {gates.window_seconds} s, steps of {gates.step_seconds} s, significance {gates.significance}")
    for label, outcomes, wrong in (("false alarms (a good build failed)", good, "fail"),
                                   (f"slow build (+{args.latency_ms:g} ms) let through", slow, "pass")):  # fmt: skip
        rate = f"{outcomes.count(wrong)}/{len(outcomes)}"
        print(f"{label}: {rate} (inconclusive {outcomes.count('inconclusive')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
