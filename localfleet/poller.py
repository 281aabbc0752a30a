"""A background watch: what a test or benchmark samples while a release runs."""

from __future__ import annotations

import threading
from typing import Self


class Poller:
    """Calls `poll` every `interval` seconds in a background thread while inside `with`.

    A failed poll is counted in `errors` (the last one in `last_error`) and polling goes on: a part
    that is briefly slow on a loaded machine must not end the watch."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def poll(self) -> None:
        raise NotImplementedError

    def poll_once(self) -> None:
        try:
            self.poll()
        except Exception as err:  # any failure of one poll; the next may succeed
            self.errors += 1
            self.last_error = f"{type(err).__name__}: {err}"

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
