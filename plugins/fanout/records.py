"""What a release's tasks hand each other, and what the CLI and the tests read back: one typed
record per fact, each with one way in and out of XCom (a plain JSON dict).

Plain data only: no Airflow here, so the core and the tests use the same types.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from fanout.fleet import Fleet, fleet_from_text, read_fleet_source


class _Record:
    """to_xcom / from_xcom for a frozen dataclass whose fields are JSON values."""

    def to_xcom(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_xcom(cls, data: dict[str, Any] | None) -> Self | None:
        """None for a task that recorded nothing (skipped, failed early, never ran)."""
        if not data:
            return None
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        # Older runs' records may lack newer fields (defaults fill them) or carry retired ones.
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Release(_Record):
    """The one image a run releases everywhere: pinned by digest, never a tag."""

    digest: str
    repository: str
    tag: str | None = None
    git_sha: str | None = None  # the full sha the build resolved
    source_ref: str | None = None
    source_url: str | None = None
    built: bool = False  # False: reused from the registry, or built by CI
    # When the run pinned the digest (epoch seconds): geo-replication starts from the push, so
    # every region's replication wait counts its time from here, not from its own start.
    pinned_at: float | None = None


@dataclass(frozen=True)
class StepFailure(_Record):
    """Why a step failed: what the rollback, rebalance and the run's final message name."""

    region: str | None
    gate: str
    cause: str
    # True when the step failed only because an earlier failure stopped the release (a wave's
    # verdict): the run's message names the causes, not their consequences.
    consequence: bool = False

    def line(self) -> str:
        return f"{self.region or 'release'}: {self.gate}: {self.cause}"


@dataclass(frozen=True)
class DrainOutcome(_Record):
    was_enabled: bool
    held_seconds: float = 0.0  # how long a freeze, pause or deploy window held the drain back


@dataclass(frozen=True)
class DeployOutcome(_Record):
    """What helm_deploy did: `previous_revision` is where a rollback returns to."""

    changed: bool
    previous_revision: int | None = None
    revision: int | None = None


@dataclass(frozen=True)
class RollbackOutcome(_Record):
    region: str | None
    gate: str
    cause: str
    rolled_back_to: int | None = None
    traffic: str = "drained"
    serving: str | None = None


@dataclass(frozen=True)
class Observation(_Record):
    """What one region really runs and serves, as the consistency check saw it (fanout.drift
    judges these; its docstring shows each field's shape)."""

    region: str
    reachable: bool = True
    error: str | None = None
    deployment: dict[str, Any] | None = None
    pods: list[str] | None = None
    helm: dict[str, Any] | None = None
    replica_has_digest: bool | None = None
    endpoint: dict[str, Any] | None = None
    traffic_error: str | None = None


@dataclass(frozen=True)
class FleetSnapshot(_Record):
    """The fleet file as `validate` read it, and the waves it planned. Every later task of the
    run decides from this, not from the file, so an edit during a run cannot mix old waves with
    new weights or pairs."""

    path: str
    sha256: str
    text: str
    waves: list[list[str]] = field(default_factory=list)

    @classmethod
    def of_file(cls, path: str | Path, waves: list[list[str]] | None = None) -> FleetSnapshot:
        text = read_fleet_source(path)
        return cls(str(path), content_hash(text), text, waves or [])

    def fleet(self) -> Fleet:
        return _parsed(self.sha256, self.path, self.text)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_PARSED: dict[tuple[str, str], Fleet] = {}


def _parsed(sha256: str, path: str, text: str) -> Fleet:
    # A task asks for the fleet many times; the text does not change under a given hash.
    key = (sha256, path)
    if key not in _PARSED:
        _PARSED[key] = fleet_from_text(text, Path(path))
    return _PARSED[key]


def release_shape(fleet: Fleet, plan: Any) -> dict[str, Any]:
    """What the release DAG's graph is built from: a fleet file that gives another shape needs a
    new graph, so a run started on the old one must not decide from the new file."""
    return {
        "waves": [list(w.regions) for w in plan.waves],
        "metric_gates": fleet.gates.metrics is not None,
        "manual_approval": fleet.rollout.manual_approval,
        "failure_policy": fleet.failure_policy,
    }


def shape_changes(built: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per difference between the graph the DAG was built with and the file's today."""
    return [f"{key}: built with {built.get(key)!r}, the file now gives {now.get(key)!r}" for key in
            sorted(set(built) | set(now)) if built.get(key) != now.get(key)]  # fmt: skip
