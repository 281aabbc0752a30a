"""A local fleet for tests: the shipped local fleet moved to free loopback ports and a
private state directory, so tests never collide with a fleet a developer is running
(or with each other)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from fanout.fleet import Fleet, load_fleet
from localfleet import cli, procs

REPO = Path(__file__).resolve().parents[1]


def write_test_fleet(
    folder: Path,
    lags: dict[str, int] | None = None,
    kubeconfig: Path | None = None,
    traffic: dict[str, Any] | None = None,
    regions: dict[str, dict[str, Any]] | None = None,
    **top: Any,
) -> Fleet:
    """include/fleets/local.yaml on free ports, its kubeconfig `folder/kubeconfig` unless given.

    `lags` overrides replication lags by region; `top` replaces top-level keys
    (e.g. gates=…, failure_policy=…); `traffic` updates traffic_manager keys (routing_method=…);
    `regions` updates regions by name ({"westus": {"standby": "warm"}}, endpoint keys merged)."""
    data = yaml.safe_load((REPO / "include/fleets/local.yaml").read_text())
    data["app"]["source"] = str(REPO / "include/app")
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    data["registry"]["endpoints"] = {r: f"127.0.0.1:{procs.free_port()}" for r in data["registry"]["endpoints"]}
    data["traffic_manager"]["base_url"] = f"http://127.0.0.1:{procs.free_port()}"
    data["traffic_manager"]["dns_port"] = procs.free_port()
    data["traffic_manager"]["dns_ttl_seconds"] = 2  # short, so that the release's DNS waits stay short
    # Every edge on its own loopback address, one port: a DNS answer (an address) picks the region.
    edge_port = procs.free_port()
    for number, region in enumerate(data["regions"], start=1):
        region["edge_url"] = f"http://127.0.1.{number}:{edge_port}"
        region["cluster"]["kubeconfig"]["path"] = str(kubeconfig or folder / "kubeconfig")
        region["local"]["apiserver_port"] = procs.free_port()
        if lags and region["name"] in lags:
            region["local"]["replication_lag_seconds"] = lags[region["name"]]
    data["traffic_manager"].update(traffic or {})
    for region in data["regions"]:
        change = dict((regions or {}).get(region["name"], {}))
        region["endpoint"].update(change.pop("endpoint", {}))
        region.update(change)
    data.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_fleet(path)


def start_test_fleet(folder: Path, **kwargs: Any) -> tuple[Fleet, Path]:
    """Write a test fleet into `folder` and bring it up; returns (fleet, state dir). If it cannot
    come up, what did start is stopped again: a failed fixture has no teardown to do it."""
    fleet = write_test_fleet(folder, **kwargs)
    state = folder / "state"
    try:
        cli.up(fleet, state, etcd_ports=(procs.free_port(), procs.free_port()), progress=_quiet)
    except BaseException:
        cli.down(fleet, state, progress=_quiet)
        raise
    return fleet, state


def _quiet(line: str) -> None:
    if os.environ.get("FANOUT_TEST_VERBOSE"):
        print(line, flush=True)


def airflow_env(airflow_home: Path, fleet_path: Path) -> dict[str, str]:
    """The environment for an Airflow command that sees only `fleet_path`'s DAGs."""
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FANOUT_FLEETS": str(fleet_path),
    }
