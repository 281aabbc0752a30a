"""Geo-replication stand-in: copy every image pushed to the home registry to the other
regions' registries, each after its region's lag, so replication waits are real waits.

    python -m localfleet.replicator --fleet include/fleets/local.yaml [--state-dir D]
    python -m localfleet.replicator --fleet ... --status     # when each digest reached each region

A digest first seen at home at time T reaches region R at T + lag(R), where lag(R) is
`regions[].local.replication_lag_seconds` unless `<state_dir>/faults.json` overrides it:

    {"replica_lag": {"westus": 30}, "replica_stuck": ["northeurope"]}

A stuck region gets nothing until it is cleared, then catches up at once. Tags follow
their digests. What was copied is kept in `<state_dir>/replication.json`, so a restart
does not copy again. Only tagged images are seen: the registry API cannot list the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fanout.fleet import Fleet, load_fleet
from localfleet import procs, registry
from localfleet.faults import read_faults

log = logging.getLogger("localfleet.replicator")
PROC_NAME = "replicator"
RETRY_SECONDS = 2.0
HEARTBEAT_SECONDS = 5.0

# (source reference, destination reference) -> raises on failure
Copier = Callable[[str, str], None]


def _write_json(path: Path, data: Any) -> None:
    # Readers poll these files; an atomic replace means they never see half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# -- replication -----------------------------------------------------------------------


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "replication.json"


def read_state(state_dir: str | Path) -> dict[str, Any]:
    """replication.json: {"digests": {d: {"seen", "regions": {r: {"at", "waited", "lag"}}}}, "tags", "region_tags"}"""
    try:
        data = json.loads(state_path(state_dir).read_text())
    except (OSError, ValueError):
        data = {}
    return {**empty_state(), **data}


def empty_state() -> dict[str, Any]:
    return {"digests": {}, "tags": {}, "region_tags": {}}


def skopeo_copy(src: str, dest: str) -> None:
    argv = ["skopeo", "copy", "--quiet", "--all", "--preserve-digests"]
    argv += ["--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{src}", f"docker://{dest}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        last = lines[-1] if lines else f"skopeo exited with {done.returncode}"
        # Keep only logrus's msg="…": its time= prefix would make every retry look like a new error.
        raise RuntimeError(last.split(' msg="', 1)[-1].removesuffix('"').replace('\\"', '"'))


class Replicator:
    """One polling loop; `step` is a single pass (tests drive it directly)."""

    def __init__(
        self,
        fleet: Fleet,
        state_dir: str | Path,
        copier: Copier = skopeo_copy,
        clock: Callable[[], float] = time.time,
    ):
        self.fleet = fleet
        self.clock = clock
        self.state_dir = Path(state_dir)
        self.copier = copier
        self.repo = fleet.registry.repository
        self.home = fleet.registry.home
        self.state = read_state(state_dir)
        if {k: self.state.get(k, v) for k, v in self.owner().items()} != self.owner():
            # Another fleet's record (other home, registries or repository): nothing in it is true here.
            log.warning("replication.json belongs to another fleet (%s); starting afresh", self.state.get("fleet"))
            self.state = empty_state()
        self._lock = threading.Lock()
        self._retry_at: dict[str, float] = {}
        self._last_error: dict[str, str] = {}

    def endpoint(self, region: str) -> str:
        return self.fleet.registry.endpoint(region)

    def owner(self) -> dict[str, Any]:
        """What replication.json must have been written for to be true of this fleet."""
        return {
            "fleet": str(self.fleet.source_path),
            "home": self.home,
            "repository": self.repo,
            "endpoints": {r: self.endpoint(r) for r in self.fleet.region_names},
        }

    def lag(self, region: str, faults: dict[str, Any]) -> float:
        override = (faults.get("replica_lag") or {}).get(region)
        if override is not None:
            return float(override)
        local = self.fleet.region(region).local
        return float(local.replication_lag_seconds if local else 0)

    def _note_error(self, key: str, message: str) -> None:
        # A registry that stays down would otherwise log twice a second.
        if self._last_error.get(key) != message:
            log.warning("%s: %s (retrying)", key, message)
            self._last_error[key] = message

    def _clear_error(self, key: str) -> None:
        if self._last_error.pop(key, None) is not None:
            log.info("%s: working again", key)

    def poll_home(self, now: float) -> bool:
        """Record digests and tag moves that are new at home. False if home did not answer."""
        home = self.endpoint(self.home)
        try:
            # The catalog first: asking an empty registry for tags logs an error in it every poll.
            known = self.repo in registry.list_repositories(home)
            tags = registry.tag_digests(home, self.repo) if known else {}
        except (registry.RegistryError, ValueError) as err:
            self._note_error(f"home {self.home}", str(err))
            return False
        self._clear_error(f"home {self.home}")
        for tag, digest in sorted(tags.items()):
            if self.state["digests"].get(digest, {}).get("gone"):
                # Pushed again (a rebuild of the same commit gives the same digest): replicate it again.
                log.info("%s is back at home (tag %s); replicating it again", digest, tag)
                del self.state["digests"][digest]
            if digest not in self.state["digests"]:
                log.info("new at home: %s (tag %s)", digest, tag)
                self.state["digests"][digest] = {
                    "seen": now,
                    "regions": {self.home: {"at": now, "waited": 0.0, "lag": 0.0}},
                }
            if self.state["tags"].get(tag, {}).get("digest") != digest:
                self.state["tags"][tag] = {"digest": digest, "seen": now}
        return True

    def _due(self, region: str, lag: float, now: float) -> tuple[list[str], list[str]]:
        have = {d for d, e in self.state["digests"].items() if region in e["regions"]}
        digests = [
            d
            for d, e in sorted(self.state["digests"].items(), key=lambda kv: kv[1]["seen"])
            if d not in have and not e.get("gone") and now >= e["seen"] + lag
        ]
        placed = self.state["region_tags"].get(region, {})
        tags = [
            t for t, b in sorted(self.state["tags"].items()) if placed.get(t) != b["digest"] and now >= b["seen"] + lag
        ]
        return digests, tags

    def _replicate(self, region: str, lag: float, now: float) -> None:
        digests, tags = self._due(region, lag, now)
        src, dest = f"{self.endpoint(self.home)}/{self.repo}", f"{self.endpoint(region)}/{self.repo}"
        for digest in digests:
            entry = self.state["digests"][digest]
            # Copy to a tag when one is due for this digest: every manifest PUT rewrites the
            # digest's link file non-atomically, and distribution answers 500 to a HEAD that
            # reads it half-written, so one PUT per digest keeps that window as small as it goes.
            tag = next((t for t in tags if self.state["tags"][t]["digest"] == digest), None)
            t0 = self.clock()
            try:
                self.copier(f"{src}@{digest}", f"{dest}:{tag}" if tag else f"{dest}@{digest}")
            except Exception as err:
                self._fail(region, digest, err)
                return
            done = self.clock()
            with self._lock:
                entry["regions"][region] = {"at": done, "waited": round(done - entry["seen"], 3), "lag": lag}
                if tag:
                    self.state["region_tags"].setdefault(region, {})[tag] = digest
            log.info(
                "copied %s%s to %s: lag %.1fs, waited %.2fs, copy took %.2fs",
                digest, f" (tag {tag})" if tag else "", region, lag, done - entry["seen"], done - t0,
            )  # fmt: skip
        placed = self.state["region_tags"].setdefault(region, {})
        for tag in tags:
            digest = self.state["tags"][tag]["digest"]
            if placed.get(tag) == digest or region not in self.state["digests"].get(digest, {}).get("regions", {}):
                continue  # placed above, or its digest is not there yet (copy failed or the entry is gone)
            try:
                self.copier(f"{src}@{digest}", f"{dest}:{tag}")
            except Exception as err:
                self._fail(region, digest, err)
                return
            with self._lock:
                placed[tag] = digest
            log.info("tagged %s:%s = %s in %s", self.repo, tag, digest, region)
        self._clear_error(region)

    def _fail(self, region: str, digest: str, err: Exception) -> None:
        self._retry_at[region] = self.clock() + RETRY_SECONDS
        try:
            gone = not registry.has_manifest(self.endpoint(self.home), self.repo, digest)
        except registry.RegistryError:
            gone = False
        if gone:
            # Deleted at home: retrying could never succeed.
            log.warning("%s was deleted at home; not replicating it any further", digest)
            with self._lock:
                self.state["digests"][digest]["gone"] = True
            return
        self._note_error(region, f"copy of {digest} failed: {err}")

    def verify(self) -> None:
        """Forget copies a region no longer has (e.g. its storage was wiped), so they are redone."""
        for region in self.fleet.region_names:
            if region == self.home or not registry.registry_up(self.endpoint(region)):
                continue
            for digest, entry in self.state["digests"].items():
                if region in entry["regions"] and not registry.has_manifest(self.endpoint(region), self.repo, digest):
                    log.info("%s is missing in %s; will copy it again", digest, region)
                    del entry["regions"][region]
                    self.state["region_tags"].get(region, {}).clear()

    def step(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        before = json.dumps(self.state, sort_keys=True)
        if self.poll_home(now):
            faults = read_faults(self.state_dir)
            stuck = set(faults.get("replica_stuck") or [])
            regions = [
                r
                for r in self.fleet.region_names
                if r != self.home and r not in stuck and self._retry_at.get(r, 0) <= now
            ]
            if regions:
                with ThreadPoolExecutor(len(regions)) as pool:
                    list(pool.map(lambda r: self._replicate(r, self.lag(r, faults), now), regions))
        if json.dumps(self.state, sort_keys=True) != before:
            self.state.update(self.owner())
            _write_json(state_path(self.state_dir), self.state)

    def next_due(self, now: float) -> float | None:
        """When the next copy falls due, if after `now`: wake up then rather than on the next poll."""
        faults = read_faults(self.state_dir)
        stuck = set(faults.get("replica_stuck") or [])
        times = [
            max(entry["seen"] + self.lag(region, faults), self._retry_at.get(region, 0))
            for entry in self.state["digests"].values()
            if not entry.get("gone")
            for region in self.fleet.region_names
            if region not in entry["regions"] and region not in stuck
        ]
        # Overdue copies are waiting on something (a registry down): they keep the poll pace.
        future = [t for t in times if t > now]
        return min(future) if future else None

    def run(self, interval: float = 0.5, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        with contextlib.suppress(registry.RegistryError):
            self.verify()
        log.info("replicating %s from %s every %.1fs", self.repo, self.home, interval)
        beat = 0.0
        while not stop.is_set():
            started = time.monotonic()
            if started - beat >= HEARTBEAT_SECONDS:
                # Tells `start_replicator` (and a status command) that the loop is turning.
                heartbeat_path(self.state_dir).write_text(f"{self.clock()}\n")
                beat = started
            try:
                self.step()
            except Exception:
                # One bad pass (say, a half-written faults file) must not end replication.
                log.exception("replication pass failed; trying again")
            wait = interval - (time.monotonic() - started)
            due = self.next_due(self.clock())
            if due is not None:
                wait = min(wait, due - self.clock())
            stop.wait(max(0.0, wait))


def start_replicator(fleet: Fleet, state_dir: str | Path) -> int:
    """Start the replicator process for `fleet` (no-op if it runs)."""
    if fleet.source_path is None:
        raise ValueError("the fleet must come from a file (load_fleet) to start a replicator for it")
    argv = [sys.executable, "-m", "localfleet.replicator", "--fleet", str(fleet.source_path)]
    argv += ["--state-dir", str(Path(state_dir).resolve())]
    root = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": f"{root / 'plugins'}:{root}"}
    if procs.pid(PROC_NAME, state_dir) is None:
        heartbeat_path(state_dir).unlink(missing_ok=True)
    return procs.start(
        PROC_NAME, argv, state_dir, env=env, cwd=root, ready=heartbeat_path(state_dir).exists, timeout=30
    )


def heartbeat_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "replicator.heartbeat"


def stop_replicator(state_dir: str | Path) -> bool:
    return procs.stop(PROC_NAME, state_dir)


def status_lines(fleet: Fleet, state_dir: str | Path) -> list[str]:
    """One line per digest: when it was seen at home and how long each region waited for it."""
    state = read_state(state_dir)
    lines = []
    for digest, entry in sorted(state["digests"].items(), key=lambda kv: kv[1]["seen"]):
        seen = time.strftime("%H:%M:%S", time.localtime(entry["seen"]))
        cells = []
        for region in fleet.region_names:
            got = entry["regions"].get(region)
            cells.append(f"{region}=+{got['waited']:.1f}s" if got else f"{region}=pending")
        lines.append(f"{digest[:19]} seen {seen}  " + "  ".join(cells))
    running = procs.alive(PROC_NAME, state_dir)
    try:
        beat = f", loop turned {time.time() - float(heartbeat_path(state_dir).read_text()):.0f}s ago"
    except (OSError, ValueError):
        beat = ""
    head = f"replicator: {'running' if running else 'NOT running'}{beat if running else ''}"
    return [head, *(lines or ["nothing replicated yet"])]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.replicator", description=__doc__.split("\n")[0])
    parser.add_argument("--fleet", required=True, type=Path)
    parser.add_argument("--state-dir", type=Path, default=procs.DEFAULT_STATE_DIR)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--status", action="store_true", help="print what reached which region, then exit")
    args = parser.parse_args(argv)
    fleet = load_fleet(args.fleet)
    if args.status:
        print("\n".join(status_lines(fleet, args.state_dir)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    Replicator(fleet, args.state_dir).run(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
