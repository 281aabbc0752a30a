"""The local fleet's git server (git http-backend behind localfleet.git.server) and the release's
git adapter against it: real git on both sides, over HTTP on loopback, as a release fetches."""

from __future__ import annotations

import pytest

from fanout.adapters.git_source import GitRepository, SourceError
from fanout.fleet import GitSource
from localfleet import procs
from localfleet.git import repo

SECRET = ("fanout-ci", "s3cr3t-t0ken-value")


@pytest.fixture
def server(tmp_path):
    """(source, state) of a fresh server on a free port; with `auth` in the request, a private one."""
    started = []

    def start(auth: tuple[str, str] | None = None) -> GitSource:
        state = tmp_path / "state"
        source = GitSource(url=f"http://127.0.0.1:{procs.free_port()}/team/app.git", path="app")
        repo.start(state, source.url, auth)
        started.append(state)
        return source

    yield start
    for state in started:
        repo.stop_server(state)


def app_version(tmp_path, version: str):
    folder = tmp_path / f"app-{version}"
    folder.mkdir()
    (folder / "Containerfile").write_text("FROM scratch\nCOPY VERSION /\n")
    (folder / "VERSION").write_text(version + "\n")
    return folder


def test_publish_commits_only_a_changed_tree(server, tmp_path):
    source = server()
    first, created = repo.publish(source, app_version(tmp_path, "1"), "one")
    assert created and len(first) == 40
    assert repo.publish(source, tmp_path / "app-1", "again") == (first, False)
    second, created = repo.publish(source, app_version(tmp_path, "2"), "two")
    assert created and second != first and repo.branch_tip(source.url, "main") == second


def test_a_short_sha_resolves_to_the_full_commit_and_exports_exactly_its_tree(server, tmp_path):
    source = server()
    first, _ = repo.publish(source, app_version(tmp_path, "1"), "one")
    repo.publish(source, app_version(tmp_path, "2"), "two")
    git = GitRepository(source.url)
    commit = git.resolve(first[:7], "main")
    assert (commit.sha, commit.ref, commit.url) == (first, "main", source.url)
    with git.export(commit, source.context_path) as tree:
        # The first commit's files, not main's newer ones, and nothing of git itself.
        assert (tree / "VERSION").read_text() == "1\n"
        assert sorted(p.name for p in tree.iterdir()) == ["Containerfile", "VERSION"]
    assert not tree.exists(), "the temporary tree is removed after the build"


def test_unknown_and_other_branch_commits_are_refused_naming_sha_ref_and_repository(server, tmp_path):
    source = server()
    repo.publish(source, app_version(tmp_path, "1"), "one")
    side, _ = repo.publish(source, app_version(tmp_path, "side"), "side", branch="feature")
    git = GitRepository(source.url)
    for sha in ("0" * 40, "abcdef1", side):
        with pytest.raises(SourceError) as refused:
            git.resolve(sha, "main")
        message = str(refused.value)
        assert message.startswith(f"git_sha: {sha} is not a commit reachable from source_ref 'main'"), message
        assert source.url in message
    assert git.resolve(side[:8], "feature").sha == side, "the same commit is fine from its own branch"
    with pytest.raises(SourceError, match="source_ref: 'nope' is neither a branch nor a tag of"):
        git.resolve(side, "nope")


def test_a_missing_folder_of_the_commit_names_the_path(server, tmp_path):
    source = server()
    sha, _ = repo.publish(source, app_version(tmp_path, "1"), "one")
    git = GitRepository(source.url)
    with (
        pytest.raises(SourceError, match=r"app\.source\.git\.path: 'web' is not a folder of commit"),
        git.export(git.resolve(sha, "main"), "web"),
    ):
        pass


def test_a_private_repository_needs_the_credential_and_never_echoes_it(server, tmp_path):
    source = server(SECRET)
    sha, _ = repo.publish(source, app_version(tmp_path, "1"), "one", auth=SECRET)
    with pytest.raises(SourceError) as refused:
        GitRepository(source.url).resolve(sha, "main")
    assert str(refused.value).startswith("app.source.git.url (a private one needs conn_id): cannot read"), refused.value
    wrong = (SECRET[0], "wrong-" + SECRET[1])
    with pytest.raises(SourceError, match="conn_id: cannot read the repository") as refused:
        GitRepository(source.url, wrong).resolve(sha, "main")
    assert wrong[1] not in str(refused.value) and SECRET[1] not in str(refused.value)
    git = GitRepository(source.url, SECRET)
    assert SECRET[1] not in repr(git)
    commit = git.resolve(sha[:10], "main")
    with git.export(commit, "app") as tree:
        assert (tree / "VERSION").read_text() == "1\n"
