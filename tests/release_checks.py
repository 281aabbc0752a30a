"""What the release tests look at on the real local fleet: Helm history, what each edge serves,
Traffic Manager state (sampled during a run), task timings and states of one DAG run.

Everything here reads the fleet through the same adapters and endpoints the release uses,
or Airflow's own records of a run; nothing reaches into Fanout's internals."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fanout.adapters.cluster import Cluster
from fanout.adapters.helm import Helm, HelmRelease, helm_binary
from fanout.adapters.traffic import AzureTrafficManager, StaticTokenCredential
from fanout.fleet import Fleet, load_fleet
from fanout.policy import EndpointState
from localfleet.git import repo as git_repo
from localfleet.kube_files import admin_kubeconfig_beside
from localfleet.poller import Poller

REPO = Path(__file__).resolve().parents[1]
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The Azure SDK logs every request at INFO; a watch polling four times a second drowns the output.
logging.getLogger("azure").setLevel(logging.WARNING)


def new_commit(fleet: Fleet, what: str = "test", containerfile: str | None = None, branch: str = "main") -> str:
    """A new commit of the app (a unique VERSION, so a digest no region runs yet; `containerfile`
    instead of its own when given) on `branch` of the fleet's git server, as a merge would make.
    Returns the commit's full sha: what a release of that merge names."""
    return git_repo.commit_app(fleet.app.source.git, f"{what}-{uuid.uuid4().hex}", containerfile, branch)


# -- the fleet as users and operators see it -------------------------------------------


def tm_client(fleet: Fleet) -> AzureTrafficManager:
    tm = fleet.traffic_manager
    return AzureTrafficManager(
        StaticTokenCredential(), tm.subscription, tm.resource_group, tm.profile, base_url=tm.base_url, timeout=5
    )


def traffic(fleet: Fleet) -> dict[str, EndpointState]:
    with tm_client(fleet) as client:
        return client.endpoints()


def set_traffic(fleet: Fleet, region: str, *, enabled: bool) -> None:
    """Test clean-up only: put one endpoint back the way a finished release leaves it."""
    r = fleet.region(region)
    with tm_client(fleet) as client:
        client.set_endpoint(r.endpoint.name, enabled=enabled, weight=r.endpoint.weight)


def edge(fleet: Fleet, region: str, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(fleet.region(region).edge_url + path, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def serving(fleet: Fleet, region: str) -> str | None:
    return edge(fleet, region, "/version")[1].get("digest")


def healthy(fleet: Fleet, region: str) -> bool:
    return edge(fleet, region, "/healthz")[0] == 200


def admin_kubeconfig(fleet: Fleet) -> str:
    """Tests read the clusters as the fleet's admin, independently of Fanout's own identity."""
    return str(admin_kubeconfig_beside(fleet.resolve(fleet.regions[0].cluster.kubeconfig.path)))


def helm(fleet: Fleet, region: str) -> Helm:
    return Helm(helm_binary(), admin_kubeconfig(fleet), region, timeout_seconds=60)


def history(fleet: Fleet, region: str) -> list[HelmRelease]:
    return helm(fleet, region).history(fleet.app.name, fleet.app.namespace)


def revision(fleet: Fleet, region: str) -> int:
    """The release's current revision; 0 before the first install."""
    h = history(fleet, region)
    return h[-1].revision if h else 0


def annotations(fleet: Fleet, region: str) -> dict[str, str]:
    deployment = Cluster(admin_kubeconfig(fleet), region).deployment(fleet.app.namespace, fleet.app.name)
    return (deployment or {}).get("metadata", {}).get("annotations") or {}


@dataclass(frozen=True)
class RegionState:
    revision: int
    digest: str | None
    enabled: bool
    weight: int | None


def snapshot(fleet: Fleet) -> dict[str, RegionState]:
    """Per region: Helm revision, digest served at the edge, endpoint status and weight."""
    endpoints = traffic(fleet)
    out = {}
    for region in fleet.regions:
        ep = endpoints[region.endpoint.name]
        out[region.name] = RegionState(revision(fleet, region.name), serving(fleet, region.name), ep.enabled, ep.weight)
    return out


class TrafficWatch(Poller):
    """Samples Traffic Manager every `interval` seconds while a run goes on, so the test can
    assert the rules held at every moment it saw, not only at the end."""

    def __init__(self, fleet: Fleet, interval: float = 0.25):
        super().__init__(interval)
        self.fleet, self.client = fleet, tm_client(fleet)
        self.samples: list[tuple[float, frozenset[str]]] = []  # (time, enabled regions)
        self._names = {r.endpoint.name: r.name for r in fleet.regions}

    def poll(self) -> None:
        eps = self.client.endpoints()
        enabled = frozenset(self._names[n] for n, e in eps.items() if e.enabled and n in self._names)
        self.samples.append((time.time(), enabled))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.client.close()

    @property
    def fewest_enabled(self) -> int:
        return min(len(s) for _, s in self.samples)

    def ever_drained(self) -> set[str]:
        everyone = set(self.fleet.region_names)
        return {r for _, s in self.samples for r in everyone - s}

    def report(self) -> str:
        return f"{len(self.samples)} samples, fewest enabled {self.fewest_enabled}, drained at some point: " + (
            ", ".join(sorted(self.ever_drained())) or "none"
        )


# -- a test variant of the fleet file (same running fleet, other source or policy) -----


def variant_fleet(base: Fleet, folder: Path, **changes: Any) -> Path:
    """Write a copy of `base`'s fleet file into `folder`: the same running fleet (and git server)
    with `changes` applied (dotted keys reach into mappings: "gates.http.timeout_seconds")."""
    data = yaml.safe_load(base.source_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_fleet(path)  # a variant the release would refuse is a broken test, not a finding
    return path


# -- one `airflow dags test` run, read back ----------------------------------------------

_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z .*\[DAG TEST\] (starting|end task) task_id=(\S+)")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text + "+00:00").timestamp()


@dataclass
class Run:
    """A finished `airflow dags test` run: its output, task timings and (from Airflow's
    database) task states."""

    output: str
    returncode: int
    db: Path
    dag_id: str = "release_hello"
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    segments: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # `dags test` runs one task at a time, so the lines between a task's start and end are its log.
        current, lines = None, []
        for line in self.output.splitlines():
            m = _LINE.match(line)
            if m:
                when, what, task = _ts(m.group(1)), m.group(2), m.group(3)
                if what == "starting":
                    self.started[task], current, lines = when, task, []
                else:
                    self.ended[task] = when
                    self.segments[task] = "\n".join(lines)
                    current = None
            elif current:
                lines.append(line)

    @property
    def run_id(self) -> str:
        m = re.search(r"run_id=(manual__\S+?)[,\s]", self.output)
        assert m, "no run id in the output"
        return m.group(1)

    def states(self) -> dict[str, str | None]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (self.dag_id, self.run_id)
            ).fetchall()
        return dict(rows)

    def recorded(self) -> dict[str, Any] | None:
        """What the run's `record` task put in the release Asset event (None: nothing recorded)."""
        with sqlite3.connect(self.db) as db:
            query = "SELECT extra FROM asset_event WHERE source_dag_id = ? AND source_run_id = ?"
            row = db.execute(query, (self.dag_id, self.run_id)).fetchone()
        return json.loads(row[0]) if row else None

    def duration(self, task: str) -> float:
        return self.ended[task] - self.started[task]

    def tail(self, n: int = 6000) -> str:
        return self.output[-n:]


def timed(label: str, started: float) -> None:
    print(f"\n[timing] {label}: {time.monotonic() - started:.1f} s", flush=True)
