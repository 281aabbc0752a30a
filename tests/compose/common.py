"""What the compose test's fixtures and test share: the image's settings and the figures it prints."""

from __future__ import annotations

import time

AIRFLOW_VERSION = "3.3.2"
FANOUT_IMAGE = f"fanout-airflow:{AIRFLOW_VERSION}"
AIRFLOW_UID = 50000  # the compose file's default

TIMINGS: dict[str, float] = {}
SIZES: dict[str, str] = {}


def say(line: str) -> None:
    print(f"[compose] {line}", flush=True)


class timing:
    """Records how long its block took under `label`, and prints it."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        TIMINGS[self.label] = time.monotonic() - self.started
        say(f"[timing] {self.label}: {TIMINGS[self.label]:.1f} s")
