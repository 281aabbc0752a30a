"""The local fleet's fault knobs, all in one file: `<state_dir>/faults.json`.

Every component reads it on each use (the replicator each loop, an edge or a registry front on
each request, the Traffic Manager stand-in on each ARM call), so a knob takes effect at once and
clearing it undoes it. Writers go through `edit`, under one lock, so two knobs set at
once never lose each other's keys.

Knobs: "replica_lag" {region: seconds}, "replica_stuck" [regions], "registry_auth"
{region: 401 | 403} (the region's registry front refuses every request with that status),
"edge_unhealthy" [regions], "tm_errors" {"status", "remaining"}, "region_down" [regions],
"rollout_unhealthy" [regions], "resolver_stuck" true (the simulated users' resolvers),
"token_lifetime" seconds (tokens the local Entra ID stand-in mints while it is set live that long),
"bad_build" {region: {"error_rate": {"ratio", "good": [digests]}, "latency": {"ms", "good"}}} (the
region's edge fails or delays user requests served by any digest not in "good").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_thread_lock = threading.Lock()  # flock is per process; threads of one server need their own


def faults_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "faults.json"


def read_faults(state_dir: str | Path) -> dict[str, Any]:
    """The current faults; {} if none. A broken file counts as none (and says so)."""
    try:
        data = json.loads(faults_path(state_dir).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s: %s", faults_path(state_dir), err)
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def edit(state_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the faults under the lock; the file is replaced atomically."""
    path = faults_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock, path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_faults(state_dir)
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            tmp.replace(path)


def update_faults(state_dir: str | Path, **changes: Any) -> dict[str, Any]:
    """Set knobs by name; a value of None clears that knob. Returns the new faults."""
    with edit(state_dir) as data:
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return dict(data)


def set_region_flag(state_dir: str | Path, knob: str, region: str, on: bool) -> None:
    """Add `region` to (or remove it from) a list knob such as "edge_unhealthy"."""
    with edit(state_dir) as data:
        regions = [r for r in data.get(knob) or [] if r != region] + ([region] if on else [])
        if regions:
            data[knob] = sorted(regions)
        else:
            data.pop(knob, None)


def regions_with(faults: dict[str, Any], region: str) -> list[str]:
    """The knobs that currently affect `region` (for status tables)."""
    return sorted(k for k, v in faults.items() if isinstance(v, (list, dict)) and region in v)
