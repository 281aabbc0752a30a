"""Development mode (`app.source.directory`): a folder of a git checkout is built only when the
checkout is clean and at exactly `git_sha`; anything else would ship something the run does not name."""

from __future__ import annotations

import subprocess

import pytest

from fanout.adapters.git_source import DevDirectory, SourceError


def git(*args: str, cwd) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    git("init", "-q", cwd=tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "Containerfile").write_text("FROM scratch\n")
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "one", cwd=tmp_path)
    git("remote", "add", "origin", "https://user:tok@git.example/app.git", cwd=tmp_path)
    return app, git("rev-parse", "HEAD", cwd=tmp_path)


def test_a_clean_checkout_at_the_sha_is_built(checkout):
    app, head = checkout
    commit = DevDirectory(app).resolve(head[:7], "main")
    assert commit.sha == head and commit.url == "https://git.example/app.git", "no credentials in the label"
    with DevDirectory(app).export(commit, "") as tree:
        assert tree == app


def test_another_sha_is_refused(checkout):
    app, head = checkout
    with pytest.raises(SourceError, match=rf"app.source.directory .*: the checkout is at {head}, not git_sha abcdef1"):
        DevDirectory(app).resolve("abcdef1", "main")


def test_uncommitted_changes_are_refused(checkout):
    app, head = checkout
    (app / "VERSION").write_text("edited\n")
    with pytest.raises(SourceError, match=r"has changes not in git_sha .*\(app/VERSION\); commit them"):
        DevDirectory(app).resolve(head, "main")


def test_a_folder_outside_git_is_refused(tmp_path):
    with pytest.raises(SourceError, match="not in a git checkout, so git_sha abcdef1 cannot be verified"):
        DevDirectory(tmp_path).resolve("abcdef1", "main")
