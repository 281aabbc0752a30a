"""Hostile inputs, one at a time, as an attacker with write access to one of them would try them (issue
14): a fleet file, a trigger conf value, a request to the Traffic Manager stand-in, a build context.
Each is refused with one clear line naming the file and the field, no traceback, nothing sent."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fanout import cli, trigger
from fanout.fleet import parse_fleet

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "include/fleets/local.yaml"
AZURE = REPO / "include/fleets/azure-example.yaml"
SECRET = "s3cr3t-Pa55"


def data_of(fleet: Path) -> dict[str, Any]:
    data = yaml.safe_load(fleet.read_text())
    # The copy lives in tmp: name the repository's app and chart (FANOUT_PROJECT_DIR, tests/conftest.py).
    data["app"]["chart"]["path"] = str(REPO / "include/charts/hello")
    return data


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """`fanout validate path` in-process: an uncaught exception (a traceback) fails the test."""
    code = cli.main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 or out == "", out
    return code, err.splitlines()


def refused(path: Path, capsys: pytest.CaptureFixture[str], field: str, code: int = 2) -> str:
    got, lines = validate(path, capsys)
    assert (got, len(lines)) == (code, 1), lines
    assert lines[0].startswith(f"{path}: {field}"), lines
    return lines[0]


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


NAN_METRIC = {"name": "e", "measure": "error_ratio", "max": float("nan")}
NAN_METRIC_BOUND = {"gates/metrics": {"source": {"url": "http://127.0.0.1:9090"}, "checks": [NAN_METRIC]}}


def local(**changes: Any) -> dict[str, Any]:
    return _changed(data_of(LOCAL), changes)


def azure(**changes: Any) -> dict[str, Any]:
    return _changed(data_of(AZURE), changes)


def _changed(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("/")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = value
    return data


def test_the_shipped_fleets_still_validate(capsys):
    assert validate(LOCAL, capsys)[0] == 0 and validate(AZURE, capsys)[0] == 0


# -- fleet files -----------------------------------------------------------------------------------

HOSTILE_FLEETS = {
    # 1: an Azure profile reached at a host the file names would receive the ARM token
    "azure tm base_url": (
        azure(**{"traffic_manager/base_url": "https://arm.attacker.example"}),
        "traffic_manager.base_url",
    ),
    "azure tm base_url http": (azure(**{"traffic_manager/base_url": "http://127.0.0.1:9"}), "traffic_manager.base_url"),
    "acr endpoint elsewhere": (
        azure(**{"registry/endpoints": {"westeurope": "registry.attacker.example"}}),
        "registry.endpoints['westeurope']",
    ),
    "acr endpoint of another registry": (
        azure(**{"registry/endpoints": {"westeurope": "attacker.westeurope.geo.azurecr.io"}}),
        "registry.endpoints['westeurope']",
    ),
    "acr endpoint suffix trick": (
        azure(**{"registry/endpoints": {"westeurope": "contosoprod.azurecr.io.attacker.example"}}),
        "registry.endpoints['westeurope']",
    ),
    "acr insecure": (azure(**{"registry/insecure": True}), "registry.insecure"),
    # 4: non-finite numbers and absurd bounds
    "nan metric threshold": (
        local(**NAN_METRIC_BOUND),
        "gates.metrics.checks[0].max",
    ),
    "inf http interval": (local(**{"gates/http/interval_seconds": float("inf")}), "gates.http.interval_seconds"),
    "bake of years": (local(**{"rollout/bake_seconds": 10**9}), "rollout.bake_seconds"),
    # 7: loopback by parsing, not by prefix
    "loopback prefix trick": (
        local(**{"registry/endpoints/eastus": "localhost.attacker.example:5101"}),
        "registry.endpoints",
    ),
    "127 prefix trick": (
        local(**{"registry/endpoints/eastus": "127.0.0.1.nip.io:5101"}),
        "registry.endpoints",
    ),
    "local stand-in elsewhere": (
        local(**{"traffic_manager/base_url": "http://tm.attacker.example"}),
        "traffic_manager.base_url",
    ),
    # 8: what would break DAG parsing
    "bad cron": (local(**{"consistency/schedule": "every 5 minutes"}), "consistency.schedule"),
    "cron out of range": (local(**{"consistency/schedule": "61 * * * *"}), "consistency.schedule"),
    "continuous check": (local(**{"consistency/schedule": "@continuous"}), "consistency.schedule"),
    # 10: unbounded strings
    "source /etc": (local(**{"app/source": {"directory": "/etc"}}), "app.source.directory"),
    "source climbing out": (
        local(**{"app/source": {"directory": "../../../../../../../../etc"}}),
        "app.source.directory",
    ),
    "git source climbing out": (local(**{"app/source/git/path": "../../etc"}), "app.source.git.path"),
    "chart in home": (local(**{"app/chart/path": "~/.ssh"}), "app.chart.path"),
    "oci with password": (
        local(**{"app/chart": {"oci": f"oci://user:{SECRET}@registry.example/charts/hello", "version": "1.0.0"}}),
        "app.chart.oci",
    ),
    "registry on every interface": (
        local(**{"registry/endpoints/eastus": "0.0.0.0:5101"}),
        "registry.endpoints",
    ),
    "registry on every ipv6 interface": (
        local(**{"registry/endpoints/eastus": "[::]:5101"}),
        "registry.endpoints",
    ),
    "tm endpoint ..": (local(**{"regions/0/endpoint/name": ".."}), "regions[0].endpoint.name"),
    "tm endpoint path": (local(**{"regions/0/endpoint/name": "a/../../b"}), "regions[0].endpoint.name"),
    "resource group ..": (azure(**{"traffic_manager/resource_group": ".."}), "traffic_manager.resource_group"),
    "subscription path": (azure(**{"traffic_manager/subscription": "x/../y"}), "traffic_manager.subscription"),
    "weight true": (local(**{"regions/0/endpoint/weight": True}), "regions[0].endpoint.weight"),
    "count as text": (local(**{"min_serving_regions": "2"}), "min_serving_regions"),
    "bool as int": (local(**{"rollout/manual_approval": 1}), "rollout.manual_approval"),
    "edge url with password": (
        local(**{"regions/0/edge_url": f"http://u:{SECRET}@127.0.0.1:7101"}),
        "regions[0].edge_url",
    ),
}


@pytest.mark.parametrize("name", HOSTILE_FLEETS)
def test_a_hostile_fleet_file_is_refused_with_one_line_naming_the_field(name, tmp_path, capsys):
    data, field = HOSTILE_FLEETS[name]
    line = refused(write(tmp_path, data), capsys, field)
    assert SECRET not in line


def test_a_duplicate_key_is_refused_naming_its_line(tmp_path, capsys):
    text = LOCAL.read_text().replace("min_serving_regions: 2", "min_serving_regions: 2\nmin_serving_regions: 1")
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    line_no = text.splitlines().index("min_serving_regions: 1") + 1
    got, lines = validate(path, capsys)
    assert (got, lines) == (
        2,
        [f"{path}: line {line_no}: key 'min_serving_regions' is given twice (first on line {line_no - 1})"],
    )


def test_a_duplicate_key_on_one_line_is_refused_too(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text("{app: 1, app: 2}\n")
    assert validate(path, capsys) == (2, [f"{path}: line 1: key 'app' is given twice (first on line 1)"])


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"app: \xff\xfe\n", "not UTF-8 text (byte 5 cannot be decoded)"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper than 64 levels"),
        (b"a: " + b"[" * 70 + b"]" * 70 + b"\n", "nested deeper than 64 levels"),
        (b"# " + b"x" * (2 * 1024 * 1024) + b"\n", "larger than 1024 KiB; a fleet file is a few kilobytes"),
        (
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + b"".join(
                f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n".encode() for p, c in zip("abcdefg", "bcdefgh", strict=True)
            )
            + b"app: *h\n",
            "more than 200000 values once aliases are expanded",
        ),
    ],
    ids=["invalid utf-8", "deep nesting", "nesting above the limit", "too large", "billion laughs"],
)
def test_a_file_that_is_no_fleet_file_gets_one_line(tmp_path, capsys, content, says):
    path = tmp_path / "fleet.yaml"
    path.write_bytes(content)
    assert validate(path, capsys) == (2, [f"{path}: {says}"])


def test_dev_zero_is_one_line_quickly_and_small(capsys):
    started = time.monotonic()
    assert validate(Path("/dev/zero"), capsys) == (
        2,
        ["/dev/zero: larger than 1024 KiB; a fleet file is a few kilobytes"],
    )
    assert time.monotonic() - started < 5


def test_unknown_keys_are_named_not_echoed_with_their_values(tmp_path, capsys):
    path = tmp_path / "shadow"
    path.write_text(f"root: $6$salt${SECRET}\n{'k' * 500}: {SECRET}\n")
    got, lines = validate(path, capsys)
    assert got == 2 and f"{path}: root: unknown field (check the spelling)" in lines, lines
    assert all(len(line) < len(str(path)) + 120 for line in lines) and SECRET not in "".join(lines)


def test_a_canary_set_without_a_valid_plan_fails_validate(tmp_path, capsys):
    # Both regions of a pair as the canary: the release DAG could not even be built from it.
    line = refused(write(tmp_path, local(**{"rollout/canary": ["eastus", "westus"]})), capsys, "rollout.canary", 3)
    assert "cannot share one wave" in line


def test_no_traceback_from_the_command_line_for_dev_zero():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "fanout", "validate", "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"},
    )
    assert (done.returncode, done.stderr) == (2, "/dev/zero: larger than 1024 KiB; a fleet file is a few kilobytes\n")


def test_the_fleet_model_refuses_nan_even_without_a_file():
    data = local(**NAN_METRIC_BOUND)
    with pytest.raises(ValueError, match=r"gates\.metrics\.checks\[0\]\.max"):
        parse_fleet(data, "x.yaml")


# -- trigger conf and `fanout trigger` -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value"),
    [("GIT_SHA", "abcdef1\n"), ("IMAGE", "v1\n"), ("IMAGE", "sha256:" + "a" * 64 + "\n"), ("SOURCE_REF", "main\n")],
)
def test_patterns_refuse_a_trailing_newline_in_python_and_in_the_dags_params(pattern, value):
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    pattern = getattr(trigger, pattern)  # the DAG's Params take these patterns from fanout.trigger
    assert pattern.match(value) is None and pattern.match(value.rstrip("\n"))
    with pytest.raises(ParamValidationError):
        Param(type="string", pattern=pattern.pattern).resolve(value)
    Param(type="string", pattern=pattern.pattern).resolve(value.rstrip("\n"))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"git_sha": "abcdef1\n"}, "git_sha"),
        ({"git_sha": "abcdef1", "source_ref": "main\n12:00:00  deploy_eastus.restore  success"}, "source_ref"),
        ({"git_sha": "abcdef1", "source_ref": "r" * 300}, "source_ref"),
        ({"git_sha": "abcdef1", "image": "sha256:" + "a" * 64 + "\n"}, "image"),
    ],
)
def test_build_conf_refuses_forged_values(kwargs, field):
    with pytest.raises(trigger.TriggerError, match=f"^{field}: ") as caught:
        trigger.build_conf(**kwargs)
    assert "\n" not in str(caught.value)


class Recorder(httpx.BaseTransport):
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(500)


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--poll", "nan"], {}, "--poll: nan is not a number of seconds"),
        (["--timeout", "nan"], {}, "--timeout: nan is not a number of seconds"),
        (["--timeout", "inf"], {}, "--timeout: inf is not a number of seconds"),
        (["--airflow-url", "http://airflow.example:8080"], {"FANOUT_AIRFLOW_PASSWORD": SECRET}, "--airflow-url: "),
        (["--airflow-url", "http://localhost.attacker.example"], {"FANOUT_AIRFLOW_TOKEN": SECRET}, "--airflow-url: "),
        (["--run-id", "x\ny"], {}, "--run-id: "),
        (["--ref", "main\nforged line"], {}, "source_ref: "),
    ],
)
def test_fanout_trigger_refuses_hostile_flags_with_one_line_and_sends_nothing(argv, env, says, capsys):
    transport = Recorder()
    if "FANOUT_AIRFLOW_PASSWORD" in env:
        env = {**env, "FANOUT_AIRFLOW_USERNAME": "ci"}
    args = cli.build_parser().parse_args(["trigger", "--app", "hello", "--git-sha", "abcdef1", "--wait", *argv])
    code = trigger.run(args, env=env, transport=transport)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"fanout trigger: {says}"), err
    assert SECRET not in err and transport.requests == []


def test_plain_http_to_loopback_is_still_fine_for_the_local_airflow(capsys):
    transport = Recorder()
    args = cli.build_parser().parse_args(["trigger", "--app", "hello", "--git-sha", "abcdef1"])
    env = {"FANOUT_AIRFLOW_URL": "http://127.0.0.1:8080", "FANOUT_AIRFLOW_TOKEN": SECRET}
    trigger.run(args, env=env, transport=transport, sleep=lambda _: None)
    assert transport.requests and transport.requests[0].url.host == "127.0.0.1"


# -- requests to the Traffic Manager stand-in --------------------------------------------------------


@pytest.fixture
def standin(tmp_path):
    from localfleet.procs import free_port
    from localfleet.trafficmanager import serve

    # Its own DNS port: the local fleet `make demo` left up may hold the file's.
    data = local(**{"traffic_manager/dns_port": free_port()})
    server, _ = serve(parse_fleet(data, LOCAL), tmp_path / "state", port=0)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("length", "status"), [("-5", 400), (str(10**12), 413), ("12abc", 400)])
def test_the_stand_in_refuses_a_bad_content_length_at_once(standin, length, status):
    path = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/fanout-local/providers/Microsoft.Network/"
    )
    path += "trafficmanagerprofiles/hello/ExternalEndpoints/eastus?api-version=2022-04-01"
    with socket.create_connection(("127.0.0.1", standin), timeout=5) as conn:
        headers = f"Host: x\r\nAuthorization: Bearer t\r\nContent-Length: {length}\r\n"
        conn.sendall(f"PATCH {path} HTTP/1.1\r\n{headers}\r\n{{}}".encode())
        answer = b""
        while chunk := conn.recv(65536):  # the stand-in closes the connection; a blocked one times out here
            answer += chunk
        answer = answer.decode()
    assert answer.startswith(f"HTTP/1.1 {status} "), answer[:200]
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["error"]["code"] in (
        "InvalidRequestContent",
        "RequestEntityTooLarge",
    )


@pytest.fixture
def token_service(tmp_path):
    """The local Entra ID stand-in (localfleet/tokens.py), in this process on a free port."""
    import threading

    from localfleet import tokens

    tokens.ensure_secrets(tmp_path)
    server = tokens.TokenServer(("127.0.0.1", 0), tokens.Handler)
    server.key, server.client_secret = b"k" * 32, "secret"
    server.lifetime, server.state_dir = 300.0, tmp_path
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("length", "status"), [("-5", 400), (str(10**12), 413), ("12abc", 400)])
def test_the_token_service_refuses_a_bad_content_length_at_once(token_service, length, status):
    """Like the Traffic Manager stand-in: a negative length would block the handler, a huge one
    exhaust its memory; either is refused before a byte of body is read."""
    with socket.create_connection(("127.0.0.1", token_service), timeout=5) as conn:
        conn.sendall(f"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nclient_id=x".encode())
        answer = b""
        while chunk := conn.recv(65536):  # the service closes the connection; a blocked one times out here
            answer += chunk
    assert answer.decode().startswith(f"HTTP/1.0 {status} "), answer[:200]


# -- build context, Helm, local secrets ------------------------------------------------------------


def test_an_invalid_dockerignore_pattern_is_one_line_naming_it(tmp_path):
    from fanout.adapters.build_context import pack_context

    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("# fine\n*.log\n[z-a]\n")
    with pytest.raises(
        ValueError, match=r"^\.dockerignore line 3: '\[z-a\]' is not a valid pattern \(bad character range"
    ):
        pack_context(tmp_path)


def test_helm_stderr_is_scrubbed_before_it_becomes_a_helm_error(tmp_path):
    from fanout.adapters.helm import Helm, HelmError

    fake = tmp_path / "helm"
    fake.write_text(
        "#!/bin/sh\n"
        f"echo 'Error: pulling oci://ci:{SECRET}@registry.example/charts/hello: 401' >&2\n"
        f'echo \'{{"token": "{SECRET}"}} Authorization: Bearer {SECRET}\' >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o700)
    with pytest.raises(HelmError) as caught:
        Helm(str(fake), "/nonexistent", "ctx").values("hello", "hello")
    assert SECRET not in str(caught.value) and "oci://***@registry.example" in str(caught.value)


def test_local_secret_files_are_created_exclusively_and_never_through_a_link(tmp_path):
    from localfleet.postgres import Postgres, _write_private

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "postgres-password").symlink_to(victim)
    with pytest.raises(OSError):
        Postgres(tmp_path / "state", 1).password()
    assert victim.read_text() == "untouched"
    with pytest.raises(FileExistsError):
        _write_private(victim, "x")
    fresh = Postgres(tmp_path / "fresh", 1)
    assert fresh.password() == fresh.password()
    assert stat.S_IMODE(os.stat(fresh.password_file).st_mode) == 0o600
