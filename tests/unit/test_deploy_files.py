"""docker-compose.yaml and Dockerfile stay in step with the project (no Docker engine here to run them)."""

import re
from pathlib import Path

import yaml

from localfleet.binaries import HELM_VERSION

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_pins_the_same_airflow_and_helm():
    dockerfile = (REPO / "Dockerfile").read_text()
    airflow = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert f"ARG AIRFLOW_VERSION={airflow}" in dockerfile
    assert f"ARG HELM_VERSION={HELM_VERSION}" in dockerfile
    assert "-r /opt/fanout/requirements.txt -c /opt/fanout/constraints.txt" in dockerfile


def test_compose_runs_every_airflow_component_on_the_project_folders():
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = compose["services"]
    # The triggerer is not optional: every wait in a release is deferred to it.
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        service = services[name]
        assert service["build"] == "."
        mounts = {m.split(":")[0] for m in service["volumes"]}
        assert mounts == {"./dags", "./plugins", "./include"}
        assert all((REPO / m).is_dir() for m in mounts)
        assert service["environment"]["FANOUT_FLEETS"].endswith(".yaml}")
    assert services["airflow-init"]["command"] == ["db", "migrate"]
