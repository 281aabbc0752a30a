"""localfleet.slots: which tasks are waits, and the slot figures from hand-built samples."""

from __future__ import annotations

import time

import pytest

from localfleet.slots import SlotSampler, is_wait, summarize

REPL_NE, REPL_WU = "wait_replication_northeurope", "wait_replication_westus"
INLINE = 10.0  # an in-worker phase, as the waits had before fanout.airflow.waiting


def timeline(*spans: tuple[float, dict[str, str]]) -> list[tuple[float, dict[str, str | None]]]:
    return [(t, dict(states)) for t, states in spans]


@pytest.mark.parametrize(
    "task_id",
    [
        "wait_replication_northeurope",
        "wait_replication_westus",
        "deploy_eastus.gates",
        "deploy_west-europe.gates",
        "deploy_westus.dns_settle",
        "bake_after_wave_1",
        "bake_after_wave_12",
    ],
)
def test_waits(task_id: str) -> None:
    assert is_wait(task_id)


@pytest.mark.parametrize(
    "task_id",
    [
        "build",
        "validate",
        "check_superseded",
        "deploy_eastus.helm_deploy",
        "deploy_eastus.drain",
        "deploy_eastus.gate_metrics",
        "deploy_eastus.restore",
        "approve_after_canary",
        "bake_after_wave_x",
        "wait_replication_",
        "rebalance",
    ],
)
def test_not_waits(task_id: str) -> None:
    assert not is_wait(task_id)


def test_empty() -> None:
    figures = summarize([], is_wait, parallelism=8)
    assert figures == {
        "samples": 0,
        "duration_s": 0.0,
        "parallelism": 8,
        "min_free_slots": 8,
        "peak_running": 0,
        "mean_running": 0.0,
        "peak_deferred": 0,
        "mean_deferred": 0.0,
        "wait_running_s": 0.0,
        "wait_deferred_s": 0.0,
        "wait_running_beyond_inline_s": 0.0,
        "wait_deferred_beyond_inline_s": 0.0,
        "peak_running_waits_while_deferred": 0,
        "waits": {},
    }


def test_one_wait_runs_15_s_then_defers_30_s_then_resumes_for_2_s() -> None:
    samples = timeline(
        (100, {REPL_NE: "scheduled"}),
        (101, {REPL_NE: "running"}),
        (116, {REPL_NE: "deferred"}),
        (146, {REPL_NE: "running"}),  # resumed in a worker
        (148, {REPL_NE: "success"}),
        (150, {REPL_NE: "success"}),
    )
    f = summarize(samples, is_wait, parallelism=8, inline_seconds=INLINE)
    assert f["samples"] == 6
    assert f["duration_s"] == 50
    assert (f["peak_running"], f["peak_deferred"], f["min_free_slots"]) == (1, 1, 7)
    assert f["mean_running"] == 17 / 50
    assert f["mean_deferred"] == 30 / 50
    assert f["wait_running_s"] == 17
    assert f["wait_deferred_s"] == 30
    # 5 s past the first 10 s of running, then the whole resumed try.
    assert f["wait_running_beyond_inline_s"] == 7
    assert f["wait_deferred_beyond_inline_s"] == 30
    assert f["peak_running_waits_while_deferred"] == 0
    assert f["waits"] == {REPL_NE: {"running_s": 17, "deferred_s": 30, "running_beyond_inline_s": 7}}


def test_a_deferral_ends_the_inline_phase_early() -> None:
    # Seen running only 4 s before deferring (sampling, or a fast defer): the resumed try
    # is still beyond the inline phase, not the 6 s of inline budget "left".
    samples = timeline(
        (0, {REPL_NE: "running"}),
        (4, {REPL_NE: "deferred"}),
        (20, {REPL_NE: "running"}),
        (23, {REPL_NE: "success"}),
    )
    f = summarize(samples, is_wait, parallelism=4, inline_seconds=INLINE)
    assert f["waits"][REPL_NE] == {"running_s": 7, "deferred_s": 16, "running_beyond_inline_s": 3}
    assert f["wait_running_beyond_inline_s"] == 3


def test_two_regions_and_a_non_wait_task_running_concurrently() -> None:
    # westus's replica catches up inline after 6 s; northeurope's defers after 10 s;
    # meanwhile westus deploys (a non-wait task holding a slot) and its rollout gate runs 3 s.
    deploy, rollout = "deploy_westus.helm_deploy", "deploy_westus.gates"
    samples = timeline(
        (0, {REPL_NE: "running", REPL_WU: "running", deploy: None, rollout: None}),
        (6, {REPL_NE: "running", REPL_WU: "success", deploy: "running", rollout: None}),
        (10, {REPL_NE: "deferred", REPL_WU: "success", deploy: "running", rollout: None}),
        (12, {REPL_NE: "deferred", REPL_WU: "success", deploy: "success", rollout: "running"}),
        (15, {REPL_NE: "deferred", REPL_WU: "success", deploy: "success", rollout: "success"}),
        (30, {REPL_NE: "success", REPL_WU: "success", deploy: "success", rollout: "success"}),
    )
    f = summarize(samples, is_wait, parallelism=2, inline_seconds=INLINE)
    assert f["duration_s"] == 30
    assert f["peak_running"] == 2
    assert f["min_free_slots"] == 0
    assert f["peak_deferred"] == 1
    # running task-seconds: 2×6 + 2×4 + 1×2 + 1×3 = 25
    assert f["mean_running"] == 25 / 30
    assert f["mean_deferred"] == 20 / 30
    assert f["wait_running_s"] == 10 + 6 + 3
    assert f["wait_deferred_s"] == 20
    assert f["wait_running_beyond_inline_s"] == 0
    assert f["wait_deferred_beyond_inline_s"] == 20
    # At 12 s the rollout gate runs while northeurope's replication is deferred.
    assert f["peak_running_waits_while_deferred"] == 1
    assert f["waits"] == {
        REPL_NE: {"running_s": 10, "deferred_s": 20, "running_beyond_inline_s": 0},
        REPL_WU: {"running_s": 6, "deferred_s": 0, "running_beyond_inline_s": 0},
        rollout: {"running_s": 3, "deferred_s": 0, "running_beyond_inline_s": 0},
    }


def test_one_sample_gives_peaks_but_no_time() -> None:
    f = summarize(timeline((5, {REPL_NE: "running", "build": "running"})), is_wait, parallelism=8)
    assert (f["duration_s"], f["peak_running"], f["mean_running"], f["wait_running_s"]) == (0, 2, 0.0, 0.0)


class FlakyApi:
    def __init__(self) -> None:
        self.calls = 0

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, object]]:
        self.calls += 1
        if self.calls == 2:
            raise OSError("connection reset")
        return [
            {"task_id": "build", "state": "running", "map_index": -1},
            {"task_id": "m", "state": "queued", "map_index": 2},
        ]


def test_sampler_counts_errors_and_goes_on() -> None:
    api = FlakyApi()
    sampler = SlotSampler(api, "release_hello", "r1", interval=0)
    for _ in range(3):
        sampler.poll_once()
    assert sampler.errors == 1
    assert "connection reset" in sampler.last_error
    assert [states for _, states in sampler.samples] == [{"build": "running", "m[2]": "queued"}] * 2
    assert sampler.samples[0][0] <= sampler.samples[1][0]


def test_sampler_as_context_manager_samples_until_exit() -> None:
    api = FlakyApi()
    with SlotSampler(api, "release_hello", "r1", interval=0.01) as sampler:
        while api.calls < 5:
            time.sleep(0.01)
    calls = api.calls
    assert len(sampler.samples) == calls - 1  # every call but the failed one
    assert not sampler._thread.is_alive()
