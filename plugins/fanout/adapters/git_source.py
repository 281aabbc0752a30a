"""The release's source: the commit `git_sha` names, fetched from the fleet's git repository.

`resolve` answers which full commit a (possibly short) `git_sha` is, and refuses one that is not
reachable from `source_ref`, before anything changes. It reads only the ref's commit graph
(`--filter=tree:0`: commits, no trees or files), which is what lets a short sha be resolved: the
git protocol has no way to ask a server to expand an abbreviation. `export` then fetches that one
commit (`--depth 1`) into a fresh temporary repository and writes the build context's folder of
it, so nothing of the worker's own checkout or of an earlier build can leak into the image.

The credential (an Airflow connection's login and password, for a private repository) reaches
git through the environment as an `http.extraHeader`: not on a command line (`ps` shows those),
not in a URL (git echoes URLs in errors), and only to the repository's own host.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


class SourceError(RuntimeError):
    """The commit cannot be used as the release's source; the message names the field."""


@dataclass(frozen=True)
class Commit:
    sha: str  # full 40-hex
    ref: str  # the branch or tag it was found on (as the run named it)
    url: str  # the repository, without credentials


@dataclass(frozen=True)
class GitRepository:
    url: str
    credential: tuple[str, str] | None = field(default=None, repr=False)
    timeout_seconds: float = 600

    def git_env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/nonexistent"),
            "GIT_TERMINAL_PROMPT": "0",  # a missing credential fails instead of waiting for a person
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",  # no helper or rewrite of the worker's user applies
        }
        if self.credential:
            token = base64.b64encode(":".join(self.credential).encode()).decode()
            env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader"}
            env["GIT_CONFIG_VALUE_0"] = f"Authorization: Basic {token}"
        return env

    def _git(self, *args: str, cwd: Path | None = None, what: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=cwd,
                env=self.git_env(),
                capture_output=True,
                text=True,
                timeout=self.timeout_seconds,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(f"{what}: no answer within {self.timeout_seconds:.0f} s from {self.url}") from None
        if done.returncode != 0:
            raise SourceError(f"{what}: {self._scrub(done.stderr.strip())[-600:]}")
        return done.stdout.strip()

    def _scrub(self, text: str) -> str:
        for secret in self.credential or ():
            if secret:
                text = text.replace(secret, "***")
        return text

    def _ref_name(self, ref: str) -> str:
        """The full name of branch or tag `ref` on the server; SourceError when it has neither."""
        where = "app.source.git.url" + (" / conn_id" if self.credential else " (a private one needs conn_id)")
        listed = self._git("ls-remote", self.url, what=f"{where}: cannot read the repository {self.url}")
        names = {line.split("\t", 1)[1] for line in listed.splitlines() if "\t" in line}
        for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if candidate in names and candidate.startswith("refs/"):
                return candidate
        raise SourceError(f"source_ref: '{ref}' is neither a branch nor a tag of {self.url}")

    def resolve(self, git_sha: str, ref: str) -> Commit:
        """The full commit `git_sha` names, if it is `ref` or one of its ancestors."""
        refname = self._ref_name(ref)
        with tempfile.TemporaryDirectory(prefix="fanout-resolve-") as tmp:
            work = Path(tmp)
            self._git("init", "-q", "--bare", cwd=work, what="git init")
            self._git(
                "fetch", "-q", "--no-tags", "--filter=tree:0", self.url, f"+{refname}:refs/fanout/ref", cwd=work,
                what=f"source_ref: cannot fetch '{ref}' of {self.url}",
            )  # fmt: skip
            refuse = SourceError(
                f"git_sha: {git_sha} is not a commit reachable from source_ref '{ref}' of {self.url} "
                "(no such commit, or only on another branch)"
            )
            found = subprocess.run(
                ["git", "rev-parse", "--verify", "--quiet", f"{git_sha}^{{commit}}"],
                cwd=work, env=self.git_env(), capture_output=True, text=True,
            )  # fmt: skip
            full = found.stdout.strip()
            if found.returncode != 0 or not FULL_SHA.match(full):
                if "ambiguous" in found.stderr:
                    raise SourceError(f"git_sha: {git_sha} is ambiguous in {self.url}; give more of it")
                raise refuse
            ancestor = subprocess.run(
                ["git", "merge-base", "--is-ancestor", full, "refs/fanout/ref"], cwd=work, env=self.git_env()
            )
            if ancestor.returncode != 0:
                raise refuse
        return Commit(full, ref, self.url)

    @contextmanager
    def export(self, commit: Commit, path: str) -> Iterator[Path]:
        """A fresh folder holding `path` of exactly `commit` (no .git), removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="fanout-source-") as tmp:
            repo, tree = Path(tmp) / "repo", Path(tmp) / "context"
            repo.mkdir()
            tree.mkdir()
            self._git("init", "-q", "--bare", cwd=repo, what="git init")
            self._git(
                "fetch", "-q", "--no-tags", "--depth", "1", self.url, commit.sha, cwd=repo,
                what=f"git_sha: cannot fetch {commit.sha} from {self.url}",
            )  # fmt: skip
            spec = f"{commit.sha}:{path}" if path else commit.sha
            archive = Path(tmp) / "context.tar"
            self._git(
                "archive", "--format=tar", "-o", str(archive), spec, cwd=repo,
                what=f"app.source.git.path: '{path}' is not a folder of commit {commit.sha}",
            )  # fmt: skip
            with tarfile.open(archive) as tar:
                tar.extractall(tree, filter="tar")
            yield tree


@dataclass(frozen=True)
class DevDirectory:
    """Development mode (`app.source.directory`): build a folder of a git checkout, but only when the
    checkout is clean and at exactly `git_sha`; otherwise the image would not be what the run names."""

    folder: Path

    def _git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(self.folder), *args], capture_output=True, text=True, timeout=60)

    def resolve(self, git_sha: str, ref: str) -> Commit:
        where = f"app.source.directory ({self.folder})"
        head = self._git("rev-parse", "HEAD")
        if head.returncode != 0:
            raise SourceError(f"{where}: not in a git checkout, so git_sha {git_sha} cannot be verified")
        full = head.stdout.strip()
        if not full.startswith(git_sha):
            raise SourceError(f"{where}: the checkout is at {full}, not git_sha {git_sha}")
        dirty = self._git("status", "--porcelain", "--untracked-files=all", "--", ".")
        if dirty.returncode != 0 or dirty.stdout.strip():
            changed = ", ".join(line[3:] for line in dirty.stdout.splitlines()[:5])
            raise SourceError(f"{where}: has changes not in git_sha {git_sha} ({changed}); commit them")
        url = self._git("remote", "get-url", "origin").stdout.strip() or f"file://{self.folder}"
        return Commit(full, ref, re.sub(r"//[^/@]*@", "//", url))  # a label must not carry credentials

    @contextmanager
    def export(self, commit: Commit, path: str) -> Iterator[Path]:
        yield self.folder
