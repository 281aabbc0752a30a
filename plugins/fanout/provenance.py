"""Which commit an image is: the OCI labels a release build writes, and the rule a release applies
to an image it did not build. Pure functions; the registry adapters read the labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REVISION = "org.opencontainers.image.revision"
SOURCE = "org.opencontainers.image.source"


def build_labels(sha: str, url: str) -> dict[str, str]:
    """The labels every release build writes: the full commit and the repository (no credentials)."""
    return {REVISION: sha, SOURCE: url}


def config_labels(config: Mapping[str, Any]) -> dict[str, str]:
    """The labels of an image config blob (OCI and Docker both keep them under config.Labels)."""
    return dict((config.get("config") or {}).get("Labels") or {})


def reusable(labels: Mapping[str, str] | None, sha: str) -> bool:
    """May an image found under the tag `sha` be released instead of building `sha` again? Only when
    it says it is that commit: a tag can be pushed by anyone, a label mismatch means a foreign image."""
    return labels is not None and labels.get(REVISION) == sha


def ci_image_problem(labels: Mapping[str, str], sha: str, digest: str, allow_unlabelled: bool) -> str | None:
    """Why a CI-built image may not be released as commit `sha`, or None when it may."""
    revision = labels.get(REVISION)
    if revision is None:
        if allow_unlabelled:
            return None
        return (
            f"image: {digest} has no {REVISION} label, so nothing says it is git_sha {sha}; label it in CI "
            "or set app.source.allow_unlabelled_images"
        )
    if revision != sha:
        return f"image: {digest} is labelled as commit {revision}, but this run releases git_sha {sha}"
    return None
