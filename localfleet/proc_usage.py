"""CPU seconds and memory of the local Airflow's processes, read from /proc (Linux).

The stack's layout (localfleet.airflow_stack): the scheduler, dag-processor, triggerer and
api-server are separate processes with pidfiles; LocalExecutor's workers are children of the
scheduler, and each task runs in a process its worker forks (which may run helm, buildah, git).

CPU of a process tree between two moments, exactly: a live process's own time (utime + stime)
plus what it collected from children it reaped (cutime + cstime) covers every process of the
tree that ever lived under it, so a task process that came and went between two readings is
still counted (its worker reaped it). Memory, sampled: the sum of resident set sizes (RSS), and
of proportional set sizes (PSS: a page shared by n processes counts 1/n in each). Forked
workers and task processes share most of their pages with the scheduler, so the RSS sum counts
those pages once per process and overstates what the machine needs; the PSS sum does not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Stat:
    pid: int
    ppid: int
    own: float  # CPU seconds of the process itself
    reaped: float  # CPU seconds of its children it has waited for
    rss: int  # bytes


def parse_stat(text: str) -> Stat:
    """One /proc/<pid>/stat line. The command name (field 2) may hold spaces and parentheses: the
    fields after it are split from its last ')'."""
    pid = int(text.split(" ", 1)[0])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17, rss 24.
    ppid, utime, stime, cutime, cstime, rss = (int(rest[i - 3]) for i in (4, 14, 15, 16, 17, 24))
    return Stat(pid, ppid, (utime + stime) / TICKS, (cutime + cstime) / TICKS, rss * PAGE)


def read_all(proc: Path = PROC) -> dict[int, Stat]:
    found = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return found


def tree(stats: Mapping[int, Stat], root: int) -> set[int]:
    """`root` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    found, todo = set(), [root] if root in stats else []
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu(stats: Mapping[int, Stat], pids: Iterable[int]) -> float:
    """CPU seconds of a process tree so far: every live member's own plus what it reaped."""
    return sum(stats[p].own + stats[p].reaped for p in pids if p in stats)


def usage(stats: Mapping[int, Stat], roots: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds so far per part: each root's whole tree; the scheduler's own process apart from
    its descendants (`workers`: LocalExecutor's workers and every task process they ran)."""
    out: dict[str, float] = {}
    for name, pid in roots.items():
        if pid is None or pid not in stats:
            continue
        members = tree(stats, pid)
        if name == "scheduler":
            out["scheduler"] = stats[pid].own
            out["workers"] = tree_cpu(stats, members) - stats[pid].own
        else:
            out[name] = tree_cpu(stats, members)
    return out


def members(stats: Mapping[int, Stat], roots: Mapping[str, int | None]) -> set[int]:
    return set().union(*(tree(stats, pid) for pid in roots.values() if pid is not None))


def rss(stats: Mapping[int, Stat], roots: Mapping[str, int | None]) -> int:
    """Bytes resident in every process of the roots' trees."""
    return sum(stats[p].rss for p in members(stats, roots))


def parse_pss(text: str) -> int:
    """Bytes of the `Pss:` line of /proc/<pid>/smaps_rollup."""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def pss(pids: Iterable[int], proc: Path = PROC) -> int:
    total = 0
    for pid in pids:
        try:
            total += parse_pss((proc / str(pid) / "smaps_rollup").read_text())
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return total


class Sampler:
    """CPU seconds between start and stop, and the peak RSS sum seen meanwhile (sampled every
    `interval` s in a thread), of the given parts' process trees."""

    def __init__(self, roots: Mapping[str, int | None], interval: float = 0.5):
        self.roots, self.interval = dict(roots), interval
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._start: dict[str, float] = {}

    def __enter__(self) -> Sampler:
        stats = read_all()
        self._start = usage(stats, self.roots)
        self._memory(stats)
        self._thread.start()
        return self

    def _memory(self, stats: Mapping[int, Stat]) -> None:
        self.peak_rss = max(self.peak_rss, rss(stats, self.roots))
        self.peak_pss = max(self.peak_pss, pss(members(stats, self.roots)))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._memory(read_all())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        end = usage(read_all(), self.roots)
        self.cpu = {name: end[name] - self._start.get(name, 0.0) for name in end}
