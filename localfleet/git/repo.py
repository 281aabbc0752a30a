"""The local fleet's app repository: served by localfleet.git.server, written by pushes.

`up` starts the server for a fleet whose `app.source.git.url` is a loopback http:// URL and
creates the bare repository it names, seeded with include/app. `publish` commits a folder into
the repository the way a developer merges: a new commit on the branch only when the tree changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from fanout.adapters.git_source import GitRepository
from fanout.fleet import Fleet, GitSource
from localfleet import procs

REPO = Path(__file__).resolve().parents[2]
PROC = "git-server"
SAMPLE_APP = REPO / "include" / "app"
# Server settings: what GitHub allows too (fetch by id, partial fetches); no force-push.
SERVER_CONFIG = {
    "uploadpack.allowReachableSHA1InWant": "true",
    "uploadpack.allowFilter": "true",
    "http.receivepack": "true",
    "receive.denyNonFastForwards": "true",
}
AUTHOR = {"GIT_AUTHOR_NAME": "Fanout demo", "GIT_AUTHOR_EMAIL": "demo@fanout.invalid"}
AUTHOR |= {"GIT_COMMITTER_NAME": AUTHOR["GIT_AUTHOR_NAME"], "GIT_COMMITTER_EMAIL": AUTHOR["GIT_AUTHOR_EMAIL"]}


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()[-600:]}")
    return done.stdout.strip()


def local_source(fleet: Fleet) -> GitSource | None:
    """The fleet's git source when the local fleet serves it (loopback http), else None."""
    source = fleet.app.source.git
    if source is None or urlsplit(source.url).scheme != "http":
        return None
    return source


def root(state: Path) -> Path:
    return state / "git"


def ensure_repository(state: Path, url: str) -> Path:
    """The bare repository `url` names under the server's root, created if missing."""
    bare = root(state) / urlsplit(url).path.strip("/")
    if not (bare / "HEAD").exists():
        bare.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "--initial-branch=main", str(bare))
        for key, value in SERVER_CONFIG.items():
            git("--git-dir", str(bare), "config", key, value)
    return bare


def start(state: Path, url: str, credentials: tuple[str, str] | None = None) -> None:
    """Serve the bare repository `url` names (created if missing) on its loopback port; with
    `credentials` (login, password) every request must authenticate, as a private repository's."""
    parsed = urlsplit(url)
    ensure_repository(state, url)
    argv = [sys.executable, "-m", "localfleet.git.server", "--root", str(root(state)), "--port", str(parsed.port)]
    if credentials:
        secret = state / "git-credentials"
        secret.touch(mode=0o600)
        secret.write_text(":".join(credentials) + "\n")
        argv += ["--credentials", str(secret)]
    env = {"PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    ready = lambda: procs.port_open(parsed.hostname, parsed.port)  # noqa: E731
    procs.start(PROC, argv, state, env=env, cwd=REPO, ready=ready, timeout=20)


def start_server(fleet: Fleet, state: Path) -> None:
    """Serve the fleet's app repository, seeded with include/app when it has no main branch yet."""
    source = local_source(fleet)
    if source is None:
        return
    start(state, source.url)
    if not branch_tip(source.url, "main"):
        publish(source, SAMPLE_APP, "the sample app (include/app)")


def stop_server(state: Path) -> None:
    procs.stop(PROC, state)


def branch_tip(url: str, branch: str, auth: tuple[str, str] | None = None) -> str | None:
    out = git("ls-remote", url, f"refs/heads/{branch}", env=GitRepository(url, auth).git_env())
    return out.split()[0] if out else None


def publish(
    source: GitSource, folder: Path, message: str, branch: str = "main", auth: tuple[str, str] | None = None
) -> tuple[str, bool]:
    """Commit `folder` as `source.path` of `branch` and push it. Returns (commit, created): when the
    tree is the branch tip's already, that tip and False: an unchanged app is no new commit."""
    env = GitRepository(source.url, auth).git_env()
    with tempfile.TemporaryDirectory(prefix="fanout-publish-") as tmp:
        work = Path(tmp)
        git("init", "-q", "--initial-branch", branch, cwd=work, env=env)
        parent = branch_tip(source.url, branch, auth)
        if parent:
            git("fetch", "-q", "--depth", "1", source.url, f"refs/heads/{branch}", cwd=work, env=env)
            git("checkout", "-q", "FETCH_HEAD", cwd=work, env=env)
        target = work / source.context_path
        for old in [target] if source.context_path else [p for p in work.iterdir() if p.name != ".git"]:
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        shutil.copytree(folder, target, dirs_exist_ok=True)
        git("add", "-A", cwd=work, env=env)
        tree = git("write-tree", cwd=work, env=env)
        if parent and git("rev-parse", "FETCH_HEAD^{tree}", cwd=work, env=env) == tree:
            return parent, False
        parents = ["-p", parent] if parent else []
        sha = git("commit-tree", tree, *parents, "-m", message, cwd=work, env={**env, **AUTHOR})
        git("push", "-q", source.url, f"{sha}:refs/heads/{branch}", cwd=work, env=env)
        return sha, True


def commit_app(source: GitSource, version: str, containerfile: str | None = None, branch: str = "main") -> str:
    """Commit include/app with VERSION `version` (and `containerfile` instead of its own, when given)
    to `branch`, as a merge would; the commit's full sha. A new version is a new digest to build."""
    with tempfile.TemporaryDirectory(prefix="fanout-commit-") as tmp:
        app = Path(tmp) / "app"
        shutil.copytree(SAMPLE_APP, app)
        (app / "VERSION").write_text(f"{version}\n")
        if containerfile is not None:
            (app / "Containerfile").write_text(containerfile)
        return publish(source, app, f"the app at version {version}", branch=branch)[0]
