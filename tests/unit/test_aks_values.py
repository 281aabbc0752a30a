"""deploy/aks/airflow-values.yaml: the official Airflow chart's values for Fanout on AKS, checked
without the chart (it is neither vendored nor downloaded; README "Airflow on AKS" says which chart
schema the file was validated against, once, outside the tests).

Each check is a function returning problems; the file must have none, and a broken copy of it
must show the problem, so no check passes whatever the file says.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fanout.fleet import load_fleet

REPO = Path(__file__).resolve().parents[2]
VALUES_FILE = REPO / "deploy" / "aks" / "airflow-values.yaml"
WI_LABEL = "azure.workload.identity/use"
WI_ANNOTATION = "azure.workload.identity/client-id"
# Inline values the chart would put in a Secret it renders itself (and a generated JWT or API
# secret changes on every `helm upgrade`).
INLINE_SECRETS = ("fernetKey", "jwtSecret", "apiSecretKey", "webserverSecretKey")
SECRET_NAMES = ("fernetKeySecretName", "jwtSecretName", "apiSecretKeySecretName")


def load_values() -> dict:
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert isinstance(values, dict), "the values file is not a mapping"
    return values


def env_of(values: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in values.get("env") or []}


def executor_problems(values: dict) -> list[str]:
    return [] if values.get("executor") == "KubernetesExecutor" else [f"executor: {values.get('executor')!r}"]


def image_problems(values: dict) -> list[str]:
    """The image must be the user's own build in their ACR: a placeholder they have to fill in."""
    image = (values.get("images") or {}).get("airflow") or {}
    repo, tag = str(image.get("repository") or ""), str(image.get("tag") or "")
    problems = []
    if not re.fullmatch(r"<[a-z-]+>\.azurecr\.io/[a-z0-9/-]+", repo):
        problems.append(f"images.airflow.repository: {repo!r} is not an ACR placeholder")
    if not re.fullmatch(r"<[a-z-]+>", tag):
        problems.append(f"images.airflow.tag: {tag!r} is not a placeholder")
    return problems


def version_problems(values: dict) -> list[str]:
    """The chart picks templates by airflowVersion: it must be the image's Airflow."""
    pinned = re.search(r"^ARG AIRFLOW_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE).group(1)
    found = str(values.get("airflowVersion"))
    return [] if found == pinned else [f"airflowVersion: {found!r}, the Dockerfile builds {pinned}"]


def fleet_mount_problems(values: dict) -> list[str]:
    """Every FANOUT_FLEETS path lies under a mount of a ConfigMap volume, in every container."""
    configmaps = {v["name"] for v in values.get("volumes") or [] if "configMap" in v}
    mounts = [m["mountPath"].rstrip("/") + "/" for m in values.get("volumeMounts") or [] if m["name"] in configmaps]
    setting = env_of(values).get("FANOUT_FLEETS", "")
    paths = [p for p in setting.split(":") if p]
    if not paths:
        return ["env: no FANOUT_FLEETS"]
    outside = [p for p in paths if not any(p.startswith(m) for m in mounts)]
    return [f"FANOUT_FLEETS: {p} is not in a mounted ConfigMap" for p in outside]


def identity_problems(values: dict) -> list[str]:
    """Task pods and the triggerer both call Azure: both need the label and an annotated account."""
    problems = []
    parts = {
        "workers.kubernetes": ((values.get("workers") or {}).get("kubernetes") or {}),
        "triggerer": values.get("triggerer") or {},
    }
    for where, part in parts.items():
        if (part.get("labels") or {}).get(WI_LABEL) != "true":
            problems.append(f"{where}.labels: no {WI_LABEL}: 'true'")
        account = part.get("serviceAccount") or {}
        if account.get("create") is not True or not account.get("name"):
            problems.append(f"{where}.serviceAccount: must be created, with a fixed name")
        if not (account.get("annotations") or {}).get(WI_ANNOTATION):
            problems.append(f"{where}.serviceAccount.annotations: no {WI_ANNOTATION}")
    if not (values.get("triggerer") or {}).get("enabled"):
        problems.append("triggerer.enabled: every Fanout wait is deferred to it")
    return problems


def secret_problems(values: dict) -> list[str]:
    problems = [f"{key}: inline" for key in INLINE_SECRETS if values.get(key) is not None]
    problems += [f"{key}: not set" for key in SECRET_NAMES if not values.get(key)]
    data = values.get("data") or {}
    if not data.get("metadataSecretName") or data.get("metadataConnection"):
        problems.append("data: the database must come from metadataSecretName only")
    if (values.get("postgresql") or {}).get("enabled") is not False:
        problems.append("postgresql.enabled: the database is external")
    problems += [f"env: {name} is inline" for name in env_of(values) if name.startswith("AIRFLOW_CONN_")]
    for item in values.get("secret") or []:
        if set(item) != {"envName", "secretName", "secretKey"}:
            problems.append(f"secret: {item.get('envName')} is not a secretKeyRef")
    return problems


def connection_problems(values: dict) -> list[str]:
    """Each connection the example fleet names comes in as AIRFLOW_CONN_<ID> from a Secret."""
    fleet = load_fleet(REPO / "include" / "fleets" / "azure-example.yaml")
    wanted = {fleet.azure.conn_id, fleet.app.source.git.conn_id}
    given = {item.get("envName") for item in values.get("secret") or []}
    return [f"secret: no AIRFLOW_CONN_{c.upper()}" for c in sorted(wanted) if f"AIRFLOW_CONN_{c.upper()}" not in given]


CHECKS = [
    executor_problems,
    image_problems,
    version_problems,
    fleet_mount_problems,
    identity_problems,
    secret_problems,
    connection_problems,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_values_file_passes(check):
    assert check(load_values()) == []


def _set(path: str, value: object) -> Callable[[dict], None]:
    def mutate(values: dict) -> None:
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    mutate.__name__ = f"{path}={value!r}"
    return mutate


def _drop_env(name: str) -> Callable[[dict], None]:
    def mutate(values: dict) -> None:
        values["env"] = [e for e in values["env"] if e["name"] != name]

    mutate.__name__ = f"no env {name}"
    return mutate


def _fleets_outside_the_mount(values: dict) -> None:
    next(e for e in values["env"] if e["name"] == "FANOUT_FLEETS")["value"] += ":/opt/airflow/include/fleets/x.yaml"


def _mount_not_a_configmap(values: dict) -> None:
    values["volumes"] = [{"name": v["name"], "emptyDir": {}} for v in values["volumes"]]


def _inline_connection(values: dict) -> None:
    values["env"].append({"name": "AIRFLOW_CONN_AZURE_FANOUT", "value": "azure://?managed_identity_client_id=x"})


def _secret_with_value(values: dict) -> None:
    values["secret"][0]["value"] = "azure://"


def _git_connection_missing(values: dict) -> None:
    values["secret"] = [s for s in values["secret"] if s["envName"] != "AIRFLOW_CONN_GIT_STOREFRONT"]


BROKEN: list[tuple[Callable[[dict], None], Callable[[dict], list[str]]]] = [
    (_set("executor", "CeleryExecutor"), executor_problems),
    (_set("images.airflow.repository", "apache/airflow"), image_problems),
    (_set("images.airflow.tag", "3.3.2"), image_problems),
    (_set("airflowVersion", "3.2.0"), version_problems),
    (_drop_env("FANOUT_FLEETS"), fleet_mount_problems),
    (_fleets_outside_the_mount, fleet_mount_problems),
    (_mount_not_a_configmap, fleet_mount_problems),
    (_set("workers.kubernetes.labels", {}), identity_problems),
    (_set("triggerer.labels", {WI_LABEL: True}), identity_problems),
    (_set("workers.kubernetes.serviceAccount.annotations", {}), identity_problems),
    (_set("triggerer.serviceAccount.annotations", {}), identity_problems),
    (_set("triggerer.serviceAccount.create", False), identity_problems),
    (_set("triggerer.enabled", False), identity_problems),
    (_set("jwtSecret", "inline-jwt"), secret_problems),
    (_set("jwtSecretName", None), secret_problems),
    (_set("fernetKey", "inline-fernet"), secret_problems),
    (_set("apiSecretKeySecretName", ""), secret_problems),
    (_set("data.metadataConnection", {"user": "airflow", "pass": "airflow"}), secret_problems),
    (_set("postgresql.enabled", True), secret_problems),
    (_inline_connection, secret_problems),
    (_secret_with_value, secret_problems),
    (_git_connection_missing, connection_problems),
]


@pytest.mark.parametrize(("mutate", "check"), BROKEN, ids=lambda x: getattr(x, "__name__", "").strip("_"))
def test_a_broken_copy_is_caught(mutate, check):
    values = copy.deepcopy(load_values())
    mutate(values)
    assert check(values), f"{check.__name__} did not notice {mutate.__name__}"


def test_the_image_bakes_in_what_the_values_expect():
    """deploy/aks/Dockerfile copies dags/ and plugins/ where the chart (dags folder) and PYTHONPATH
    look, and its ignore file lets exactly those folders (and include/) into the build."""
    copies = re.findall(r"^COPY (\S+) (\S+)$", (REPO / "deploy" / "aks" / "Dockerfile").read_text(), re.MULTILINE)
    assert ("dags", "/opt/airflow/dags") in copies
    assert ("plugins", env_of(load_values())["PYTHONPATH"]) in copies
    ignore = (REPO / "deploy" / "aks" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert allowed == {src for src, _ in copies}
    assert "*" in ignore
