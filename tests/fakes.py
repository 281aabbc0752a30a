"""The fast tier's boundary: a fake task instance and context for Fanout's operators, and fakes of
the outside systems FleetHook hands them (Traffic Manager, Helm, clusters, edges, registries).
Each fake keeps what was done to it, so a test asserts on decisions, in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fanout import names
from fanout.adapters.edge import Probe
from fanout.adapters.helm import HelmError, HelmRelease
from fanout.airflow.base import SNAPSHOT_KEY, FanoutOperator
from fanout.fleet import Fleet, load_fleet
from fanout.planner import plan_waves
from fanout.policy import EndpointState
from fanout.records import FleetSnapshot

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "include" / "fleets" / "local.yaml"
DIGEST = "sha256:" + "a" * 64
OLD = "sha256:" + "0" * 64
PARAMS = {"git_sha": "0123456789abcdef", "source_ref": "main", "image": None, "regions": None, "dry_run": False}


class FakeTI:
    """XComs by (task id, key) and task states by task id, for one run."""

    dag_id, run_id, map_index, try_number = "release_hello", "run1", -1, 1

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None, states: dict[str, str] | None = None):
        self.xcoms = dict(xcoms or {})
        self.states = dict(states or {})

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(self.pushing, key)] = value

    pushing = "?"

    def get_task_states(self, dag_id: str, task_ids: list[str] | None = None, run_ids: Any = None) -> dict:
        wanted = self.states if task_ids is None else {t: self.states.get(t) for t in task_ids}
        return {self.run_id: wanted}


def snapshot_of(path: Path = LOCAL) -> FleetSnapshot:
    fleet = load_fleet(path)
    return FleetSnapshot.of_file(path, [list(w.regions) for w in plan_waves(fleet).waves])


def context(ti: FakeTI, params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"ti": ti, "params": {**PARAMS, **(params or {})}, "run_id": ti.run_id, **extra}


def released(ti: FakeTI, digest: str = DIGEST, path: Path = LOCAL) -> FakeTI:
    """A run past validate and build: its snapshot and release recorded."""
    ti.xcoms[(names.VALIDATE, SNAPSHOT_KEY)] = snapshot_of(path).to_xcom()
    ti.xcoms[(names.BUILD, "return_value")] = {"digest": digest, "repository": "fanout/hello", "tag": "t"}
    return ti


def run_task(op: FanoutOperator, ti: FakeTI, hook: Any, params: dict[str, Any] | None = None, **extra: Any) -> Any:
    """op.execute with this fake run and hook; XComs it pushes land under its task id."""
    op._hook, op._fleet = hook, hook.fleet
    ti.pushing = op.task_id
    out = op.execute(context(ti, params, **extra))
    if out is not None:
        ti.xcoms[(op.task_id, "return_value")] = out
    return out


# -- the outside systems ---------------------------------------------------------------


class FakeTrafficManager:
    def __init__(self, fleet: Fleet):
        self.state = {
            r.endpoint.name: EndpointState(r.endpoint.name, r.endpoint.type, True, r.endpoint.weight, "Online")
            for r in fleet.regions
        }
        self.calls: list[tuple[str, bool, int | None]] = []

    def endpoints(self) -> dict[str, EndpointState]:
        return dict(self.state)

    def set_endpoint(self, name: str, *, enabled: bool, weight: int | None = None) -> EndpointState:
        self.calls.append((name, enabled, weight))
        current = self.state[name]
        self.state[name] = replace(current, enabled=enabled, weight=weight or current.weight)
        assert any(e.enabled for e in self.state.values()), "every endpoint disabled: NXDOMAIN for users"
        return self.state[name]


@dataclass
class FakeHelm:
    history_: list[HelmRelease] = field(default_factory=list)
    fail_upgrade: str | None = None
    calls: list[tuple] = field(default_factory=list)

    def history(self, release: str, namespace: str) -> list[HelmRelease]:
        return list(self.history_)

    def upgrade_install(self, release: str, chart: str, namespace: str, values: dict, **kw: Any) -> HelmRelease:
        self.calls.append(("upgrade", values["image"]["digest"]))
        if self.fail_upgrade:
            raise HelmError(self.fail_upgrade)
        done = HelmRelease(release, namespace, len(self.history_) + 1, "deployed", chart)
        self.history_.append(done)
        return done

    def rollback(self, release: str, namespace: str, revision: int, wait: bool = True) -> HelmRelease:
        self.calls.append(("rollback", revision))
        done = HelmRelease(release, namespace, len(self.history_) + 1, "deployed", "chart")
        self.history_.append(done)
        return done


class FakeHook:
    """FleetHook's client calls, answered by the fakes above; one Helm and edge state per region."""

    def __init__(self, fleet: Fleet, serving: dict[str, str | None] | None = None, unhealthy: tuple[str, ...] = ()):
        self.fleet = fleet
        self.tm = FakeTrafficManager(fleet)
        self.helms = {r: FakeHelm() for r in fleet.region_names}
        self.serving = dict(serving or {})
        self.unhealthy = set(unhealthy)
        self.deployments: dict[str, dict | None] = {}
        self.closed = False

    def traffic_manager(self) -> FakeTrafficManager:
        return self.tm

    def helm(self, region: str) -> FakeHelm:
        return self.helms[region]

    def edge(self, region: str) -> SimpleNamespace:
        healthy = region not in self.unhealthy
        digest = self.serving.get(region)
        return SimpleNamespace(probe=lambda: Probe(healthy, digest, f"healthy={healthy} digest={digest}"))

    def cluster(self, region: str) -> SimpleNamespace:
        return SimpleNamespace(deployment=lambda namespace, name: self.deployments.get(region))

    def trigger_options(self) -> dict[str, Any]:
        return {}

    def replication_poll_seconds(self) -> float:
        return 1.0

    def registry_endpoint(self, region: str) -> str:
        return self.fleet.registry.endpoint(region)

    def close(self) -> None:
        self.closed = True
