"""ACR Tasks quick build through the real SDKs (azure-mgmt-containerregistrytasks 1.0.0b1,
api-version 2025-03-01-preview; azure-storage-blob 12.31.1 for the SAS upload) against a
contract-checking local server, as `az acr build` drives it."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import itertools
import json
import logging
import shlex
import tarfile
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fanout.adapters.acr_tasks import AcrTasksBuilder, image_name
from fanout.adapters.azure_credentials import AzureAdapterError
from fanout.adapters.builder import BuildError
from fanout.fleet import GitSource
from fanout.provenance import build_labels
from tests.contract.azure_server import ARM_SCOPE, FakeCredential, Request, Response, arm_error

SUB, RG, REG = "6f1c1d6e-0c3a-4d8e-9a57-2f5e8d1c0a01", "rg-storefront-global", "contosoprod"
ARM = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerRegistry/registries/{REG}"
API = "2025-03-01-preview"
TOKEN = FakeCredential.token_for(ARM_SCOPE)
BLOB = "/acrtasksstore/source/202611280000/0a1b2c.tar.gz"
LOG_BLOB = "/acrtasksstore/logs/ca1/rawtext.log"
SIG = "c2lnbmF0dXJlLXNlY3JldA%3D%3D"
DIGEST = "sha256:" + "b" * 64
SHA = "0123456789abcdef0123456789abcdef01234567"
GIT_CREDENTIAL = ("storefront-ci", "git-pat-5ecr3t-value")
FLEET_FILE = Path(__file__).resolve().parents[2] / "include" / "fleets" / "azure-example.yaml"
GIT_URL = "https://git.example/contoso/storefront.git"


@pytest.fixture
def context(tmp_path):
    (tmp_path / "Containerfile").write_text("FROM scratch\nCOPY index.html /\n")
    (tmp_path / "index.html").write_text("<h1>hello</h1>\n")
    (tmp_path / ".dockerignore").write_text("# keep secrets out of the upload\nsecret.env\n*.log\n")
    (tmp_path / "secret.env").write_text("PASSWORD=hunter2\n")
    (tmp_path / "debug.log").write_text("noise\n")
    return tmp_path


class Tasks:
    """ACR Tasks as the server plays it: one upload, one run whose status follows `statuses`."""

    def __init__(
        self, server, statuses=("Queued", "Running", "Succeeded"), error=None, image="storefront/web:abc123", abac=False
    ):
        self.server, self.statuses, self.error, self.image, self.abac = server, deque(statuses), error, image, abac
        self.labels: dict[str, str] | None = None
        self.uploaded: bytes | None = None
        self.request: dict | None = None
        self.cancelled = False
        arm = {"api_version": API, "token": TOKEN}
        server.route("POST", f"{ARM}/listBuildSourceUploadUrl", self.upload_url, **arm)
        server.route("PUT", BLOB, self.put_blob)
        server.route("POST", f"{ARM}/scheduleRun", self.schedule, **arm)
        server.route("GET", f"{ARM}/runs/ca1", self.get_run, **arm)
        server.route("POST", f"{ARM}/runs/ca1/listLogSasUrl", self.log_url, **arm)
        server.route("GET", LOG_BLOB, self.get_log)
        server.route("POST", f"{ARM}/runs/ca1/cancel", self.cancel, **arm)
        mode = "AbacRepositoryPermissions" if abac else "LegacyRegistryPermissions"
        registry = {"id": ARM, "name": REG, "location": "eastus2", "properties": {"roleAssignmentMode": mode}}
        server.route("GET", ARM, Response(200, registry), api_version="2025-11-01", token=TOKEN)

    def upload_url(self, req: Request, _m) -> Response:
        assert not req.body, "listBuildSourceUploadUrl takes no body"
        url = f"{self.server.url}{BLOB}?sv=2024-11-04&se=2026-11-28T15%3A00%3A00Z&sr=b&sp=cw&sig={SIG}"
        return Response(200, {"uploadUrl": url, "relativePath": "source/202611280000/0a1b2c.tar.gz"})

    def put_blob(self, req: Request, _m) -> Response:
        assert req.query.get("sig"), "the SAS signature travels in the query"
        assert "authorization" not in req.headers, "a SAS upload sends no bearer token"
        assert req.headers.get("x-ms-blob-type") == "BlockBlob", f"x-ms-blob-type {req.headers.get('x-ms-blob-type')}"
        assert req.headers.get("x-ms-version"), "x-ms-version is required by the Blob service"
        self.uploaded = req.body
        return Response(201, b"", {"ETag": '"0x8DC"', "Last-Modified": "Sat, 28 Nov 2026 15:00:00 GMT"})

    def schedule(self, req: Request, _m) -> Response:
        body = req.json()
        assert body.get("type") == "EncodedTaskRunRequest", f"type {body.get('type')}"
        assert body.get("sourceLocation") == "source/202611280000/0a1b2c.tar.gz", "the relativePath, not the SAS URL"
        assert body.get("platform") == {"os": "Linux", "architecture": "amd64"}, body.get("platform")
        # ABAC repository-permission registries: the run must log in to its registry as the caller.
        caller = {"sourceRegistry": {"identity": "[caller]", "loginMode": "Default"}}
        assert body.get("credentials") == (caller if self.abac else None), body.get("credentials")
        assert self.uploaded is not None, "scheduled before the source was uploaded"
        # The task ACR runs: one build step (tag, Containerfile, labels, the uploaded context), one push.
        task = yaml.safe_load(base64.b64decode(body["encodedTaskContent"]))
        assert task["version"] == "v1.1.0" and len(task["steps"]) == 2, task
        build = shlex.split(task["steps"][0]["build"])
        assert build[:4] == ["-t", f"{{{{.Run.Registry}}}}/{self.image}", "-f", "Containerfile"], build
        assert build[-1] == ".", "the build context is the uploaded archive's root"
        labels = dict(v.split("=", 1) for flag, v in itertools.pairwise(build) if flag == "--label")
        self.labels = labels
        assert task["steps"][1] == {"push": [f"{{{{.Run.Registry}}}}/{self.image}"]}, task["steps"][1]
        self.request = body
        return Response(200, self.run("Queued"))

    def run(self, status: str) -> dict:
        props: dict = {"runId": "ca1", "status": status, "runType": "QuickRun", "provisioningState": "Succeeded"}
        if status == "Succeeded":
            repository, tag = self.image.rsplit(":", 1)
            props["outputImages"] = [
                {"registry": f"{REG}.azurecr.io", "repository": repository, "tag": tag, "digest": DIGEST}
            ]
        if status in ("Failed", "Error") and self.error:
            props["runErrorMessage"] = self.error
        return {"id": f"{ARM}/runs/ca1", "name": "ca1", "type": "Microsoft.ContainerRegistry/registries/runs",
                "properties": props}  # fmt: skip

    def get_run(self, _req, _m) -> Response:
        status = self.statuses.popleft() if len(self.statuses) > 1 else self.statuses[0]
        return Response(200, self.run(status))

    def log_url(self, _req, _m) -> Response:
        return Response(200, {"logLink": f"{self.server.url}{LOG_BLOB}?sv=2024-11-04&sr=b&sp=r&sig={SIG}"})

    def get_log(self, req: Request, _m) -> Response:
        text = b"".join(b"step %d\n" % i for i in range(50)) + b"error: COPY failed: index.htm not found\n"
        headers = {"ETag": '"0x1"', "Last-Modified": "Sat, 28 Nov 2026 15:00:00 GMT", "x-ms-blob-type": "BlockBlob"}
        if req.headers.get("x-ms-range") or req.headers.get("range"):
            headers["Content-Range"] = f"bytes 0-{len(text) - 1}/{len(text)}"
            return Response(206, text, headers)
        return Response(200, text, headers)

    def cancel(self, _req, _m) -> Response:
        self.cancelled = True
        return Response(200)


def builder(server, ca, lines=None, **kwargs) -> AcrTasksBuilder:
    kwargs.setdefault("poll_seconds", 0.05)
    return AcrTasksBuilder(
        FakeCredential(), SUB, RG, REG, base_url=server.url, connection_verify=ca, retry_backoff_factor=0.01,
        progress=(lines.append if lines is not None else None), **kwargs,
    )  # fmt: skip


def build(builder: AcrTasksBuilder, context: Path, destination: str, labels: dict[str, str] | None = None) -> str:
    """What the build task and its trigger do together: start the run, follow it, take its digest."""
    try:
        run_id = builder.start(context, destination, labels)
        while not (state := builder.state(run_id)).done:
            time.sleep(builder.poll_seconds)
    except AzureAdapterError as err:
        raise BuildError(str(err)) from None
    if state.status != "Succeeded":
        raise BuildError(builder.failure(state, builder.log_tail(run_id)))
    return builder.digest_of(state)


def test_quick_build_returns_the_digest_of_the_run(server, ca, context):
    tasks, lines = Tasks(server, image=f"storefront/web:{SHA}"), []
    destination = f"{REG}.eastus2.geo.azurecr.io/storefront/web:{SHA}"
    digest = build(builder(server, ca, lines), context, destination, build_labels(SHA, GIT_URL))
    assert digest == DIGEST
    assert tasks.labels == {"org.opencontainers.image.revision": SHA, "org.opencontainers.image.source": GIT_URL}
    server.assert_clean()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tasks.uploaded))) as tar:
        names = tar.getnames()
    assert sorted(names) == [".dockerignore", "Containerfile", "index.html"], "honours .dockerignore"
    assert any("run ca1 scheduled" in line and "az acr task logs --registry contosoprod --run-id ca1" in line
               for line in lines)  # fmt: skip
    assert not any(SIG in line or "sig=" in line for line in lines), "the SAS URL is never logged"


def test_failed_run_reports_status_error_log_tail_and_link(server, ca, context):
    Tasks(server, statuses=("Running", "Failed"), error="failed during run, err: exit status 1")
    with pytest.raises(BuildError) as caught:
        build(builder(server, ca), context, "storefront/web:abc123")
    message = str(caught.value)
    assert "run ca1 ended Failed: failed during run, err: exit status 1" in message
    assert "az acr task logs --registry contosoprod --run-id ca1" in message
    assert "error: COPY failed: index.htm not found" in message and "step 49" in message and "step 5\n" not in message
    assert SIG not in message
    server.assert_clean()


STORAGE_403 = (
    b"<?xml version='1.0' encoding='utf-8'?><Error><Code>AuthenticationFailed</Code><Message>Server failed to "
    b"authenticate the request. Make sure the value of Authorization header is formed correctly including the "
    b"signature.</Message><AuthenticationErrorDetail>Signed expiry time [Sat, 28 Nov 2026 14:00:00 GMT] must be "
    b"after signed start time</AuthenticationErrorDetail></Error>"
)


@pytest.mark.parametrize("body", [STORAGE_403, b""], ids=["storage-error", "no-body"])
def test_expired_sas_upload_fails_without_leaking_the_signature(server, ca, context, body):
    Tasks(server)
    headers = {"x-ms-error-code": "AuthenticationFailed", "Content-Type": "application/xml"}
    server.fail_next("PUT", BLOB, Response(403, body, headers))
    with pytest.raises(BuildError, match="uploading the build context failed") as caught:
        build(builder(server, ca), context, "storefront/web:abc123")
    assert SIG not in str(caught.value) and "c2lnbmF0" not in str(caught.value)
    assert not server.calls("POST", f"{ARM}/scheduleRun"), "nothing is scheduled after a failed upload"


def test_on_an_abac_registry_the_run_pushes_as_the_caller(server, ca, context):
    tasks = Tasks(server, abac=True)
    assert build(builder(server, ca, push_as_caller=lambda: True), context, "storefront/web:abc123") == DIGEST
    server.assert_clean()
    assert tasks.request["credentials"]["sourceRegistry"]["identity"] == "[caller]"


def test_throttled_schedule_run_is_retried_after_retry_after(server, ca, context):
    Tasks(server)
    server.fail_next("POST", f"{ARM}/scheduleRun", arm_error(429, "TooManyRequests", "throttled", {"Retry-After": "1"}))
    assert build(builder(server, ca), context, "storefront/web:abc123") == DIGEST
    assert len(server.calls("POST", f"{ARM}/scheduleRun")) == 2


def test_conflict_on_schedule_run_is_not_retried(server, ca, context):
    Tasks(server)
    server.fail_next("POST", f"{ARM}/scheduleRun", arm_error(409, "Conflict", "another operation is in progress"))
    with pytest.raises(BuildError, match="scheduling a build of storefront/web:abc123 failed: HTTP 409 Conflict"):
        build(builder(server, ca), context, "storefront/web:abc123")
    assert len(server.calls("POST", f"{ARM}/scheduleRun")) == 1


def test_poll_survives_a_transient_500(server, ca, context):
    Tasks(server)
    server.fail_next("GET", f"{ARM}/runs/ca1", arm_error(500, "InternalServerError", "try again"))
    assert build(builder(server, ca), context, "storefront/web:abc123") == DIGEST


def test_missing_registry_is_named(server, ca, context):
    Tasks(server)
    server.fail_next(
        "POST", f"{ARM}/listBuildSourceUploadUrl",
        arm_error(404, "ResourceNotFound", "The Resource 'registries/contosoprod' was not found."),
    )  # fmt: skip
    with pytest.raises(
        BuildError, match="ACR Tasks on registry 'contosoprod': getting a build-source upload URL failed"
    ):
        build(builder(server, ca), context, "storefront/web:abc123")


def test_succeeded_run_without_a_digest_is_an_error(server, ca, context):
    tasks = Tasks(server)
    original = tasks.run

    def no_outputs(status):
        body = original(status)
        body["properties"].pop("outputImages", None)
        return body

    tasks.run = no_outputs
    with pytest.raises(BuildError, match="reported no image digest"):
        build(builder(server, ca), context, "storefront/web:abc123")


def test_image_name_drops_the_registry_host():
    assert image_name("contosoprod.eastus2.geo.azurecr.io/storefront/web:abc") == "storefront/web:abc"
    assert image_name("127.0.0.1:5000/app:v1") == "app:v1"
    assert image_name("storefront/web:abc") == "storefront/web:abc"


# -- following a run deferrably: AcrRunTrigger in the triggerer, BuildImageOperator around it --------


@pytest.fixture
def connection(monkeypatch) -> list[str]:
    """The Airflow connection the trigger reads in the triggerer, standing in with a FakeCredential;
    the list of connection ids read."""
    from fanout.adapters.azure_credentials import AzureAccess

    credential = FakeCredential()
    read: list[str] = []

    def access_from_connection(conn_id: str) -> AzureAccess:
        read.append(conn_id)
        return AzureAccess(credential)

    monkeypatch.setattr("fanout.adapters.azure_credentials.access_from_connection", access_from_connection)
    return read


def run_trigger(trigger) -> dict:
    """Drive trigger.run() as the triggerer does, after a serialize round trip; the first event."""
    import importlib

    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    revived = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

    async def first_event() -> dict:
        async for event in revived.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first_event())


def run_trigger_for(server, ca, **timing):
    from fanout.airflow.triggers import AcrRunTrigger
    from tests.fakes import snapshot_of

    timing = {"timeout_seconds": 30, "poll_seconds": 0.05, **timing}
    fleet = snapshot_of(Path(__file__).resolve().parents[2] / "include" / "fleets" / "azure-example.yaml")
    options = {"arm_url": server.url, "connection_verify": ca}
    return run_trigger(AcrRunTrigger(fleet=fleet.to_xcom(), hook_options=options, run_id="ca1", **timing))


def test_trigger_reports_the_digest_of_a_succeeded_run(server, ca, connection):
    Tasks(server, statuses=("Queued", "Running", "Succeeded"))
    event = run_trigger_for(server, ca)
    assert event["status"] == "ok" and event["run_status"] == "Succeeded", event
    assert event["digest"] == DIGEST and event["images"] == [f"storefront/web:abc123@{DIGEST}"]
    assert "az acr task logs --registry contosoprod --run-id ca1" in event["log"]
    assert connection == ["azure_fanout"], "the credential comes from the connection, read once"
    assert len(server.calls("GET", f"{ARM}/runs/ca1")) == 3
    server.assert_clean()


def test_trigger_reports_a_failed_run_with_its_error_log_command_and_tail(server, ca, connection):
    Tasks(server, statuses=("Running", "Failed"), error="failed during run, err: exit status 1")
    event = run_trigger_for(server, ca)
    assert event["status"] == "failed" and event["run_status"] == "Failed", event
    assert event["error"] == "failed during run, err: exit status 1"
    assert "error: COPY failed: index.htm not found" in event["log_tail"]
    assert "run ca1 ended Failed: failed during run, err: exit status 1" in event["detail"]
    assert "az acr task logs --registry contosoprod --run-id ca1" in event["detail"]
    assert SIG not in json.dumps(event) and "sig=" not in json.dumps(event), "the log's SAS URL stays out"
    server.assert_clean()


@pytest.mark.parametrize("status", ["Canceled", "Error", "Timeout"])
def test_every_other_terminal_status_is_a_failure(server, ca, connection, status):
    Tasks(server, statuses=(status,))
    event = run_trigger_for(server, ca)
    assert event["status"] == "failed" and event["run_status"] == status
    assert f"run ca1 ended {status}" in event["detail"]


def test_trigger_past_its_deadline_cancels_the_run(server, ca, connection):
    tasks = Tasks(server, statuses=("Running",))
    event = run_trigger_for(server, ca, timeout_seconds=0.3)
    assert event["status"] == "timeout" and event["run_status"] == "Running" and event["cancelled"] is True
    assert tasks.cancelled and len(server.calls("POST", f"{ARM}/runs/ca1/cancel")) == 1
    assert "run ca1 still Running after" in event["detail"] and "cancelled it" in event["detail"]
    assert "az acr task logs --registry contosoprod --run-id ca1" in event["detail"]
    server.assert_clean()


def test_killing_the_deferred_build_cancels_the_run(server, ca, connection):
    """Marking the task failed (or clearing it) while the trigger follows the run: Airflow calls the
    trigger's on_kill, which cancels the run in ACR instead of leaving it to build and push."""
    from fanout.airflow.triggers import AcrRunTrigger
    from tests.fakes import snapshot_of

    tasks = Tasks(server, statuses=("Running",))
    fleet = snapshot_of(Path(__file__).resolve().parents[2] / "include" / "fleets" / "azure-example.yaml")
    options = {"arm_url": server.url, "connection_verify": ca}
    trigger = AcrRunTrigger(fleet=fleet.to_xcom(), hook_options=options, run_id="ca1", timeout_seconds=3600,
                            poll_seconds=0.05)  # fmt: skip
    asyncio.run(trigger.on_kill())
    assert tasks.cancelled and len(server.calls("POST", f"{ARM}/runs/ca1/cancel")) == 1
    assert trigger._tasks is None, "its client is closed"
    server.assert_clean()


def test_trigger_that_cannot_cancel_says_so(server, ca, connection):
    Tasks(server, statuses=("Running",))
    server.fail_next("POST", f"{ARM}/runs/ca1/cancel", arm_error(409, "Conflict", "run is finishing"))
    event = run_trigger_for(server, ca, timeout_seconds=0.3)
    assert event["status"] == "timeout" and event["cancelled"] is False
    assert "could not cancel it" in event["detail"]


def test_trigger_polls_through_a_transient_error_but_stops_at_a_missing_run(server, ca, connection):
    Tasks(server)
    server.fail_next("GET", f"{ARM}/runs/ca1", arm_error(500, "InternalServerError", "try again"))
    assert run_trigger_for(server, ca)["status"] == "ok"
    server.fail_next("GET", f"{ARM}/runs/ca1", arm_error(404, "ResourceNotFound", "run ca1 was not found"))
    event = run_trigger_for(server, ca, timeout_seconds=600)
    assert event["status"] == "failed" and event["waited"] < 60, "a 404 does not heal by waiting"
    assert "reading run ca1 failed: HTTP 404 ResourceNotFound" in event["detail"]
    assert "az acr task logs --registry contosoprod --run-id ca1" in event["detail"]


def test_trigger_without_a_usable_connection_fails_at_once(server, ca, monkeypatch):
    def missing(conn_id):
        raise RuntimeError(f"The conn_id `{conn_id}` isn't defined")

    monkeypatch.setattr("fanout.adapters.azure_credentials.access_from_connection", missing)
    event = run_trigger_for(server, ca, timeout_seconds=600)
    assert event["status"] == "failed" and "cannot use connection 'azure_fanout'" in event["detail"]
    assert not server.seen


@pytest.fixture
def private_repo(tmp_path, monkeypatch):
    """A private repository on a real git server (localfleet.git) holding one commit of the app, the
    Airflow connection with its credential (as an environment variable), and the fleet file using it."""
    from localfleet import procs
    from localfleet.git import repo

    state, url = tmp_path / "git", f"http://127.0.0.1:{procs.free_port()}/contoso/storefront.git"
    source = GitSource(url=url, path="web")
    repo.start(state, url, GIT_CREDENTIAL)
    try:
        app = tmp_path / "web"
        app.mkdir()
        (app / "Containerfile").write_text("FROM scratch\nCOPY index.html /\n")
        (app / "index.html").write_text("<h1>storefront</h1>\n")
        sha, _ = repo.publish(source, app, "storefront", auth=GIT_CREDENTIAL)
        login, password = GIT_CREDENTIAL
        monkeypatch.setenv("AIRFLOW_CONN_GIT_STOREFRONT", json.dumps({"conn_type": "http", "login": login,
                                                                      "password": password}))  # fmt: skip
        data = yaml.safe_load(FLEET_FILE.read_text())
        data["app"]["source"]["git"]["url"] = url
        data["app"]["source"]["git"]["path"] = "web"
        data["app"]["chart"]["path"] = str(FLEET_FILE.parent / data["app"]["chart"]["path"])
        fleet_path = tmp_path / "fleet.yaml"
        fleet_path.write_text(yaml.safe_dump(data))
        yield fleet_path, sha, url
    finally:
        repo.stop_server(state)


def test_build_operator_starts_the_run_defers_and_resumes_with_the_digest(
    server, ca, connection, private_repo, caplog, capsys
):
    """The whole ACR path: the worker fetches the commit from the private repository with the
    connection's credential, uploads exactly that tree and schedules a labelled build, defers with
    plain kwargs; the trigger follows the run from a connection, and the resumed task returns the
    release record. The git credential goes to the git server only: not to ACR, not into a log, the
    trigger or the deferral's kwargs."""
    from airflow.sdk.exceptions import TaskDeferred

    from fanout.adapters.azure_credentials import AzureAccess
    from fanout.airflow.fleet_steps import BuildImageOperator
    from fanout.airflow.hooks import FleetHook
    from fanout.fleet import load_fleet
    from tests.fakes import FakeTI, snapshot_of

    caplog.set_level(logging.DEBUG)
    fleet_path, sha, url = private_repo
    tasks = Tasks(server, image=f"storefront/web:{sha}", abac=True)  # the run pushes as the caller
    op = BuildImageOperator(task_id="build", fleet_path=str(fleet_path))
    op._hook = hook = FleetHook(
        load_fleet(str(fleet_path)), access=AzureAccess(FakeCredential()), arm_url=server.url, connection_verify=ca,
        azure_options={"retry_backoff_factor": 0.01},
    )  # fmt: skip
    op._fleet = hook.fleet
    # The home registry has no image of this commit yet (reading labels from ACR: test_azure_acr.py).
    hook.registry = lambda region: SimpleNamespace(image_labels=lambda repository, reference: None)
    params = {"git_sha": sha[:9], "source_ref": "main", "image": None, "regions": None, "dry_run": False}
    ti = FakeTI({("validate", "snapshot"): snapshot_of(fleet_path).to_xcom()})
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"params": params, "ti": ti})
    assert tasks.request is not None, "the run was scheduled before the task deferred"
    assert tasks.labels == {"org.opencontainers.image.revision": sha, "org.opencontainers.image.source": url}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tasks.uploaded))) as tar:
        assert sorted(tar.getnames()) == ["Containerfile", "index.html"], "the commit's folder `web`, nothing else"
    assert not server.calls("GET", f"{ARM}/runs/ca1"), "the worker does not poll the run"
    _, kwargs = deferred.value.trigger.serialize()
    text = json.dumps(kwargs)
    assert kwargs["run_id"] == "ca1" and kwargs["hook_options"]["arm_url"] == server.url
    assert "tok-" not in text and "token" not in text.lower() and "secret" not in text.lower()
    assert deferred.value.method_name == "acr_build_done"
    assert kwargs["timeout_seconds"] == 3600 + 300 and kwargs["not_before"] > kwargs["started_at"]
    # The settle delay and a build's poll interval are for a live scheduler and ACR, not this test.
    deferred.value.trigger.not_before, deferred.value.trigger.poll_seconds = None, 0.05
    event = run_trigger(deferred.value.trigger)
    result = op.acr_build_done({"params": params}, event, **deferred.value.kwargs)
    assert result.pop("pinned_at") >= kwargs["started_at"]
    assert result == {
        "digest": DIGEST, "repository": "storefront/web", "tag": sha, "git_sha": sha, "source_ref": "main",
        "source_url": url, "built": True,
    }  # fmt: skip
    server.assert_clean()
    secret = GIT_CREDENTIAL[1]
    basic = base64.b64encode(":".join(GIT_CREDENTIAL).encode()).decode()
    sent_to_azure = [json.dumps(r.headers) + r.body.decode(errors="replace") for r in server.seen]
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err
    places = {
        "trigger kwargs": text, "deferral kwargs": json.dumps(deferred.value.kwargs), "result": json.dumps(result),
        "task log": logged, "requests to Azure": "\n".join(sent_to_azure),
    }  # fmt: skip
    assert "ACR Tasks run ca1 builds" in logged and sha in logged, "the log was captured (else this proves nothing)"
    for where, seen in places.items():
        assert secret not in seen and basic not in seen, f"the git credential is in the {where}"
    assert "storefront-ci" not in "\n".join(sent_to_azure), "not even the login travels to Azure"


def test_build_operator_fails_a_failed_run_naming_the_log(server, ca):
    from airflow.sdk.exceptions import AirflowFailException

    from fanout.airflow.fleet_steps import BuildImageOperator

    op = BuildImageOperator(task_id="build", fleet_path="unused.yaml")
    event = {"status": "failed", "detail": "ACR Tasks on registry 'contosoprod': run ca1 ended Failed\nlog: az acr …",
             "waited": 42.0, "run_id": "ca1"}  # fmt: skip
    with pytest.raises(AirflowFailException, match=r"build of x/y:z: .*run ca1 ended Failed\nlog: az acr"):
        op.acr_build_done({}, event, destination="x/y:z", commit={})
