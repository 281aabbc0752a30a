"""BuildImageOperator: an ACR build is started in the worker and followed by a deferred trigger
whose kwargs are plain and carry no credential; a local build stays a blocking buildah build. The
image is tagged and labelled with the full commit; an image already built from it is reused, and a
CI-built one is released only when its label names the commit. The repository and the registry are
faked here (tests/integration uses the real ones)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from fanout.adapters.acr_tasks import AcrTasksBuilder
from fanout.adapters.azure_credentials import AzureAccess
from fanout.adapters.git_source import Commit
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


FULL = "0123456789abcdef" + "0" * 24
URL = "https://github.com/contoso/storefront.git"
COMMIT = Commit(FULL, "main", URL)


class Source:
    """The repository as the operator sees it: resolves the run's sha, exports a fixed folder."""

    def resolve(self, git_sha: str, ref: str) -> Commit:
        assert FULL.startswith(git_sha) and ref == "main"
        return COMMIT

    @contextmanager
    def export(self, commit: Commit, path: str) -> Iterator[Path]:
        self.exported = (commit, path)
        yield REPO / "include" / "app"


class Home:
    """The home registry: `images` maps a tag or digest to (digest, labels)."""

    endpoint = "127.0.0.1:5000"

    def __init__(self, images: dict[str, tuple[str, dict[str, str]]] | None = None) -> None:
        self.images = images or {}

    def image_labels(self, repository: str, reference: str) -> tuple[str, dict[str, str]] | None:
        return self.images.get(reference)


def operator(fleet: str, hook: FleetHook | None = None, home: Home | None = None) -> BuildImageOperator:
    path = str(REPO / "include" / "fleets" / fleet)
    op = BuildImageOperator(task_id="build", fleet_path=path)
    hook = hook or FleetHook(load_fleet(path), access=AzureAccess(NoCalls()))  # type: ignore[arg-type]
    hook.source = Source  # type: ignore[method-assign]
    hook.registry = lambda region: home or Home()  # type: ignore[method-assign]
    op._hook, op._fleet = hook, hook.fleet
    return op


def run(op: BuildImageOperator, **params: Any) -> Any:
    """op.execute in a run whose validate recorded the operator's fleet."""
    ti = FakeTI({("validate", "snapshot"): snapshot_of(Path(op.fleet_path)).to_xcom()})
    return op.execute({"params": {**PARAMS, **params}, "ti": ti})


def test_acr_build_defers_with_plain_secret_free_kwargs(monkeypatch):
    started: list[tuple[Path, str, dict[str, str] | None]] = []

    def start(self: AcrTasksBuilder, context: Path, destination: str, labels: dict[str, str] | None = None) -> str:
        started.append((context, destination, labels))
        return "ca7"

    monkeypatch.setattr(AcrTasksBuilder, "start", start)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)  # what a real worker may hold; it must not travel
    with pytest.raises(TaskDeferred) as deferred:
        run(operator("azure-example.yaml"))
    labels = {"org.opencontainers.image.revision": FULL, "org.opencontainers.image.source": URL}
    assert started == [(REPO / "include" / "app", f"contosoprod.azurecr.io/storefront/web:{FULL}", labels)]
    trigger = deferred.value.trigger
    assert isinstance(trigger, AcrRunTrigger) and deferred.value.method_name == "acr_build_done"
    path, kwargs = trigger.serialize()
    text = json.dumps(kwargs)  # raises if anything is not plain data
    assert path == "fanout.airflow.triggers.AcrRunTrigger"
    assert kwargs["run_id"] == "ca7" and kwargs["hook_options"] == {}
    assert kwargs["fleet"]["path"].endswith("azure-example.yaml"), "the trigger reads the run's snapshot"
    assert SECRET not in text and "secret" not in text.lower()
    assert AcrRunTrigger(**json.loads(text)).serialize()[1] == kwargs, "the triggerer rebuilds the same trigger"
    assert json.loads(json.dumps(deferred.value.kwargs)) == {
        "destination": f"contosoprod.azurecr.io/storefront/web:{FULL}",
        "commit": {"sha": FULL, "ref": "main", "url": URL},
    }


def test_acr_build_resumes_into_the_xcom_of_a_local_build():
    digest = "sha256:" + "d" * 64
    event = {"status": "ok", "digest": digest, "run_id": "ca7", "waited": 95.0, "detail": "pushed …"}
    commit = {"sha": FULL, "ref": "main", "url": URL}
    before = time.time()
    out = operator("azure-example.yaml").acr_build_done({}, event, destination="x", commit=commit)
    assert before <= out.pop("pinned_at") <= time.time()
    assert out == {
        "digest": digest, "repository": "storefront/web", "tag": FULL, "git_sha": FULL, "source_ref": "main",
        "source_url": URL, "built": True,
    }  # fmt: skip


def test_an_ok_event_without_a_digest_still_fails():
    event = {"status": "ok", "digest": "latest", "run_id": "ca7", "waited": 1.0, "detail": "pushed web:latest"}
    with pytest.raises(AirflowFailException, match="pushed web:latest"):
        operator("azure-example.yaml").acr_build_done({}, event, destination="x", commit={})


class Builder:
    def __init__(self) -> None:
        self.calls: list[tuple[Path, str, dict[str, str], tuple[str, ...]]] = []

    def build_and_push(self, context: Path, destination: str, labels: dict[str, str], extra: tuple[str, ...]) -> str:
        self.calls.append((context, destination, labels, extra))
        return DIGEST


DIGEST = "sha256:" + "e" * 64
LABELS = {"org.opencontainers.image.revision": FULL, "org.opencontainers.image.source": URL}


def local_operator(monkeypatch, home: Home) -> tuple[BuildImageOperator, Builder]:
    builder, hook = Builder(), FleetHook(load_fleet(str(REPO / "include" / "fleets" / "local.yaml")))
    monkeypatch.setattr(hook, "builder", lambda: builder)
    return operator("local.yaml", hook, home), builder


def test_local_build_tags_and_labels_the_full_sha(monkeypatch):
    op, builder = local_operator(monkeypatch, Home())
    out = run(op)
    assert out["digest"] == DIGEST and out["tag"] == FULL and out["git_sha"] == FULL and out["built"] is True
    assert builder.calls == [(REPO / "include" / "app", f"127.0.0.1:5101/fanout/hello:{FULL}", LABELS, ())]


def test_an_image_already_built_from_the_commit_is_reused(monkeypatch):
    op, builder = local_operator(monkeypatch, Home({FULL: ("sha256:" + "f" * 64, LABELS)}))
    out = run(op)
    assert out["digest"] == "sha256:" + "f" * 64 and out["built"] is False and builder.calls == []


def test_a_tag_whose_label_names_another_commit_is_built_again(monkeypatch):
    other = {"org.opencontainers.image.revision": "1" * 40}
    op, builder = local_operator(monkeypatch, Home({FULL: ("sha256:" + "f" * 64, other)}))
    assert run(op)["digest"] == DIGEST and len(builder.calls) == 1


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        ({}, "has no org.opencontainers.image.revision label"),
        ({"org.opencontainers.image.revision": "1" * 40}, f"labelled as commit {'1' * 40}.*git_sha {FULL}"),
        (None, "is not in the home registry"),
    ],
)
def test_a_ci_image_must_be_labelled_with_the_commit(monkeypatch, labels, error):
    ci = "sha256:" + "c" * 64
    op, builder = local_operator(monkeypatch, Home({} if labels is None else {ci: (ci, labels)}))
    with pytest.raises(AirflowFailException, match=error):
        run(op, image=ci)
    assert builder.calls == []


def test_a_ci_image_labelled_with_the_commit_is_released_without_a_build(monkeypatch):
    ci = "sha256:" + "c" * 64
    op, builder = local_operator(monkeypatch, Home({ci: (ci, LABELS)}))
    out = run(op, image=ci)
    assert out["digest"] == ci and out["git_sha"] == FULL and builder.calls == []
