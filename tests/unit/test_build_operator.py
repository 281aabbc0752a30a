"""BuildImageOperator: an ACR build is started in the worker and followed by a deferred trigger
whose kwargs are plain and carry no credential; a local build stays a blocking buildah build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from fanout.adapters.acr_tasks import AcrTasksBuilder
from fanout.adapters.azure_credentials import AzureAccess
from fanout.airflow.fleet_steps import BuildImageOperator
from fanout.airflow.hooks import FleetHook
from fanout.airflow.triggers import AcrRunTrigger
from fanout.fleet import load_fleet
from tests.fakes import FakeTI, snapshot_of

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"git_sha": "0123456789abcdef", "source_ref": "main", "image": None, "regions": None, "dry_run": False}
SECRET = "eyJhbGciOi.secret-token.value"


class NoCalls:
    """A credential that must not be used: starting a run is stubbed, nothing reaches Azure."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError(f"asked for a token for {scopes}")


def operator(fleet: str, hook: FleetHook | None = None) -> BuildImageOperator:
    path = str(REPO / "include" / "fleets" / fleet)
    op = BuildImageOperator(task_id="build", fleet_path=path)
    op._hook = hook or FleetHook(load_fleet(path), access=AzureAccess(NoCalls()))  # type: ignore[arg-type]
    op._fleet = op._hook.fleet
    return op


def run_context(fleet: str) -> dict[str, Any]:
    ti = FakeTI({("validate", "snapshot"): snapshot_of(REPO / "include" / "fleets" / fleet).to_xcom()})
    return {"params": PARAMS, "ti": ti}


def test_acr_build_defers_with_plain_secret_free_kwargs(monkeypatch):
    started: list[tuple[Path, str]] = []

    def start(self: AcrTasksBuilder, context: Path, destination: str) -> str:
        started.append((context, destination))
        return "ca7"

    monkeypatch.setattr(AcrTasksBuilder, "start", start)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)  # what a real worker may hold; it must not travel
    with pytest.raises(TaskDeferred) as deferred:
        operator("azure-example.yaml").execute(run_context("azure-example.yaml"))
    assert started == [(REPO / "include" / "app", "contosoprod.azurecr.io/storefront/web:0123456789ab")]
    trigger = deferred.value.trigger
    assert isinstance(trigger, AcrRunTrigger) and deferred.value.method_name == "acr_build_done"
    path, kwargs = trigger.serialize()
    text = json.dumps(kwargs)  # raises if anything is not plain data
    assert path == "fanout.airflow.triggers.AcrRunTrigger"
    assert kwargs["run_id"] == "ca7" and kwargs["hook_options"] == {}
    assert kwargs["fleet"]["path"].endswith("azure-example.yaml"), "the trigger reads the run's snapshot"
    assert SECRET not in text and "token" not in text.lower() and "secret" not in text.lower()
    assert AcrRunTrigger(**json.loads(text)).serialize()[1] == kwargs, "the triggerer rebuilds the same trigger"
    assert json.loads(json.dumps(deferred.value.kwargs)) == {
        "destination": "contosoprod.azurecr.io/storefront/web:0123456789ab", "tag": "0123456789ab",
    }  # fmt: skip


def test_acr_build_resumes_into_the_xcom_of_a_local_build():
    digest = "sha256:" + "d" * 64
    event = {"status": "ok", "digest": digest, "run_id": "ca7", "waited": 95.0, "detail": "pushed …"}
    out = operator("azure-example.yaml").acr_build_done({"params": PARAMS}, event, destination="x", tag="0123456789ab")
    assert out == {
        "digest": digest, "repository": "storefront/web", "tag": "0123456789ab",
        "git_sha": PARAMS["git_sha"], "source_ref": "main",
    }  # fmt: skip


def test_an_ok_event_without_a_digest_still_fails():
    from airflow.sdk.exceptions import AirflowFailException

    event = {"status": "ok", "digest": "latest", "run_id": "ca7", "waited": 1.0, "detail": "pushed web:latest"}
    with pytest.raises(AirflowFailException, match="pushed web:latest"):
        operator("azure-example.yaml").acr_build_done({}, event, destination="x", tag="t")


def test_local_build_still_blocks_in_the_worker(monkeypatch):
    digest = "sha256:" + "e" * 64

    class Home:
        endpoint = "127.0.0.1:5000"

    class Builder:
        def build_and_push(self, context: Path, destination: str) -> str:
            self.args = (context, destination)
            return digest

    builder = Builder()
    hook = FleetHook(load_fleet(str(REPO / "include" / "fleets" / "local.yaml")))
    monkeypatch.setattr(hook, "builder", lambda: builder)
    monkeypatch.setattr(hook, "registry", lambda region: Home())
    out = operator("local.yaml", hook).execute(run_context("local.yaml"))
    assert out["digest"] == digest and out["tag"] == "0123456789ab"
    assert builder.args[1].endswith(":0123456789ab")
