"""`fanout trigger` against a played Airflow REST API (httpx.MockTransport), plus the CI examples."""

from __future__ import annotations

import io
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fanout import trigger
from fanout.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
NEWER_SHA = "89abcdef0123456789abcdef0123456789abcdef"
TOKEN = "tok-SECRET-123"
PASSWORD = "pa55-SECRET-word"
NOW = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
RUN_ID = "merge__0123456789ab__20260102T030405.000006Z"
DAG = "release_hello"


@dataclass
class FakeAirflow:
    """Plays the few Airflow API v2 endpoints the command uses. A run follows a script of snapshots
    (run state, {task_id: state}); each GET of the run moves it one snapshot on."""

    paused: bool = False
    users: dict[str, str] = field(default_factory=lambda: {"ci": PASSWORD})
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    script: list[tuple[str, dict[str, str]]] = field(default_factory=lambda: [("queued", {})])
    scripts: dict[str, list[tuple[str, dict[str, str]]]] = field(default_factory=dict)
    xcoms: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path prefix, status | exception)
    requests: list[httpx.Request] = field(default_factory=list)
    page_limit: int = 100  # Airflow's [api] maximum_page_limit
    polls: dict[str, int] = field(default_factory=dict)

    def calls(self, method: str, path: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.startswith(path)]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        method, path = request.method, request.url.path
        for i, (m, prefix, fault) in enumerate(self.faults):
            if m == method and path.startswith(prefix):
                del self.faults[i]
                if isinstance(fault, int):
                    return httpx.Response(fault, json={"detail": "the API server is restarting"})
                if isinstance(fault, tuple):  # (exception, create the run first?)
                    if fault[1]:
                        self._create(json.loads(request.content))
                    raise fault[0]
                return fault
        if path == "/auth/token" and method == "POST":
            body = json.loads(request.content)
            if self.users.get(body.get("username")) != body.get("password"):
                return httpx.Response(401, json={"detail": "Invalid credentials"})
            self.tokens.add("issued-token")
            return httpx.Response(201, json={"access_token": "issued-token"})
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            return httpx.Response(401, json={"detail": "Not authenticated"})
        if path == f"/api/v2/dags/{DAG}":
            if method == "PATCH":
                self.paused = json.loads(request.content)["is_paused"]
            return httpx.Response(200, json={"dag_id": DAG, "is_paused": self.paused})
        if path.startswith("/api/v2/dags/") and not path.startswith(f"/api/v2/dags/{DAG}/"):
            return httpx.Response(404, json={"detail": f"Dag with dag_id: '{path.split('/')[4]}' not found"})
        if path == f"/api/v2/dags/{DAG}/dagRuns" and method == "POST":
            body = json.loads(request.content)
            if body["dag_run_id"] in self.runs:
                return httpx.Response(409, json={"detail": "run id exists"})
            return httpx.Response(200, json=self._create(body))
        parts = path.split("/")[6:]  # after /api/v2/dags/<dag>/dagRuns/
        run_id = parts[0]
        if run_id not in self.runs and run_id not in self.scripts:
            return httpx.Response(404, json={"detail": "DagRun not found"})
        script = self.scripts.get(run_id, self.script)
        if len(parts) == 1:
            self.polls[run_id] = self.polls.get(run_id, -1) + 1
        state, tasks = script[min(self.polls.get(run_id, 0), len(script) - 1)]
        if len(parts) == 1:
            return httpx.Response(200, json={"dag_run_id": run_id, "state": state})
        if len(parts) == 2:
            tis = [{"task_id": t, "map_index": -1, "state": s, "try_number": 1} for t, s in tasks.items()]
            offset, limit = int(request.url.params["offset"]), min(int(request.url.params["limit"]), self.page_limit)
            return httpx.Response(200, json={"task_instances": tis[offset : offset + limit], "total_entries": len(tis)})
        value = self.xcoms.get((run_id, parts[2], parts[4]))
        if value is None:
            return httpx.Response(404, json={"detail": f"XCom entry with key: `{parts[4]}` not found"})
        return httpx.Response(200, json={"key": parts[4], "value": value})

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.runs[body["dag_run_id"]] = body
        return {"dag_run_id": body["dag_run_id"], "state": "queued", "conf": body["conf"]}


@dataclass
class Result:
    code: int
    out: str
    err: str


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def invoke(argv: list[str], airflow: FakeAirflow, env: dict[str, str] | None = None, clock=None) -> Result:
    args = build_parser().parse_args(["trigger", *argv])
    out, err = io.StringIO(), io.StringIO()
    clock = clock or FakeClock()
    code = trigger.run(
        args,
        env={"FANOUT_AIRFLOW_TOKEN": TOKEN} if env is None else env,
        transport=httpx.MockTransport(airflow.handle),
        stdout=out,
        stderr=err,
        clock=clock.monotonic,
        sleep=clock.sleep,
        now=lambda: NOW,
    )
    return Result(code, out.getvalue(), err.getvalue())


# ---- triggering ---------------------------------------------------------------------------


def test_trigger_posts_the_exact_body_with_the_bearer_token():
    airflow = FakeAirflow()
    digest = "sha256:" + "a" * 64
    argv = ["--app", "hello", "--git-sha", SHA, "--ref", "v1.2", "--image", digest, "--regions", "eastus, westus"]
    result = invoke([*argv, "--dry-run", "--note", "merge #12"], airflow)

    assert result.code == 0, result.err
    assert result.out == RUN_ID + "\n"  # one machine-readable line
    (post,) = airflow.calls("POST", f"/api/v2/dags/{DAG}/dagRuns")
    assert json.loads(post.content) == {
        "logical_date": None,
        "conf": {
            "git_sha": SHA,
            "source_ref": "v1.2",
            "image": digest,
            "regions": ["eastus", "westus"],
            "dry_run": True,
        },
        "dag_run_id": RUN_ID,
        "note": "merge #12",
    }
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in airflow.requests)
    assert f"triggered {DAG} run {RUN_ID}" in result.err
    assert TOKEN not in result.err


def test_conf_holds_only_the_keys_given_and_a_chosen_run_id_is_used():
    airflow = FakeAirflow()
    result = invoke(["--dag", DAG, "--git-sha", SHA[:7], "--run-id", "ci-42"], airflow)

    assert result.code == 0, result.err
    assert result.out == "ci-42\n"
    assert airflow.runs["ci-42"] == {
        "logical_date": None,
        "conf": {"git_sha": SHA[:7], "source_ref": "main"},
        "dag_run_id": "ci-42",
    }


def test_a_hotfix_carries_its_reason():
    airflow = FakeAirflow()
    result = invoke(["--dag", DAG, "--git-sha", SHA, "--run-id", "hf", "--hotfix", "INC-9:  null   deref"], airflow)
    assert result.code == 0, result.err
    conf = airflow.runs["hf"]["conf"]
    assert conf == {"git_sha": SHA, "source_ref": "main", "hotfix": True, "hotfix_reason": "INC-9: null deref"}


def test_username_and_password_are_exchanged_for_a_token():
    airflow = FakeAirflow()
    env = {"FANOUT_AIRFLOW_USERNAME": "ci", "FANOUT_AIRFLOW_PASSWORD": PASSWORD}
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow, env=env)

    assert result.code == 0, result.err
    login, *rest = airflow.requests
    assert (login.method, login.url.path) == ("POST", "/auth/token")
    assert json.loads(login.content) == {"username": "ci", "password": PASSWORD}
    assert rest and all(r.headers["Authorization"] == "Bearer issued-token" for r in rest)
    assert PASSWORD not in result.err + result.out


def test_a_paused_dag_is_reported_and_still_triggered():
    airflow = FakeAirflow(paused=True)
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow)

    assert result.code == 0
    assert f"WARNING: {DAG} is paused" in result.err
    assert "--unpause" in result.err
    assert not airflow.calls("PATCH") and airflow.paused
    assert RUN_ID in airflow.runs


def test_unpause_unpauses_before_triggering():
    airflow = FakeAirflow(paused=True)
    result = invoke(["--app", "hello", "--git-sha", SHA, "--unpause"], airflow)

    assert result.code == 0
    assert [(r.method, r.url.path) for r in airflow.requests] == [
        ("GET", f"/api/v2/dags/{DAG}"),
        ("PATCH", f"/api/v2/dags/{DAG}"),
        ("POST", f"/api/v2/dags/{DAG}/dagRuns"),
    ]
    assert json.loads(airflow.calls("PATCH")[0].content) == {"is_paused": False}
    assert not airflow.paused and "WARNING" not in result.err


# ---- bad input and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--git-sha", "ABCDEF0"], "git_sha"),
        (["--git-sha", "abc12"], "git_sha"),
        (["--git-sha", "0123456789abcdefg"], "git_sha"),
        ([], "git_sha"),
        (["--git-sha", SHA, "--regions", ","], "regions"),
        (["--git-sha", SHA, "--regions", "eastus,eastus"], "regions"),
        (["--git-sha", SHA, "--image", "sha256:abc"], "image"),
        (["--git-sha", SHA, "--ref", " "], "source_ref"),
        (["--git-sha", SHA, "--hotfix", " "], "hotfix"),
    ],
)
def test_bad_conf_is_refused_before_any_request_naming_the_field(argv, field):
    airflow = FakeAirflow()
    result = invoke(["--app", "hello", *argv], airflow)

    assert result.code == 2
    assert re.search(rf"fanout trigger: {field}: ", result.err), result.err
    assert airflow.requests == []
    assert result.out == ""


def test_airflow_refusing_the_conf_is_exit_2_with_its_detail():
    refused = httpx.Response(400, json={"detail": "Invalid input for param regions: 'mars' is not one of ['eastus']"})
    airflow = FakeAirflow(faults=[("POST", f"/api/v2/dags/{DAG}/dagRuns", refused)])
    result = invoke(["--app", "hello", "--git-sha", SHA, "--regions", "mars"], airflow)

    assert result.code == 2
    assert "POST /api/v2/dags/release_hello/dagRuns: HTTP 400: Invalid input for param regions" in result.err


def test_401_names_the_env_vars_and_never_prints_the_token():
    airflow = FakeAirflow(tokens={"another"})
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow)

    assert result.code == 3
    assert f"GET /api/v2/dags/{DAG}: HTTP 401" in result.err
    for name in ("FANOUT_AIRFLOW_TOKEN", "FANOUT_AIRFLOW_USERNAME", "FANOUT_AIRFLOW_PASSWORD"):
        assert name in result.err
    assert TOKEN not in result.err


def test_a_refused_password_is_named_but_never_printed():
    airflow = FakeAirflow(users={"ci": "the-real-one"})
    env = {"FANOUT_AIRFLOW_USERNAME": "ci", "FANOUT_AIRFLOW_PASSWORD": PASSWORD}
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow, env=env)

    assert result.code == 3
    assert "POST /auth/token: HTTP 401: Invalid credentials" in result.err
    assert "FANOUT_AIRFLOW_USERNAME" in result.err and "FANOUT_AIRFLOW_PASSWORD" in result.err
    assert PASSWORD not in result.err + result.out


def test_a_validation_error_echoing_the_password_does_not_print_it():
    # FastAPI's 422 puts the request body in `input`; only loc and msg may be shown.
    echo = httpx.Response(422, json={"detail": [{"loc": ["body", "username"], "msg": "bad", "input": {"p": PASSWORD}}]})
    airflow = FakeAirflow(faults=[("POST", "/auth/token", echo)])
    env = {"FANOUT_AIRFLOW_USERNAME": "ci", "FANOUT_AIRFLOW_PASSWORD": PASSWORD}
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow, env=env)

    assert result.code == 3
    assert "HTTP 422: username: bad" in result.err
    assert PASSWORD not in result.err


def test_only_half_of_username_and_password_is_a_usage_error():
    airflow = FakeAirflow()
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow, env={"FANOUT_AIRFLOW_USERNAME": "ci"})

    assert result.code == 2
    assert "FANOUT_AIRFLOW_PASSWORD" in result.err
    assert airflow.requests == []


def test_an_unknown_dag_names_the_dag_and_fanout_fleets():
    result = invoke(["--app", "shop", "--git-sha", SHA], FakeAirflow())

    assert result.code == 3
    assert "release_shop not found" in result.err
    assert "FANOUT_FLEETS" in result.err and "'shop'" in result.err


def test_5xx_on_a_get_is_retried():
    airflow = FakeAirflow(faults=[("GET", f"/api/v2/dags/{DAG}", 503), ("GET", f"/api/v2/dags/{DAG}", 502)])
    clock = FakeClock()
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow, clock=clock)

    assert result.code == 0, result.err
    assert len(airflow.calls("GET", f"/api/v2/dags/{DAG}")) == 3
    assert len(clock.sleeps) == 2  # backed off between tries
    assert "HTTP 503" in result.err and "retrying" in result.err


def test_a_get_that_keeps_failing_ends_with_exit_3():
    airflow = FakeAirflow(faults=[("GET", f"/api/v2/dags/{DAG}", 503)] * 10)
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow)

    assert result.code == 3
    assert len(airflow.calls("GET")) == 4
    assert f"GET /api/v2/dags/{DAG}: HTTP 503: the API server is restarting" in result.err
    assert not airflow.calls("POST")


def test_a_post_whose_answer_was_lost_is_not_sent_again_when_the_run_exists():
    lost = (httpx.ReadTimeout("read timed out"), True)  # the run was created, the answer never came
    airflow = FakeAirflow(faults=[("POST", f"/api/v2/dags/{DAG}/dagRuns", lost)])
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow)

    assert result.code == 0, result.err
    assert result.out == RUN_ID + "\n"
    assert len(airflow.calls("POST", f"/api/v2/dags/{DAG}/dagRuns")) == 1
    assert airflow.calls("GET", f"/api/v2/dags/{DAG}/dagRuns/{RUN_ID}")


def test_a_post_that_never_reached_airflow_is_sent_again():
    refused = (httpx.ConnectError("[Errno 111] Connection refused"), False)
    airflow = FakeAirflow(faults=[("POST", f"/api/v2/dags/{DAG}/dagRuns", refused)])
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow)

    assert result.code == 0, result.err
    assert len(airflow.calls("POST", f"/api/v2/dags/{DAG}/dagRuns")) == 2
    assert list(airflow.runs) == [RUN_ID]


def test_connection_refused_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    args = build_parser().parse_args(["trigger", "--app", "hello", "--git-sha", SHA])
    err = io.StringIO()
    clock = FakeClock()
    env = {"FANOUT_AIRFLOW_URL": f"http://ci:{PASSWORD}@127.0.0.1:{port}", "FANOUT_AIRFLOW_TOKEN": TOKEN}
    code = trigger.run(args, env=env, stdout=io.StringIO(), stderr=err, clock=clock.monotonic, sleep=clock.sleep)

    assert code == 3
    assert f"connection refused — is Airflow's API server running at http://127.0.0.1:{port}?" in err.getvalue()
    assert len(clock.sleeps) == 3  # the GET was tried 4 times
    assert PASSWORD not in err.getvalue()


# ---- following ----------------------------------------------------------------------------


def test_wait_prints_each_state_change_once_and_exits_0_on_success():
    airflow = FakeAirflow(
        script=[
            ("queued", {}),
            ("running", {"check_superseded": "success", "validate": "running"}),
            ("running", {"check_superseded": "success", "validate": "success", "deploy_eastus.helm_deploy": "running"}),
            ("running", {"check_superseded": "success", "validate": "success", "deploy_eastus.helm_deploy": "running"}),
            ("success", {"check_superseded": "success", "validate": "success", "deploy_eastus.helm_deploy": "success"}),
        ]
    )
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait"], airflow)

    assert result.code == 0, result.err
    lines = result.err.splitlines()
    assert lines.count("03:04:05  deploy_eastus.helm_deploy  running") == 1
    assert lines.count("03:04:05  deploy_eastus.helm_deploy  success") == 1
    assert lines.count("03:04:05  validate  running") == 1
    assert lines[-1] == f"{RUN_ID}: success"
    assert result.out == RUN_ID + "\n"


def test_wait_reads_every_page_of_task_instances():
    tasks = {f"deploy_r{i:03}.gate_soak": "success" for i in range(130)}
    airflow = FakeAirflow(script=[("success", tasks)])
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait"], airflow)

    assert result.code == 0
    assert "deploy_r129.gate_soak  success" in result.err  # beyond Airflow's 100-row page
    assert [r.url.params["offset"] for r in airflow.calls("GET", f"/api/v2/dags/{DAG}/dagRuns/{RUN_ID}/task")] == [
        "0",
        "100",
    ]


def test_wait_on_a_failed_run_prints_each_failed_task_and_its_cause():
    airflow = FakeAirflow(
        script=[
            ("running", {"deploy_eastus.gate_http": "running"}),
            ("failed", {"deploy_eastus.gate_http": "failed", "rebalance": "failed", "record": "upstream_failed"}),
        ],
        xcoms={
            (RUN_ID, "deploy_eastus.gate_http", "failure"): {
                "region": "eastus",
                "gate": "gate_http",
                "cause": "GET /healthz answered 503",
            },
            (RUN_ID, "rebalance", "failure"): json.dumps(
                {"region": None, "gate": "rebalance", "cause": "1 region failed"}
            ),
        },
    )
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait"], airflow)

    assert result.code == 1
    assert "  failed: deploy_eastus.gate_http\n    eastus / gate_http: GET /healthz answered 503\n" in result.err
    assert "    release / rebalance: 1 region failed" in result.err  # a JSON-string XCom value is read too
    assert "failed: record" not in result.err  # upstream_failed did not fail by itself


def test_wait_times_out_with_exit_4_and_says_how_to_keep_following():
    airflow = FakeAirflow(script=[("running", {"build": "running"})])
    clock = FakeClock()
    result = invoke(
        ["--app", "hello", "--git-sha", SHA, "--wait", "--timeout", "12", "--poll", "5"], airflow, clock=clock
    )

    assert result.code == 4
    assert clock.sleeps == [5, 5, 2]
    assert f"still running after 12 s; keep following with: python -m fanout trigger --dag {DAG} --follow {RUN_ID}" in (
        result.err
    )


def superseded(by: str, sha: str) -> dict[str, str]:
    return {"by": by, "git_sha": sha, "reason": "a newer merge is queued"}


def test_a_superseded_run_follows_the_chain_and_exits_with_the_last_outcome():
    skipped = {"check_superseded": "success", "build": "skipped"}
    airflow = FakeAirflow(
        script=[("queued", {}), ("success", skipped)],
        scripts={
            "run-b": [("success", skipped)],
            "run-c": [("running", {"check_superseded": "success"}), ("failed", {"deploy_westus.gate_soak": "failed"})],
        },
        xcoms={
            (RUN_ID, "check_superseded", "superseded"): superseded("run-b", NEWER_SHA),
            ("run-b", "check_superseded", "superseded"): superseded("run-c", "fedcba9"),
        },
    )
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait"], airflow)

    assert result.code == 1  # the run that carried this merge's code failed
    assert f"superseded by run-b (git {NEWER_SHA}): a newer merge is queued" in result.err
    assert "following run-b" in result.err and "superseded by run-c (git fedcba9)" in result.err
    assert "following run-c" in result.err and "  failed: deploy_westus.gate_soak" in result.err
    assert result.out == RUN_ID + "\n"  # stdout still names the run this command triggered


def test_a_superseded_run_exits_with_a_successful_newer_run():
    airflow = FakeAirflow(
        script=[("success", {"check_superseded": "success"})],
        scripts={"run-b": [("running", {}), ("success", {"check_superseded": "success", "record": "success"})]},
        xcoms={(RUN_ID, "check_superseded", "superseded"): superseded("run-b", NEWER_SHA)},
    )
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait"], airflow)

    assert result.code == 0
    assert result.err.splitlines()[-1] == "run-b: success"


def test_no_follow_superseded_exits_0_at_once():
    airflow = FakeAirflow(
        script=[("running", {"check_superseded": "success"})],
        scripts={"run-b": [("failed", {})]},
        xcoms={(RUN_ID, "check_superseded", "superseded"): superseded("run-b", NEWER_SHA)},
    )
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait", "--no-follow-superseded"], airflow)

    assert result.code == 0
    assert f"superseded by run-b (git {NEWER_SHA})" in result.err
    assert not any("run-b" in r.url.path for r in airflow.requests)


def test_a_check_without_the_superseded_xcom_is_an_ordinary_run():
    airflow = FakeAirflow(script=[("success", {"check_superseded": "success", "validate": "success"})])
    result = invoke(["--app", "hello", "--git-sha", SHA, "--wait", "--dry-run"], airflow)

    assert result.code == 0
    assert "superseded" not in result.err.replace("check_superseded", "")


def test_follow_follows_an_existing_run_without_triggering():
    airflow = FakeAirflow(scripts={"older": [("running", {}), ("success", {"record": "success"})]})
    result = invoke(["--app", "hello", "--follow", "older"], airflow)

    assert result.code == 0
    assert result.out == "older\n"
    assert not airflow.calls("POST") and airflow.polls["older"] == 1


def test_follow_of_an_unknown_run_is_exit_3():
    result = invoke(["--app", "hello", "--follow", "nope"], FakeAirflow())

    assert result.code == 3
    assert f"run nope of {DAG} not found" in result.err


# ---- pure helpers -------------------------------------------------------------------------


def test_run_ids_are_unique_per_instant_and_valid_for_airflow():
    later = NOW.replace(microsecond=7)
    assert trigger.new_run_id(SHA, NOW) == RUN_ID
    assert trigger.new_run_id(SHA, later) != RUN_ID
    assert re.fullmatch(r"[A-Za-z0-9_.~:+-]+", RUN_ID)  # Airflow's default allowed_run_id_pattern


def test_progress_line_format():
    assert trigger.format_progress(NOW, "deploy_eastus.helm_deploy", "running") == (
        "03:04:05  deploy_eastus.helm_deploy  running"
    )
    assert trigger.format_progress(NOW, "observe", "failed", map_index=2, try_number=2) == (
        "03:04:05  observe[2]  failed (try 2)"
    )


# ---- the command as CI runs it --------------------------------------------------------------


def test_the_trigger_path_imports_neither_pydantic_nor_yaml_nor_airflow():
    code = (
        "import sys; from fanout.cli import build_parser; "
        "build_parser().parse_args(['trigger', '--app', 'hello', '--git-sha', 'abcdef0']); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'yaml', 'airflow'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(REPO / "plugins")}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_m_fanout_trigger_prints_only_the_run_id_on_stdout():
    posted: list[dict[str, Any]] = []

    class Airflow(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"dag_id": DAG, "is_paused": False})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            posted.append({"auth": self.headers["Authorization"], **body})
            self._send(200, {"dag_run_id": body["dag_run_id"], "state": "queued"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Airflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "PYTHONPATH": str(REPO / "plugins"),
            "FANOUT_AIRFLOW_URL": f"http://127.0.0.1:{server.server_port}",
            "FANOUT_AIRFLOW_TOKEN": TOKEN,
        }
        argv = ["--app", "hello", "--git-sha", SHA, "--run-id", "ci-7"]
        done = subprocess.run(
            [sys.executable, "-m", "fanout", "trigger", *argv], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ci-7\n"
    assert posted == [
        {
            "auth": f"Bearer {TOKEN}",
            "logical_date": None,
            "conf": {"git_sha": SHA, "source_ref": "main"},
            "dag_run_id": "ci-7",
        }
    ]


CI_FILES = {
    "include/ci/github-actions.yaml": {"${{ github.sha }}": SHA, "${{ github.ref_name }}": "main"},
    "include/ci/azure-pipelines.yml": {"$(Build.SourceVersion)": SHA, "$(Build.SourceBranchName)": "main"},
}


def ci_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        step
        for job in (doc["jobs"].values() if isinstance(doc["jobs"], dict) else doc["jobs"])
        for step in job["steps"]
    ]


@pytest.mark.parametrize("path", CI_FILES)
def test_the_ci_examples_run_a_command_the_real_parser_accepts(path):
    doc = yaml.safe_load((REPO / path).read_text())
    steps = ci_steps(doc)
    (step,) = [s for s in steps if "fanout trigger" in (s.get("run") or s.get("script") or "")]
    command = step.get("run") or step.get("script")
    for expression, value in CI_FILES[path].items():
        command = command.replace(expression, value)
    assert "${{" not in command and "$(" not in command, command
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "fanout", "trigger"]

    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.app, args.git_sha, args.ref, args.wait) == ("trigger", "hello", SHA, "main", True)
    assert trigger.build_conf(args.git_sha, args.ref, args.image, args.regions, args.dry_run)["git_sha"] == SHA

    env = step["env"]
    assert env["PYTHONPATH"] == "plugins"
    assert {trigger.ENV_URL, trigger.ENV_USERNAME, trigger.ENV_PASSWORD} <= set(env)
    assert set(env) - {"PYTHONPATH"} <= {trigger.ENV_URL, trigger.ENV_TOKEN, trigger.ENV_USERNAME, trigger.ENV_PASSWORD}
    installs = [
        s.get("run") or s.get("script") for s in steps if "pip install" in (s.get("run") or s.get("script") or "")
    ]
    assert installs == ["python -m pip install --disable-pip-version-check httpx -c constraints.txt"]
    assert (REPO / "constraints.txt").read_text().count("\nhttpx==") == 1


def test_the_github_workflow_runs_on_push_to_main_and_never_cancels_a_trigger():
    doc = yaml.safe_load((REPO / "include/ci/github-actions.yaml").read_text())
    assert doc[True]["push"]["branches"] == ["main"]  # YAML 1.1 reads the key `on` as True
    assert doc["concurrency"]["cancel-in-progress"] is False
    azure = yaml.safe_load((REPO / "include/ci/azure-pipelines.yml").read_text())
    assert azure["trigger"]["branches"]["include"] == ["main"]
    assert {"group": "fanout-airflow"} in azure["variables"]


def test_a_secret_echoed_in_airflows_detail_is_masked():
    echo = httpx.Response(403, json={"detail": f"token {TOKEN} may not read this DAG"})
    airflow = FakeAirflow(faults=[("GET", f"/api/v2/dags/{DAG}", echo)])
    result = invoke(["--app", "hello", "--git-sha", SHA], airflow)

    assert result.code == 3
    assert "HTTP 403: token *** may not read this DAG" in result.err
    assert TOKEN not in result.err
