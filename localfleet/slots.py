"""How many Airflow worker slots a release run holds while it only waits.

The release's waits (replication, DNS settle, gates, bakes) look once in the worker,
then defer to the triggerer, which ends the task (fanout.airflow.waiting): they hold a worker
slot only while the task starts. Whether that holds on a real Airflow is a matter of measurement:
`SlotSampler` samples the run's task states through the REST API, and `summarize` (pure) turns the samples into figures.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from localfleet.poller import Poller

# Seconds of a wait's worker time `summarize` does not count as waiting in a worker. The waits
# have no in-worker phase any more (until fanout.airflow.waiting they polled there for 10 s),
# so every second a wait holds a worker counts.
INLINE_SECONDS = 0.0

Sample = tuple[float, dict[str, str | None]]  # (time.monotonic(), {task_id: state})

_WAIT = re.compile(r"(wait_replication_[\w-]+|deploy_[\w-]+\.(dns_settle|gates)|bake_after_wave_\d+)")


def is_wait(task_id: str) -> bool:
    """A task of the release DAG that only waits (and defers when the wait lasts)."""
    return bool(_WAIT.fullmatch(task_id))


class TaskInstances(Protocol):
    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]: ...


class SlotSampler(Poller):
    """Records the states of one DAG run's tasks every `interval` seconds in a background thread.

    `with SlotSampler(api, dag_id, run_id) as sampler: …` then `sampler.samples`; a failed API call
    is counted in `errors` and the sampling goes on (Poller)."""

    def __init__(self, api: TaskInstances, dag_id: str, run_id: str, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.api, self.dag_id, self.run_id = api, dag_id, run_id
        self.samples: list[Sample] = []

    def poll(self) -> None:
        started = time.monotonic()
        instances = self.api.task_instances(self.dag_id, self.run_id)
        # The states were read some time during the call: its midpoint is the best estimate.
        at = (started + time.monotonic()) / 2
        states: dict[str, str | None] = {}
        for ti in instances:
            index = ti.get("map_index", -1)
            name = ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"
            states[name] = ti.get("state")
        self.samples.append((at, states))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.poll_once()  # the final states, so the last interval ends when sampling did


def summarize(
    samples: Sequence[Sample],
    waits: Callable[[str], bool],
    parallelism: int,
    inline_seconds: float = INLINE_SECONDS,
) -> dict[str, Any]:
    """Figures of worker-slot use from samples taken in time order.

    Each sample's states hold from its time until the next sample's (the last sample only
    marks the end). A task in state `running` holds one worker slot (LocalExecutor); one in
    `deferred` holds none. "Wait tasks" are those for which `waits(task_id)` is true.

    - samples: number of samples; duration_s: last sample time minus first.
    - parallelism: the worker slots there are (given); min_free_slots = parallelism - peak_running.
    - peak_running / mean_running: most tasks `running` in one sample / the time-weighted mean
      over duration_s (busy worker slots). peak_deferred / mean_deferred: the same for `deferred`.
    - wait_running_s / wait_deferred_s: slot-seconds: the sum over wait tasks of the time each
      spent `running` / `deferred`.
    - wait_running_beyond_inline_s / wait_deferred_beyond_inline_s: the same, counting only the
      time after a wait task's inline phase, which ends once the task has been `running` for
      `inline_seconds` in total or when it is first seen `deferred`, whichever comes first.
      wait_running_beyond_inline_s is the slot time spent waiting in a worker where the design
      says the wait should be deferred: its goal is 0. (A deferred task that resumes runs
      again in a worker; that time counts here too.) All deferred time is beyond the inline
      phase, by this definition.
    - peak_running_waits_while_deferred: the most wait tasks `running` in one sample in which
      at least one wait task was `deferred` (0 when no sample had a deferred wait).
    - waits: per wait task, {"running_s", "deferred_s", "running_beyond_inline_s"}.
    """
    # Per wait task: running seconds so far, and whether its inline phase is over.
    running_so_far: dict[str, float] = {}
    inline_over: set[str] = set()
    per_wait: dict[str, dict[str, float]] = {}
    totals = {"running": 0.0, "deferred": 0.0, "wait_running": 0.0, "wait_deferred": 0.0, "beyond": 0.0}
    peak_running = peak_deferred = peak_waits_while_deferred = 0

    for i, (at, states) in enumerate(samples):
        running = [t for t, s in states.items() if s == "running"]
        deferred = [t for t, s in states.items() if s == "deferred"]
        wait_running = [t for t in running if waits(t)]
        wait_deferred = [t for t in deferred if waits(t)]
        peak_running = max(peak_running, len(running))
        peak_deferred = max(peak_deferred, len(deferred))
        if wait_deferred:
            peak_waits_while_deferred = max(peak_waits_while_deferred, len(wait_running))
        for task in wait_running + wait_deferred:
            per_wait.setdefault(task, {"running_s": 0.0, "deferred_s": 0.0, "running_beyond_inline_s": 0.0})
        inline_over.update(wait_deferred)
        if i + 1 == len(samples):
            break  # the last sample has no interval of its own
        dt = samples[i + 1][0] - at
        totals["running"] += len(running) * dt
        totals["deferred"] += len(deferred) * dt
        totals["wait_running"] += len(wait_running) * dt
        totals["wait_deferred"] += len(wait_deferred) * dt
        for task in wait_deferred:
            per_wait[task]["deferred_s"] += dt
        for task in wait_running:
            before = running_so_far.get(task, 0.0)
            inline_left = 0.0 if task in inline_over else max(0.0, inline_seconds - before)
            beyond = max(0.0, dt - inline_left)
            running_so_far[task] = before + dt
            if running_so_far[task] >= inline_seconds:
                inline_over.add(task)
            per_wait[task]["running_s"] += dt
            per_wait[task]["running_beyond_inline_s"] += beyond
            totals["beyond"] += beyond

    duration = samples[-1][0] - samples[0][0] if samples else 0.0
    return {
        "samples": len(samples),
        "duration_s": duration,
        "parallelism": parallelism,
        "min_free_slots": parallelism - peak_running,
        "peak_running": peak_running,
        "mean_running": totals["running"] / duration if duration > 0 else 0.0,
        "peak_deferred": peak_deferred,
        "mean_deferred": totals["deferred"] / duration if duration > 0 else 0.0,
        "wait_running_s": totals["wait_running"],
        "wait_deferred_s": totals["wait_deferred"],
        "wait_running_beyond_inline_s": totals["beyond"],
        # Deferral ends the inline phase, so every deferred second is beyond it.
        "wait_deferred_beyond_inline_s": totals["wait_deferred"],
        "peak_running_waits_while_deferred": peak_waits_while_deferred,
        "waits": per_wait,
    }
