"""Run detached local processes for the local fleet, with a pidfile and a log file each.

Every piece of the local fleet (registries, replicator, edges, control planes) is a
plain process that must outlive the command that started it, so `start` puts it in
its own session and records it under the state dir::

    <state_dir>/pids/<name>.pid   {"pid": 1234, "cmdline": [...]}
    <state_dir>/logs/<name>.log   stdout and stderr, appended across restarts

`start` is idempotent and `stop` kills the whole process group. A process counts as
ours only if /proc still shows the start time we recorded (pidfiles of older versions:
the command line), so a recycled PID is never mistaken for (or killed as) one of ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fanout.cache import cache_dir

DEFAULT_STATE_DIR = cache_dir() / "localfleet"


class ProcError(RuntimeError):
    """A local process failed to start or stop; the message names it and quotes its log."""


def log_path(name: str, state_dir: str | Path) -> Path:
    return Path(state_dir) / "logs" / f"{name}.log"


def pid_path(name: str, state_dir: str | Path) -> Path:
    return Path(state_dir) / "pids" / f"{name}.pid"


def log_tail(name: str, state_dir: str | Path, lines: int = 20) -> str:
    """The last `lines` lines of a process's log ('' if it has none)."""
    try:
        with log_path(name, state_dir).open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _error(name: str, state_dir: str | Path, what: str) -> ProcError:
    tail = log_tail(name, state_dir)
    quoted = "\n".join(f"  | {line}" for line in tail.splitlines()) or "  | (empty)"
    return ProcError(f"{name}: {what}; last lines of {log_path(name, state_dir)}:\n{quoted}")


def _cmdline(pid: int) -> list[str] | None:
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # A zombie has exited already; it only waits for its parent to reap it.
        if stat.rpartition(")")[2].split()[0] == "Z":
            return None
        if raw:
            return raw.decode(errors="replace").split("\0")[:-1]
        # Right after exec the kernel briefly shows an empty cmdline; it is not a mismatch.
        time.sleep(0.01)
    return []


def _read_pidfile(name: str, state_dir: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads(pid_path(name, state_dir).read_text())
        int(data["pid"])
        return data
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _started(found: int) -> int | None:
    """When `found` started (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return int(Path(f"/proc/{found}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid(name: str, state_dir: str | Path) -> int | None:
    """The pid of our running process `name`, or None."""
    recorded = _read_pidfile(name, state_dir)
    if recorded is None:
        return None
    found = int(recorded["pid"])
    if "started" in recorded:
        # Start time, not the command line: some programs retitle themselves (setproctitle).
        alive_now = _state(found) not in (None, "Z")
        return found if alive_now and _started(found) == recorded["started"] else None
    return found if _cmdline(found) == recorded.get("cmdline") else None


def alive(name: str, state_dir: str | Path) -> bool:
    return pid(name, state_dir) is not None


def _state(found: int) -> str | None:
    """The one-letter state /proc shows for `found` ("R", "S", "Z", ...), or None once it is gone."""
    try:
        return Path(f"/proc/{found}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _reap(found: int, block: bool = False) -> None:
    # Only our direct children can be reaped; anyone else's is init's business.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(found, 0 if block else os.WNOHANG)


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _write_pidfile(name: str, state_dir: str | Path, found: int, cmdline: list[str]) -> None:
    path = pid_path(name, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": found, "cmdline": cmdline, "started": _started(found)}))
    tmp.replace(path)


def start(
    name: str,
    argv: Sequence[str],
    state_dir: str | Path,
    env: Mapping[str, str] | None = None,
    ready: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    cwd: str | Path | None = None,
    user: str | None = None,
) -> int:
    """Start `argv` detached as `name` and return its pid; if it already runs, return that pid.

    `env` is added to this process's environment; `user` (when root) runs it as that user and
    its primary group. `ready` is polled until it returns true;
    if the process dies or `timeout` passes first it is stopped and ProcError names it.
    """
    running = pid(name, state_dir)
    if running is not None:
        return running
    log = log_path(name, state_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                user=user,
                group=user and _primary_group(user),
                extra_groups=[] if user else None,
            )
        except OSError as err:
            raise ProcError(f"{name}: cannot run {argv[0]}: {err.strerror}") from None
    # Record what /proc shows, not argv: that is what `pid` compares against later.
    _write_pidfile(name, state_dir, proc.pid, _cmdline(proc.pid) or list(argv))
    if ready is None:
        return proc.pid
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            pid_path(name, state_dir).unlink(missing_ok=True)
            raise _error(name, state_dir, f"exited with code {code} while starting")
        with contextlib.suppress(Exception):
            if ready():
                return proc.pid
        if time.monotonic() > deadline:
            stop(name, state_dir)
            raise _error(name, state_dir, f"not ready after {timeout:.0f}s (stopped it)")
        time.sleep(0.1)


def stop(name: str, state_dir: str | Path, timeout: float = 10.0) -> bool:
    """Stop `name`'s process group: SIGTERM, then SIGKILL after `timeout`. True if it was running."""
    found = pid(name, state_dir)
    pid_path(name, state_dir).unlink(missing_ok=True)
    if found is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(found, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(found)
        if _cmdline(found) is None:
            break
        time.sleep(0.05)
    # Children may linger after the leader exits; the group id still reaches them.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(found, signal.SIGKILL)
    # A multi-threaded leader shows "Z" while its other threads are still exiting, and WNOHANG
    # cannot reap it until they are gone: that zombie would stay for as long as we run. After
    # SIGKILL those threads go at once, so a blocking wait is short (and fails at once if the
    # zombie is not our child).
    deadline = time.monotonic() + 5
    while (state := _state(found)) is not None and time.monotonic() < deadline:
        if state == "Z":
            _reap(found, block=True)
            break
        _reap(found)
        time.sleep(0.05)
    return True


def adopt(name: str, found: int, state_dir: str | Path, program: str) -> bool:
    """Record the running process `found` as `name`, if its argv[0] names `program`; True if it did.

    For processes started before they were managed here: from then on `pid` and `stop` find
    them like any other. The program check keeps a recycled pid from being adopted.
    """
    cmdline = _cmdline(found)
    if not cmdline or Path(cmdline[0]).name != program:
        return False
    _write_pidfile(name, state_dir, found, cmdline)
    return True


def pids_mentioning(text: str | Path) -> list[int]:
    """Processes (but this one) whose command line or environment contains `text`: with a folder
    of ours, every process started for it, whatever became of the one that started it."""
    marker, found = str(text).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on host:port; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.1)


# Ports free_port hands out: below Linux's ephemeral range (net.ipv4.ip_local_port_range, by default
# 32768-60999). A port the kernel picked for bind(0) was free only at that moment: any process's next
# bind(0) or outgoing connection could take it before the part meant for it bound it, and with two test
# workers starting fleets at once that happened (a git server's port answered by another worker's part).
# Here one counter, shared by every process on the machine through a locked file, hands out each port
# in turn, and nothing else takes ports from this range.
FREE_PORTS = range(20000, 32000)
_NEXT_PORT = Path(tempfile.gettempdir()) / "fanout-next-free-port"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now and that no other caller of free_port will get soon (see FREE_PORTS)."""
    with _NEXT_PORT.open("a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)  # released when the file closes
        counter.seek(0)
        text = counter.read().strip()
        port = int(text) if text.isdigit() else FREE_PORTS.start + os.getpid() % len(FREE_PORTS)
        for _ in FREE_PORTS:
            port = FREE_PORTS.start + (port - FREE_PORTS.start) % len(FREE_PORTS)
            if _bindable(host, port):
                break
            port += 1
        else:
            raise ProcError(f"no free port on {host} in {FREE_PORTS.start}-{FREE_PORTS.stop - 1}")
        counter.seek(0)
        counter.truncate()
        counter.write(str(port + 1))
    return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)
