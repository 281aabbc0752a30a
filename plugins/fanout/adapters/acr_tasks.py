"""Build the app image with ACR Tasks, as `az acr build` does, and return its digest.

1. pack the context (honouring `.dockerignore`) as tar.gz;
2. `registries.get_build_source_upload_url` → a SAS URL and a relative path;
3. upload the archive to the SAS URL (azure-storage-blob, one block-blob PUT);
4. `registries.schedule_run` with an `EncodedTaskRunRequest` (a build step with the OCI labels, a push
   step) whose `source_location` is the relative path;
5. poll `runs.get` until the run ends; the digest is in `properties.output_images[].digest`.

ACR Tasks left azure-mgmt-containerregistry in 15.0; `azure-mgmt-containerregistrytasks` 1.0.0b1
(api-version 2025-03-01-preview) is the SDK for it. The build runs in the registry's home region.
`start`, `state`, `cancel`, `failure` and `digest_of` are public so that a deferrable trigger
(fanout.airflow.triggers.AcrRunTrigger) can follow a run the worker started.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from azure.mgmt.containerregistrytasks import ContainerRegistryTasksMgmtClient
from azure.mgmt.containerregistrytasks.models import (
    Credentials,
    EncodedTaskRunRequest,
    PlatformProperties,
    SourceRegistryCredentials,
)
from azure.storage.blob import BlobClient

from fanout.adapters.azure_credentials import call, client_options, describe
from fanout.adapters.build_context import pack_context
from fanout.adapters.builder import BuildError
from fanout.policy import DIGEST
from fanout.redact import scrub

TERMINAL = ("Succeeded", "Failed", "Canceled", "Error", "Timeout")


@dataclass(frozen=True)
class RunState:
    run_id: str
    status: str  # Queued, Started, Running, Succeeded, Failed, Canceled, Error, Timeout
    digest: str | None = None
    images: tuple[str, ...] = ()
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def image_name(destination: str) -> str:
    """`repo:tag` from `host/repo:tag`: ACR Tasks pushes to its own registry by relative name."""
    first, _, rest = destination.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return rest
    return destination


def run_log_link(subscription: str, resource_group: str, registry: str, run_id: str) -> str:
    """Where a person reads a run's log (az CLI and the run's ARM id for the portal); needs no client,
    so a failure report can name it even when the run could not be read."""
    rid = (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
        f"Microsoft.ContainerRegistry/registries/{registry}/runs/{run_id}"
    )
    return f"az acr task logs --registry {registry} --run-id {run_id}  (run {rid})"


class AcrTasksBuilder:
    """Quick builds on one registry. `progress` receives one line per status change and per minute."""

    def __init__(
        self,
        credential: TokenCredential,
        subscription: str,
        resource_group: str,
        registry: str,
        *,
        base_url: str | None = None,
        connection_verify: str | bool | None = None,
        dockerfile: str = "Containerfile",
        platform: str = "linux/amd64",
        build_timeout_seconds: int = 3600,
        poll_seconds: float = 5.0,
        progress: Callable[[str], None] | None = None,
        push_as_caller: Callable[[], bool] | None = None,
        **options: Any,
    ) -> None:
        self.subscription, self.resource_group, self.registry = subscription, resource_group, registry
        self.dockerfile, self.build_timeout_seconds, self.poll_seconds = dockerfile, build_timeout_seconds, poll_seconds
        self.os, _, self.architecture = platform.partition("/")
        self.progress = progress or (lambda line: None)
        # Asked when a build starts: is the registry in ABAC repository-permission mode?
        self.push_as_caller = push_as_caller or (lambda: False)
        self._verify = connection_verify
        self._options = options
        self._client = ContainerRegistryTasksMgmtClient(
            credential,
            subscription,
            **client_options(base_url=base_url, connection_verify=connection_verify, **options),
        )

    @property
    def _where(self) -> str:
        return f"ACR Tasks on registry '{self.registry}'"

    def close(self) -> None:
        self._client.close()

    def run_link(self, run_id: str) -> str:
        return run_log_link(self.subscription, self.resource_group, self.registry, run_id)

    def upload_context(self, context: Path) -> str:
        """Upload the packed context; returns the relative path a build request refers to."""
        try:
            archive = pack_context(context, self.dockerfile)
        except (OSError, ValueError) as err:
            raise BuildError(f"cannot pack the build context {context}: {err}") from None
        upload = call(
            self._where,
            "getting a build-source upload URL",
            self._client.registries.get_build_source_upload_url,
            self.resource_group,
            self.registry,
        )
        if not upload.upload_url or not upload.relative_path:
            raise BuildError(f"{self._where}: listBuildSourceUploadUrl gave no upload URL or relative path")
        blob = BlobClient.from_blob_url(upload.upload_url, **self._blob_options())
        try:
            with blob:
                blob.upload_blob(archive, blob_type="BlockBlob", overwrite=True)
        except (AzureError, OSError, TypeError) as err:
            # TypeError: azure-storage-blob 12.31.1 fails that way on an error body without <Message>.
            cause = describe(err)[0]
        else:
            self.progress(f"uploaded the build context ({len(archive)} bytes) to {upload.relative_path}")
            return upload.relative_path
        # The SAS signature is a credential; scrub() drops it from the cause.
        raise BuildError(scrub(f"{self._where}: uploading the build context failed: {cause}"))

    def _blob_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self._options.items() if k.startswith("retry_")}
        if "timeout" in self._options:
            out["connection_timeout"] = out["read_timeout"] = self._options["timeout"]
        if self._verify is not None:
            out["connection_verify"] = self._verify
        return out

    def task_yaml(self, image: str, labels: dict[str, str]) -> str:
        """The ACR task that builds the uploaded context with `labels` and pushes `image`. A quick
        build (DockerBuildRequest) cannot set labels; an encoded task's `build` step takes docker's."""
        args = ["-t", f"{{{{.Run.Registry}}}}/{image}", "-f", self.dockerfile]
        args += [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
        build = " ".join(shlex.quote(a) for a in args) + " ."
        return f"version: v1.1.0\nsteps:\n  - build: {build}\n  - push: [{json.dumps('{{.Run.Registry}}/' + image)}]\n"

    def start(self, context: Path, destination: str, labels: dict[str, str] | None = None) -> str:
        """Upload the context and schedule a build that pushes `destination`; returns the run id."""
        image = image_name(destination)
        source = self.upload_context(context)
        task = self.task_yaml(image, labels or {})
        request = EncodedTaskRunRequest(
            encoded_task_content=base64.b64encode(task.encode()).decode(),
            source_location=source,
            platform=PlatformProperties(os=self.os.capitalize(), architecture=self.architecture or None),
            timeout=self.build_timeout_seconds,
        )
        if self.push_as_caller():
            # `az acr build --source-acr-auth-id [caller]`: in ABAC repository-permission mode the
            # run's own registry token has no repository rights and its push is refused, so the run
            # logs in as the caller (who then needs Repository Writer on the app's repository). In
            # the legacy mode the run's own token pushes, and the caller needs no push right.
            caller = SourceRegistryCredentials(identity="[caller]", login_mode="Default")
            request.credentials = Credentials(source_registry=caller)
        run = call(
            self._where, f"scheduling a build of {image}", self._client.registries.schedule_run,
            self.resource_group, self.registry, request,
        )  # fmt: skip
        run_id = run.properties.run_id if run.properties else None
        if not run_id:
            raise BuildError(f"{self._where}: scheduleRun returned no run id")
        self.progress(f"run {run_id} scheduled for {image}; log: {self.run_link(run_id)}")
        return run_id

    def state(self, run_id: str) -> RunState:
        get = self._client.runs.get
        run = call(self._where, f"reading run {run_id}", get, self.resource_group, self.registry, run_id)
        props = run.properties
        status = str(getattr(props.status, "value", props.status)) if props and props.status else "Unknown"
        outputs = (props.output_images if props else None) or []
        images = tuple(f"{o.repository}:{o.tag}@{o.digest}" for o in outputs)
        digests = [o.digest for o in outputs if o.digest]
        error = props.run_error_message if props else None
        return RunState(run_id, status, digests[0] if digests else None, images, error)

    def cancel(self, run_id: str) -> bool:
        """Ask ACR to cancel the run; False if it could not be asked. Whoever cancels fails the build
        either way, and a run we failed to cancel still ends at its own `timeout`."""
        try:
            self._client.runs.cancel(self.resource_group, self.registry, run_id)
        except (AzureError, OSError):
            return False
        return True

    def log_tail(self, run_id: str, lines: int = 30) -> str:
        """The end of the run's log, or '' when it cannot be read (a failure report must not fail)."""
        try:
            result = self._client.runs.get_log_sas_url(self.resource_group, self.registry, run_id)
            if not result.log_link:
                return ""
            with BlobClient.from_blob_url(result.log_link, **self._blob_options()) as blob:
                text = blob.download_blob().readall().decode("utf-8", "replace")
        except (AzureError, OSError):
            return ""
        return scrub("\n".join(text.splitlines()[-lines:]))

    def failure(self, state: RunState, tail: str = "") -> str:
        """Why a run that ended other than Succeeded failed, and where its whole log is."""
        return (
            f"{self._where}: run {state.run_id} ended {state.status}"
            + (f": {state.error}" if state.error else "")
            + f"\nlog: {self.run_link(state.run_id)}"
            + (f"\nlast lines of the log:\n{tail}" if tail else "")
        )

    def digest_of(self, state: RunState) -> str:
        """The digest a Succeeded run pushed; a run that reports none cannot pin a release."""
        if not state.digest or not DIGEST.match(state.digest):
            images = state.images
            raise BuildError(f"{self._where}: run {state.run_id} succeeded but reported no image digest ({images})")
        return state.digest
