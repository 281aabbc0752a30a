"""Where Fanout keeps what it builds and caches on a machine: FANOUT_CACHE, else ~/.cache/fanout."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FANOUT_CACHE") or Path.home() / ".cache" / "fanout")
