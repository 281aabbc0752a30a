"""The build step without Airflow: which commit the run releases, and which digest is that commit.

1. resolve `git_sha` on the repository (full sha, reachable from `source_ref`) — refused otherwise;
2. a CI-built image (`image: sha256:…`) is released only if its revision label is that commit;
3. an image already in the home registry under the tag <full sha> whose revision label is that
   commit is reused: a cleared build, a re-triggered merge or a repair never builds twice;
4. otherwise the commit is exported into a fresh folder and built there, labelled and tagged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fanout.adapters.git_source import Commit, SourceError
from fanout.fleet import AppSource
from fanout.provenance import build_labels, ci_image_problem, reusable
from fanout.records import Release


class LabelReader(Protocol):
    def image_labels(self, repository: str, reference: str) -> tuple[str, dict[str, str]] | None: ...


class Source(Protocol):
    def resolve(self, git_sha: str, ref: str) -> Commit: ...
    def export(self, commit: Commit, path: str) -> Any: ...


def context_path(source: AppSource) -> str:
    return source.git.context_path if source.git else ""


def ci_image(home: LabelReader, repository: str, digest: str, commit: Commit, allow_unlabelled: bool) -> Release:
    """The CI-built `digest` as this run's release, if its labels say it is `commit`."""
    found = home.image_labels(repository, digest)
    if found is None:
        raise SourceError(f"image: {digest} is not in the home registry's {repository}")
    problem = ci_image_problem(found[1], commit.sha, digest, allow_unlabelled)
    if problem:
        raise SourceError(problem)
    return Release(digest, repository, None, commit.sha, commit.ref, commit.url, built=False)


def previous_build(home: LabelReader, repository: str, commit: Commit) -> Release | None:
    """The image an earlier run built from `commit`, if the registry still has it under its tag."""
    found = home.image_labels(repository, commit.sha)
    if found is None or not reusable(found[1], commit.sha):
        return None
    return Release(found[0], repository, commit.sha, commit.sha, commit.ref, commit.url, built=False)


def build_commit(
    source: Source,
    app_source: AppSource,
    commit: Commit,
    repository: str,
    build: Callable[[Path, dict[str, str]], str],
) -> Release:
    """Export `commit` and run `build(context, labels) -> digest` on it."""
    with source.export(commit, context_path(app_source)) as context:
        digest = build(context, build_labels(commit.sha, commit.url))
    return Release(digest, repository, commit.sha, commit.sha, commit.ref, commit.url, built=True)
