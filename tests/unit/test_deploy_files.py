"""docker-compose.yaml, its Celery override docker-compose.celery.yaml, Dockerfile and
.dockerignore: valid, and in step with the project.

Quick checks without a Docker engine: the compose file against the compose-spec JSON schema
(vendored in tests/unit/data, see the README there) and through Debian's docker-compose 1.29,
whose `config` parses, interpolates and checks a file without an engine (`make system-packages`
installs it; those tests skip only when it is missing). Each validator is also shown broken
copies that it must reject. The override is checked the same ways, alone and merged with the
base file as `docker compose -f docker-compose.yaml -f docker-compose.celery.yaml` merges it. That
the (LocalExecutor) stack builds, runs and releases is tests/compose's job (`make compose-test`,
on a private engine).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from fanout.fleet import load_fleet
from localfleet.binaries import HELM_VERSION, TOOLS

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
CELERY_FILE = REPO / "docker-compose.celery.yaml"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
# check-jsonschema 0.39.0's vendored copy (tests/unit/data/README.md).
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

AIRFLOW_HOME = "/opt/airflow"  # the official image's
# The long-running components; the triggerer is not optional: every wait in a release is deferred to it.
COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_SERVICES = (*COMPONENTS, "airflow-init", "airflow-cli")
PROJECT_MOUNTS = {
    "./dags": f"{AIRFLOW_HOME}/dags",
    "./plugins": f"{AIRFLOW_HOME}/plugins",
    "./include": f"{AIRFLOW_HOME}/include",
}
SECRETS = {"FANOUT_JWT_SECRET": "jwt-secret-for-the-test", "FANOUT_FERNET_KEY": "fernet-key-for-the-test"}

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="Debian's docker-compose (1.29) is not installed; `make system-packages` installs it",
)


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_celery() -> dict:
    return yaml.safe_load(CELERY_FILE.read_text())


def read(name: str) -> str:
    return (REPO / name).read_text()


def pinned(requirement: str) -> str:
    return re.search(rf"^{re.escape(requirement)}==(\S+)$", read("requirements.txt"), re.MULTILINE).group(1)


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", read("Dockerfile"), re.MULTILINE).group(1)


def bind_mounts(service: dict) -> dict[str, tuple[str, str]]:
    """{host path: (container path, mode)} for the service's mounts of repository folders."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            mounts[source] = (target, mode[0] if mode else "rw")
    return mounts


def repo_path_of(container_path: str, service: dict) -> Path:
    """Where a path inside the container comes from in the repository, through the bind mounts."""
    for source, (target, _) in bind_mounts(service).items():
        if container_path == target or container_path.startswith(target + "/"):
            return REPO / source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not inside any folder mounted from the repository")


def env_default(value: str) -> str:
    """The default of a `${NAME:-default}` setting (the value itself when it is a plain string)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


# --- broken copies: each validator must reject every one, naming the service it breaks ---------


def _misspelled_key(c: dict) -> str:
    service = c["services"]["airflow-scheduler"]
    service["helthcheck"] = service.pop("healthcheck")
    return "airflow-scheduler"


def _unknown_condition(c: dict) -> str:
    c["services"]["airflow-triggerer"]["depends_on"]["airflow-init"]["condition"] = "service_ready"
    return "airflow-triggerer"


def _volumes_not_a_list(c: dict) -> str:
    c["services"]["airflow-apiserver"]["volumes"] = "./dags:/opt/airflow/dags:ro"
    return "airflow-apiserver"


def _healthcheck_test_a_number(c: dict) -> str:
    c["services"]["airflow-dag-processor"]["healthcheck"]["test"] = 5
    return "airflow-dag-processor"


def _user_a_number(c: dict) -> str:
    c["services"]["airflow-init"]["user"] = 0
    return "airflow-init"


BROKEN: list[Callable[[dict], str]] = [
    _misspelled_key,
    _unknown_condition,
    _volumes_not_a_list,
    _healthcheck_test_a_number,
    _user_a_number,
]


def broken_copy(mutate: Callable[[dict], str]) -> tuple[dict, str]:
    compose = copy.deepcopy(load_compose())
    return compose, mutate(compose)


# --- the compose-spec JSON schema ---------------------------------------------------------------


def schema_errors(compose: dict) -> list[jsonschema.ValidationError]:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return list(jsonschema.Draft202012Validator(schema).iter_errors(compose))


def test_the_vendored_schema_is_the_published_copy():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_matches_the_compose_spec_schema():
    errors = schema_errors(load_compose())
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("mutate", BROKEN, ids=lambda m: m.__name__.strip("_"))
def test_the_schema_rejects_a_broken_copy_where_it_is_broken(mutate):
    compose, service = broken_copy(mutate)
    errors = schema_errors(compose)
    assert errors
    assert all(list(e.absolute_path)[:2] == ["services", service] for e in errors), [e.message for e in errors]


# --- Debian's docker-compose 1.29 ---------------------------------------------------------------


def docker_compose_config(
    tmp_path: Path, text: str, celery: str | None = None, **env: str
) -> subprocess.CompletedProcess:
    """`docker-compose config` on a copy in tmp_path: no .env or override file of the work tree is read.
    With `celery`, that text is the override merged over the file."""
    (tmp_path / "docker-compose.yaml").write_text(text)
    files = ["-f", "docker-compose.yaml"]
    if celery is not None:
        (tmp_path / "docker-compose.celery.yaml").write_text(celery)
        files += ["-f", "docker-compose.celery.yaml"]
    return subprocess.run(
        [DOCKER_COMPOSE, *files, "config"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_docker_compose
def test_docker_compose_accepts_the_file_and_resolves_it(tmp_path):
    result = docker_compose_config(tmp_path, COMPOSE_FILE.read_text(), **SECRETS)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(load_compose()["services"])
    for name in AIRFLOW_SERVICES:
        service = resolved["services"][name]
        env = service["environment"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["FANOUT_JWT_SECRET"]
        assert env["AIRFLOW__CORE__FERNET_KEY"] == SECRETS["FANOUT_FERNET_KEY"]
        assert env["FANOUT_FLEETS"] == f"{AIRFLOW_HOME}/include/fleets/azure-example.yaml"
        assert env["AIRFLOW_CONN_AZURE_FANOUT"] == ""  # unset: Airflow then looks in its database
        assert service["image"] == f"fanout-airflow:{pinned('apache-airflow')}"
        assert service["build"]["context"] == str(tmp_path)
        assert service["build"]["args"] == {
            "AIRFLOW_IMAGE": f"apache/airflow:{pinned('apache-airflow')}-python{dockerfile_arg('PYTHON_VERSION')}",
            "GO_IMAGE": f"golang:{dockerfile_arg('GO_VERSION')}-bookworm",
        }
        assert {f"{tmp_path}/{src[2:]}:{dst}:ro" for src, dst in PROJECT_MOUNTS.items()} <= set(service["volumes"])
    assert resolved["services"]["postgres"]["image"] == "postgres:16"
    assert resolved["services"]["airflow-scheduler"]["user"] == "50000:0"
    assert resolved["services"]["airflow-cli"]["profiles"] == ["debug"]
    assert 'chown -R "50000:0"' in resolved["services"]["airflow-init"]["command"][1]


@needs_docker_compose
def test_docker_compose_passes_the_settings_through(tmp_path):
    fleets = f"{AIRFLOW_HOME}/include/fleets/a.yaml:{AIRFLOW_HOME}/include/fleets/b.yaml"
    conn = "azure://?managed_identity_client_id=client&workload_identity_tenant_id=tenant"
    result = docker_compose_config(
        tmp_path,
        COMPOSE_FILE.read_text(),
        **SECRETS,
        FANOUT_FLEETS=fleets,
        AIRFLOW_CONN_AZURE_FANOUT=conn,
        AIRFLOW_UID="1234",
        FANOUT_IMAGE="registry.example/fanout:1",
        AIRFLOW_IMAGE="mirror.example/airflow:3",
        GO_IMAGE="mirror.example/golang:1",
        POSTGRES_IMAGE="mirror.example/postgres:16",
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in COMPONENTS:
        assert services[name]["environment"]["FANOUT_FLEETS"] == fleets
        assert services[name]["environment"]["AIRFLOW_CONN_AZURE_FANOUT"] == conn
        assert services[name]["user"] == "1234:0"
        assert services[name]["image"] == "registry.example/fanout:1"
        assert services[name]["build"]["args"] == {
            "AIRFLOW_IMAGE": "mirror.example/airflow:3",
            "GO_IMAGE": "mirror.example/golang:1",
        }
    assert services["postgres"]["image"] == "mirror.example/postgres:16"
    assert services["airflow-init"]["user"] == "0:0"
    assert 'chown -R "1234:0"' in services["airflow-init"]["command"][1]


@needs_docker_compose
@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_docker_compose_refuses_to_run_without_a_secret(tmp_path, missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = docker_compose_config(tmp_path, COMPOSE_FILE.read_text(), **env)
    assert result.returncode != 0
    assert missing in result.stderr


@needs_docker_compose
def test_docker_compose_accepts_the_file_rewritten_as_the_broken_copies_are(tmp_path):
    # So that each rejection below is the mutation's, not the rewriting's.
    result = docker_compose_config(tmp_path, yaml.safe_dump(load_compose()), **SECRETS)
    assert result.returncode == 0, result.stderr


@needs_docker_compose
@pytest.mark.parametrize("mutate", BROKEN, ids=lambda m: m.__name__.strip("_"))
def test_docker_compose_rejects_a_broken_copy_where_it_is_broken(tmp_path, mutate):
    compose, service = broken_copy(mutate)
    result = docker_compose_config(tmp_path, yaml.safe_dump(compose), **SECRETS)
    assert result.returncode != 0
    assert f"services.{service}" in result.stderr


@needs_docker_compose
def test_docker_compose_rejects_what_the_schema_cannot_see(tmp_path):
    # References between services and volumes are beyond a JSON schema.
    compose = copy.deepcopy(load_compose())
    compose["services"]["airflow-scheduler"]["depends_on"]["airflow-inti"] = {"condition": "service_healthy"}
    assert not schema_errors(compose)
    result = docker_compose_config(tmp_path, yaml.safe_dump(compose), **SECRETS)
    assert result.returncode != 0 and "airflow-inti" in result.stderr

    compose = copy.deepcopy(load_compose())
    del compose["volumes"]["airflow-logs"]
    result = docker_compose_config(tmp_path, yaml.safe_dump(compose), **SECRETS)
    assert result.returncode != 0 and "airflow-logs" in result.stderr


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_pins_the_projects_airflow_python_and_requirements():
    dockerfile = read("Dockerfile")
    assert dockerfile_arg("AIRFLOW_VERSION") == pinned("apache-airflow")
    # constraints.txt is the freeze of the venv the tests run in: the image's Python must be that one.
    assert dockerfile_arg("PYTHON_VERSION") == f"{sys.version_info.major}.{sys.version_info.minor}"
    # The base images are parameters whose defaults are the official images.
    assert dockerfile_arg("AIRFLOW_IMAGE") == "apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}"
    assert dockerfile_arg("GO_IMAGE") == "golang:${GO_VERSION}-bookworm"
    assert re.findall(r"^FROM (.*)$", dockerfile, re.MULTILINE) == ["${GO_IMAGE} AS helm", "${AIRFLOW_IMAGE}"]
    assert "pip install --no-cache-dir -r /opt/fanout/requirements.txt -c /opt/fanout/constraints.txt" in dockerfile


def test_dockerfile_builds_helm_as_the_local_fleet_does():
    dockerfile = read("Dockerfile")
    helm = TOOLS["helm"]
    assert dockerfile_arg("HELM_VERSION") == HELM_VERSION == helm.version
    assert f'"{helm.packages["helm"]}@${{HELM_VERSION}}"' in dockerfile
    for flag in helm.ldflags:
        assert flag.replace(HELM_VERSION, "${HELM_VERSION}") in dockerfile
    # ...and the compose file tells Fanout where the image has it.
    target = re.search(r"^COPY --from=helm \S+/helm (\S+)$", dockerfile, re.MULTILINE).group(1)
    for name in COMPONENTS:
        assert load_compose()["services"][name]["environment"]["FANOUT_HELM"] == target


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    lines = [line for line in read(".dockerignore").splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line.removeprefix("!") for line in lines[1:]}
    assert all(line.startswith("!") for line in lines[1:])
    copied = set()
    for line in read("Dockerfile").splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(shlex.split(line)[1:-1])
    assert allowed == copied
    assert all((REPO / name).is_file() for name in copied)


# --- the compose file against the project and Airflow -------------------------------------------


def test_compose_runs_every_airflow_component_from_the_fanout_image():
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"postgres", *AIRFLOW_SERVICES}  # LocalExecutor: no Redis, no Celery workers
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "."
        # Passed on to the Dockerfile's ARGs of the same name, with the same defaults.
        for arg, value in service["build"]["args"].items():
            default = dockerfile_arg(arg)
            for name in ("AIRFLOW_VERSION", "PYTHON_VERSION", "GO_VERSION"):
                default = default.replace(f"${{{name}}}", dockerfile_arg(name))
            assert value == f"${{{arg}:-{default}}}"
        assert env_default(service["image"]) == f"fanout-airflow:{pinned('apache-airflow')}"
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for name, command in COMPONENTS.items():
        assert services[name]["command"] == command
        assert services[name]["user"] == "${AIRFLOW_UID:-50000}:0"
        assert services[name]["restart"] == "always"


def test_project_folders_are_mounted_read_only_and_the_rest_in_named_volumes():
    compose = load_compose()
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        mounts = bind_mounts(service)
        assert {source: target for source, (target, _) in mounts.items()} == PROJECT_MOUNTS
        assert {mode for _, mode in mounts.values()} == {"ro"}
        assert all((REPO / source).is_dir() for source in mounts)
        named = {v.split(":")[0] for v in service["volumes"] if not v.startswith(".")}
        assert named <= set(compose["volumes"])
    # The simple auth manager's password file survives re-created containers.
    env = compose["x-airflow-common"]["environment"]
    passwords = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    targets = {v.split(":")[1] for v in compose["x-airflow-common"]["volumes"] if not v.startswith(".")}
    assert str(Path(passwords).parent) in targets


def test_fanout_settings_are_the_ones_the_code_reads():
    read_by_code = set()
    for folder in ("plugins", "localfleet", "dags"):
        for source in (REPO / folder).rglob("*.py"):
            read_by_code.update(re.findall(r"""["'](FANOUT_[A-Z0-9_]+)["']""", source.read_text()))
    env = load_compose()["x-airflow-common"]["environment"]
    used = {name for name in env if name.startswith("FANOUT_")}
    assert used
    assert used <= read_by_code, used - read_by_code


def test_the_default_fleet_is_mounted_and_its_connection_is_wired():
    common = load_compose()["x-airflow-common"]
    env = common["environment"]
    fleets = env_default(env["FANOUT_FLEETS"]).split(":")
    assert fleets
    for container_path in fleets:
        fleet = load_fleet(repo_path_of(container_path, common))
        assert f"AIRFLOW_CONN_{fleet.azure.conn_id.upper()}" in env
    # The fanout package (plugins/fanout) is importable from PYTHONPATH in every component.
    paths = [repo_path_of(p, common) for p in env["PYTHONPATH"].split(":")]
    assert any((p / "fanout" / "__init__.py").is_file() for p in paths)


def test_airflow_settings_exist_in_this_airflow():
    from airflow.configuration import conf

    env = load_compose()["x-airflow-common"]["environment"]
    settings = [name for name in env if name.startswith("AIRFLOW__")]
    assert len(settings) >= 8
    for name in settings:
        section, option = name.removeprefix("AIRFLOW__").lower().split("__")
        assert option in conf.configuration_description[section]["options"], name


def test_the_database_is_the_postgres_service():
    compose = load_compose()
    url = urlsplit(compose["x-airflow-common"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    postgres = compose["services"]["postgres"]["environment"]
    assert url.scheme == "postgresql+psycopg2"
    assert url.hostname in compose["services"]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert pinned("apache-airflow-providers-postgres")
    assert re.search(r"^psycopg2(-binary)?==", read("constraints.txt"), re.MULTILINE)


def test_health_checks_ask_what_airflow_3_serves():
    from airflow.api_fastapi.core_api.routes.public import public_router
    from airflow.cli.cli_config import ARG_JOB_TYPE_FILTER
    from airflow.configuration import conf

    compose = load_compose()
    services = compose["services"]
    env = compose["x-airflow-common"]["environment"]

    api = urlsplit(services["airflow-apiserver"]["healthcheck"]["test"][-1])
    assert api.path in {route.path for route in public_router.routes}
    container = services["airflow-apiserver"]["ports"][0].rsplit(":", 1)[1]
    assert api.port == int(container)
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, execution.port, execution.path) == ("airflow-apiserver", api.port, "/execution/")

    scheduler = urlsplit(services["airflow-scheduler"]["healthcheck"]["test"][-1])
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert scheduler.port == conf.getint("scheduler", "scheduler_health_check_server_port")

    for name, job in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        assert f"airflow jobs check --job-type {job} " in test[1]
        assert job in ARG_JOB_TYPE_FILTER.kwargs["choices"]
    for name in COMPONENTS:
        assert set(services[name]["healthcheck"]) >= {"test", "interval", "retries"}


def test_start_order_database_then_migration_then_airflow():
    compose = load_compose()
    services = compose["services"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    for name in COMPONENTS:
        depends = services[name]["depends_on"]
        assert depends["postgres"] == {"condition": "service_healthy"}
        assert depends["airflow-init"] == {"condition": "service_completed_successfully"}
    # LocalExecutor runs tasks in the scheduler container, and tasks talk to the api-server.
    assert services["airflow-scheduler"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}

    init = services["airflow-init"]
    script = init["command"][-1]
    assert init["user"] == "0:0"
    assert script.startswith("set -euo pipefail\n")  # a failed migration fails airflow-init
    assert "/entrypoint airflow db migrate\n" in script
    uid = re.search(r'chown -R "(\$\{AIRFLOW_UID:-\d+\}):0"', script).group(1)
    assert services["airflow-scheduler"]["user"] == f"{uid}:0"


# --- the Celery override (docker-compose.celery.yaml) -------------------------------------------

CELERY_SERVICES = ("redis", "airflow-worker-1", "airflow-worker-2", "flower")
WORKERS = ("airflow-worker-1", "airflow-worker-2")


def celery_config(tmp_path: Path, **env: str) -> dict:
    result = docker_compose_config(tmp_path, COMPOSE_FILE.read_text(), CELERY_FILE.read_text(), **SECRETS, **env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_celery_override_matches_the_compose_spec_schema():
    errors = schema_errors(load_celery())
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_celery_override_where_it_is_broken():
    broken = copy.deepcopy(load_celery())
    worker = broken["services"]["airflow-worker-2"]
    worker["helthcheck"] = worker.pop("healthcheck")
    errors = schema_errors(broken)
    assert errors and all(list(e.absolute_path)[:2] == ["services", "airflow-worker-2"] for e in errors)


def test_the_celery_workers_repeat_the_common_airflow_service():
    """Anchors do not reach across files: the override repeats x-airflow-common for its workers,
    and the two copies must not drift apart."""
    common, workers = load_compose()["x-airflow-common"], load_celery()["x-airflow-worker"]
    for key in ("image", "build", "volumes", "user"):
        assert workers[key] == common[key], key
    celery_env = load_celery()["x-celery-env"]
    expected = {**common["environment"], **celery_env, "DUMB_INIT_SETSID": "0"}
    assert workers["environment"] == expected
    assert celery_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@needs_docker_compose
def test_docker_compose_merges_the_celery_override(tmp_path):
    merged = celery_config(tmp_path)
    services = merged["services"]
    assert set(services) == set(load_compose()["services"]) | set(CELERY_SERVICES)
    assert not schema_errors(merged), [e.message for e in schema_errors(merged)]
    scheduler = services["airflow-scheduler"]
    for name in (*AIRFLOW_SERVICES, *WORKERS, "flower"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
            "postgresql+psycopg2", "postgresql"
        )
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name
    for name in WORKERS:
        worker = services[name]
        assert worker["command"] == "celery worker"
        assert worker["environment"] == {**scheduler["environment"], "DUMB_INIT_SETSID": "0"}
        for key in ("image", "build", "volumes", "user", "restart"):
            assert worker[key] == scheduler[key], (name, key)
        # Tasks talk to the api-server; the migration is done before any worker starts.
        assert worker["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "airflow-init": {"condition": "service_completed_successfully"},
            "airflow-apiserver": {"condition": "service_healthy"},
        }
        assert "inspect ping" in worker["healthcheck"]["test"][1]
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    assert services["flower"]["profiles"] == ["flower"]
    assert services["flower"]["command"] == "celery flower"


@needs_docker_compose
def test_docker_compose_passes_the_celery_settings_through(tmp_path):
    services = celery_config(tmp_path, REDIS_IMAGE="mirror.example/redis:7", FLOWER_PORT="127.0.0.1:15555",
                             AIRFLOW_UID="1234", FANOUT_IMAGE="registry.example/fanout:1")["services"]  # fmt: skip
    assert services["redis"]["image"] == "mirror.example/redis:7"
    assert services["flower"]["ports"] == ["127.0.0.1:15555:5555/tcp"]
    for name in WORKERS:
        assert services[name]["user"] == "1234:0"
        assert services[name]["image"] == "registry.example/fanout:1"


@needs_docker_compose
def test_docker_compose_rejects_a_broken_celery_override(tmp_path):
    broken = copy.deepcopy(load_celery())
    broken["services"]["airflow-worker-1"]["depends_on"]["redsi"] = {"condition": "service_healthy"}
    assert not schema_errors(broken)  # a reference to a service: beyond the schema
    result = docker_compose_config(tmp_path, COMPOSE_FILE.read_text(), yaml.safe_dump(broken), **SECRETS)
    assert result.returncode != 0 and "redsi" in result.stderr
    missing = {k: v for k, v in SECRETS.items() if k != "FANOUT_JWT_SECRET"}
    result = docker_compose_config(tmp_path, COMPOSE_FILE.read_text(), CELERY_FILE.read_text(), **missing)
    assert result.returncode != 0 and "FANOUT_JWT_SECRET" in result.stderr


def test_the_celery_settings_exist_in_this_airflow():
    from airflow.configuration import conf

    conf.load_providers_configuration()  # the [celery] section comes with the celery provider
    env = load_celery()["x-airflow-worker"]["environment"]
    for name in (n for n in env if n.startswith("AIRFLOW__")):
        section, option = name.removeprefix("AIRFLOW__").lower().split("__")
        assert option in conf.configuration_description[section]["options"], name
    from airflow.providers.celery.executors import celery_executor

    ping = load_celery()["x-airflow-worker"]["healthcheck"]["test"][1]
    assert f"--app {celery_executor.__name__}.app " in ping
