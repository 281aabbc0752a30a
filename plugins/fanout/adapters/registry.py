"""Does a registry replica serve a manifest? One HEAD by digest, as a pull would ask."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from fanout.fleet_checks import endpoint_host, is_loopback
from fanout.provenance import config_labels

# Distribution answers 404 for an OCI manifest unless the client says it accepts one.
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


class RegistryError(RuntimeError):
    pass


class RegistryUnusable(RegistryError):
    """An answer no amount of waiting changes (no such replica, credential refused, host unknown):
    a wait for the digest ends at once instead of at its deadline."""


def unknown_host(err: BaseException) -> bool:
    """Whether `err`, or anything it wraps, is a failed DNS lookup. Libraries wrap it differently:
    urllib in `reason`, urllib3 as NameResolutionError inside MaxRetryError.reason inside requests'
    ConnectionError.args, azure-core in `inner_exception` or as the cause."""
    pending, seen = [err], set()
    while pending:
        cur = pending.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, socket.gaierror) or type(cur).__name__ == "NameResolutionError":
            return True
        linked = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), getattr(cur, "inner_exception", None)]
        linked += list(cur.args)
        pending += [e for e in linked if isinstance(e, BaseException)]
    return False


@dataclass(frozen=True)
class OciRegistry:
    """A plain OCI distribution endpoint (host[:port]). Plain http only on loopback."""

    endpoint: str
    insecure: bool = False
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.insecure and not is_loopback(endpoint_host(self.endpoint)):
            raise RegistryError(f"registry {self.endpoint}: plain http is allowed for loopback registries only")

    @property
    def base(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.endpoint}"

    def has_manifest(self, repository: str, digest: str) -> bool:
        request = urllib.request.Request(
            f"{self.base}/v2/{repository}/manifests/{digest}", method="HEAD", headers={"Accept": MANIFEST_TYPES}
        )
        # A registry answers 5xx while a replica write is in flight (distribution rewrites the
        # link file in place); like a docker pull, ask again before calling it broken.
        for pause in (0.1, 0.5, 1.0, None):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status == 200 and response.headers.get("Docker-Content-Digest", digest) == digest
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    return False
                if err.code in (401, 403):
                    raise RegistryUnusable(
                        f"registry {self.endpoint}: HEAD manifest answered {err.code}: the registry refuses this client"
                    ) from None
                if err.code < 500 or pause is None:
                    raise RegistryError(f"registry {self.endpoint}: HEAD manifest answered {err.code}") from None
            except (urllib.error.URLError, OSError) as err:
                if unknown_host(err):
                    raise RegistryUnusable(f"registry {self.endpoint}: unknown host ({err})") from None
                raise RegistryError(f"registry {self.endpoint} unreachable: {getattr(err, 'reason', err)}") from None
            time.sleep(pause)
        raise AssertionError("unreachable")

    async def has_manifest_async(self, repository: str, digest: str) -> bool:
        return await asyncio.to_thread(self.has_manifest, repository, digest)

    def _get(self, path: str, accept: str | None = None) -> tuple[bytes, dict[str, str]] | None:
        """GET `path` under /v2/; None on 404."""
        headers = {"Accept": accept} if accept else {}
        request = urllib.request.Request(f"{self.base}/v2/{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), dict(response.headers.items())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise RegistryError(f"registry {self.endpoint}: GET {path} answered {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            raise RegistryError(f"registry {self.endpoint} unreachable: {getattr(err, 'reason', err)}") from None

    def image_labels(self, repository: str, reference: str) -> tuple[str, dict[str, str]] | None:
        """(digest, labels of the image config) of `repository:reference` (a tag or a digest);
        None when the registry has no such manifest."""
        found = self._get(f"{repository}/manifests/{reference}", MANIFEST_TYPES)
        if found is None:
            return None
        body, headers = found
        digest = headers.get("Docker-Content-Digest") or reference
        manifest = json.loads(body)
        return digest, self._labels(repository, manifest)

    def _labels(self, repository: str, manifest: dict[str, Any]) -> dict[str, str]:
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            # A multi-platform image: its platforms are built from one commit, the first one speaks for it.
            first = (manifest.get("manifests") or [{}])[0].get("digest")
            found = self._get(f"{repository}/manifests/{first}", MANIFEST_TYPES) if first else None
            if found is None:
                return {}
            manifest = json.loads(found[0])
        config = (manifest.get("config") or {}).get("digest")
        blob = self._get(f"{repository}/blobs/{config}") if config else None
        return config_labels(json.loads(blob[0])) if blob else {}

    def close(self) -> None:
        """Nothing to release (one request per call); here so every registry client closes alike."""
