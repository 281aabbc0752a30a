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

from fanout.fleet import Fleet, GitSource
from localfleet import procs

REPO = Path(__file__).resolve().parents[2]
PROC = "git-server"
SAMPLE_APP = REPO / "include" / "app"
# Fixed identity and dates only where they make commits reproducible for tests; people's
# commits keep theirs. Server settings: what GitHub allows too (fetch by id, partial fetches).
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


def start_server(fleet: Fleet, state: Path) -> None:
    source = local_source(fleet)
    if source is None:
        return
    parsed = urlsplit(source.url)
    ensure_repository(state, source.url)
    argv = [sys.executable, "-m", "localfleet.git.server", "--root", str(root(state)), "--port", str(parsed.port)]
    env = {"PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    ready = lambda: procs.port_open(parsed.hostname, parsed.port)  # noqa: E731
    procs.start(PROC, argv, state, env=env, cwd=REPO, ready=ready, timeout=20)
    if not branch_tip(source.url, "main"):
        publish(source, SAMPLE_APP, "the sample app (include/app)")


def stop_server(state: Path) -> None:
    procs.stop(PROC, state)


def branch_tip(url: str, branch: str) -> str | None:
    out = git("ls-remote", url, f"refs/heads/{branch}")
    return out.split()[0] if out else None


def publish(source: GitSource, folder: Path, message: str, branch: str = "main") -> tuple[str, bool]:
    """Commit `folder` as `source.path` of `branch` and push it. Returns (commit, created): when the
    tree is the branch tip's already, that tip and False: an unchanged app is no new commit."""
    with tempfile.TemporaryDirectory(prefix="fanout-publish-") as tmp:
        work = Path(tmp)
        git("init", "-q", "--initial-branch", branch, cwd=work)
        parent = branch_tip(source.url, branch)
        if parent:
            git("fetch", "-q", "--depth", "1", source.url, f"refs/heads/{branch}", cwd=work)
            git("checkout", "-q", "FETCH_HEAD", cwd=work)
        target = work / source.context_path if source.context_path else work
        if target.exists() and target != work:
            shutil.rmtree(target)
        shutil.copytree(folder, target, dirs_exist_ok=True)
        git("add", "-A", cwd=work)
        tree = git("write-tree", cwd=work)
        if parent and git("rev-parse", "FETCH_HEAD^{tree}", cwd=work) == tree:
            return parent, False
        env = {**AUTHOR, "PATH": "/usr/bin:/bin"}
        sha = git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, cwd=work, env=env)
        git("push", "-q", source.url, f"{sha}:refs/heads/{branch}", cwd=work)
        return sha, True
