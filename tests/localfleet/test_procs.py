"""localfleet.procs on plain local processes: stopping reaps what it started, adopting a running process."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localfleet import procs

# On SIGTERM the main thread leaves with the exit syscall (not exit_group) while another thread
# lingers: the process then shows "Z" until that thread is gone, as a multi-threaded Go binary
# does for a moment on its way out.
ZOMBIE_LEADER = """
import ctypes, signal, threading, time
def linger():
    time.sleep(2)
def on_term(*_):
    threading.Thread(target=linger).start()
    ctypes.CDLL(None).syscall({sys_exit}, 0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""
SYS_EXIT = {"x86_64": 60, "aarch64": 93}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


@pytest.mark.skipif(platform.machine() not in SYS_EXIT, reason="needs the exit syscall number")
def test_stop_reaps_a_leader_that_exits_before_its_threads(tmp_path: Path) -> None:
    script = tmp_path / "leader.py"
    script.write_text(ZOMBIE_LEADER.format(sys_exit=SYS_EXIT[platform.machine()]))
    pid = procs.start(
        "leader", [sys.executable, str(script)], tmp_path, ready=lambda: "ready" in procs.log_tail("leader", tmp_path)
    )
    assert procs.stop("leader", tmp_path)
    assert _state(pid) == "gone"
    assert procs.pid("leader", tmp_path) is None


def test_adopt_records_a_running_process_so_stop_finds_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert not procs.adopt("sleeper", proc.pid, tmp_path, "not-sleep")
        assert procs.pid("sleeper", tmp_path) is None
        assert procs.adopt("sleeper", proc.pid, tmp_path, "sleep")
        assert procs.pid("sleeper", tmp_path) == proc.pid
        assert procs.stop("sleeper", tmp_path)
        assert proc.wait(timeout=5) is not None
        assert procs.pid("sleeper", tmp_path) is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_of_a_process_that_is_not_running_is_false(tmp_path: Path) -> None:
    started = time.monotonic()
    assert not procs.stop("nothing", tmp_path)
    assert time.monotonic() - started < 1


def _ten_ports(_: int) -> list[int]:
    return [procs.free_port() for _ in range(10)]


def test_free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice(tmp_path, monkeypatch):
    """Two test workers start their fleets at once: no port may go to both, nor be one the kernel
    hands out to outgoing connections meanwhile."""
    import multiprocessing

    monkeypatch.setattr(procs, "_NEXT_PORT", tmp_path / "next-port")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        ports = [port for batch in pool.map(_ten_ports, range(8)) for port in batch]
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert len(set(ports)) == len(ports) == 80
    assert all(port in procs.FREE_PORTS and port < low for port in ports), sorted(ports)


def test_a_port_in_use_is_skipped(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(procs, "_NEXT_PORT", tmp_path / "next-port")
    first = procs.free_port()
    (tmp_path / "next-port").write_text(str(first))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        assert procs.free_port() == first + 1
