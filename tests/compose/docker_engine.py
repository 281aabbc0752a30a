"""A private Docker engine for the compose test, and the local base images it builds on.

Debian's dockerd runs as root with its own socket, exec-root and pidfile under a private run
folder, and no say over the host's network (no iptables rules, no NAT, no default bridge), so
seven engineers' runs and the host stay apart. Its data-root, the image and layer cache, lives
in ~/.cache/fanout/compose (FANOUT_CACHE) and is used by one engine at a time (a lock file):
that is what keeps a warm run from rebuilding anything. Containers, volumes and networks never
outlive a run; `stop` checks it and removes the run folder, its mounts and the engine's processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from localfleet import procs

HERE = Path(__file__).parent
REPO = HERE.parents[1]
DOCKER = "/usr/bin/docker"  # Debian's client; another `docker` may come first on PATH
CACHE = Path(os.environ.get("FANOUT_CACHE", Path.home() / ".cache" / "fanout")) / "compose"
CA_CERTS = Path("/usr/local/share/ca-certificates")
SUITE = "bookworm"
# Machine limits: root cannot raise the open-files limit above 20000 here.
DOCKERD_FLAGS = (
    "--iptables=false",
    "--ip6tables=false",
    "--ip-masq=false",
    "--bridge=none",
    "--storage-driver=overlay2",
    "--exec-opt=native.cgroupdriver=cgroupfs",
    "--default-ulimit=nofile=20000:20000",
)


class EngineError(RuntimeError):
    pass


def mounts_under(*folders: Path) -> list[str]:
    """Mount points at or below any of the folders (overlays, shm, netns of the engine)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(f) or point.startswith(f"{f}/") for f in folders):
            found.append(point)
    return found


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


class Engine:
    """dockerd on a private socket; `run(…)` runs a docker/docker-compose command against it."""

    def __init__(self, data_root: Path = CACHE / "docker", progress: Callable[[str], None] = print):
        self.data_root = data_root
        self.progress = progress
        # Short: the socket paths below it must fit a sockaddr_un (108 bytes).
        self.run_dir = Path(tempfile.mkdtemp(prefix="fanout-compose-", dir="/tmp"))
        self.socket = self.run_dir / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        self.env.pop("DOCKER_CONFIG", None)
        self._lock: int | None = None
        self._dockerd: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.data_root.parent / "docker.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.progress(f"another compose test holds {self.data_root}; waiting for it")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        (self.run_dir / "daemon.json").write_text("{}")  # never the host's /etc/docker/daemon.json
        argv = [
            "dockerd",
            f"--host=unix://{self.socket}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.run_dir / 'dockerd.pid'}",
            f"--config-file={self.run_dir / 'daemon.json'}",
            *DOCKERD_FLAGS,
        ]
        log = (self.run_dir / "dockerd.log").open("ab")
        self._dockerd = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while subprocess.run([DOCKER, "version"], env=self.env, capture_output=True).returncode != 0:
            if self._dockerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"dockerd did not come up; its log:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        path = self.run_dir / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def run(self, *argv: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        """`docker …` (or `docker-compose …` when argv starts with it) against this engine."""
        command = list(argv) if argv[0] == "docker-compose" else [DOCKER, *argv]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise EngineError(f"{' '.join(command[:4])} … failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and non-default networks the engine still has."""
        found = {
            "containers": self.run("ps", "-aq").stdout.split(),
            "volumes": self.run("volume", "ls", "-q").stdout.split(),
            "networks": self.run("network", "ls", "--format", "{{.Name}}").stdout.split(),
        }
        found["networks"] = [n for n in found["networks"] if n not in ("host", "none")]
        return {kind: names for kind, names in found.items() if names}

    def stop(self) -> None:
        """Remove what a failed run left, stop dockerd and its containerd, unmount, delete the run
        folder. Safe to call after a failed or partial start."""
        try:
            if self._dockerd and self._dockerd.poll() is None:
                with contextlib.suppress(Exception):
                    for kind, names in self.leftovers().items():
                        self.progress(f"removing leftover {kind}: {' '.join(names)}")
                        remove = {"containers": ("rm", "-fv"), "volumes": ("volume", "rm", "-f")}
                        self.run(*remove.get(kind, ("network", "rm")), *names, check=False)
                self._dockerd.send_signal(signal.SIGTERM)
                try:
                    self._dockerd.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self._dockerd.pid, signal.SIGKILL)
                    self._dockerd.wait()
            # If dockerd died hard its containerd-shims live on, each with a container under it:
            # killing the container's first process ends its pid namespace, then the shim.
            for shim in procs.pids_mentioning(self.run_dir):
                for pid in (*_children(shim), shim):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for point in sorted(mounts_under(self.run_dir, self.data_root), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    # --- images -----------------------------------------------------------------------------------

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def image_size(self, tag: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", tag).stdout)

    def build(self, tag: str, context: Path, dockerfile: Path | None = None, **args: str) -> None:
        argv = ["build", "--network", "host", "-q", "-t", tag]
        if dockerfile:
            argv += ["-f", str(dockerfile)]
        for name, value in args.items():
            argv += ["--build-arg", f"{name}={value}"]
        self.run(*argv, str(context), timeout=3600)


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _files(folder: Path) -> list[bytes]:
    return [p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() for p in sorted(folder.rglob("*"))]


def debian_image(engine: Engine) -> str:
    """A bookworm minbase root filesystem from the Debian mirror, imported as an image. The tar
    is kept in the cache too, so a lost data-root does not cost a second mmdebstrap."""
    key = _digest([SUITE.encode(), b"minbase", subprocess.run(["mmdebstrap", "--version"], capture_output=True).stdout])
    tag = f"fanout-local/debian:{SUITE}-{key}"
    if engine.has_image(tag):
        return tag
    tar = CACHE / f"debian-{SUITE}-{key}.tar"
    if not tar.exists():
        engine.progress(f"mmdebstrap {SUITE} (minbase) → {tar.name}")
        partial = tar.with_name(f"{tar.stem}.partial.tar")  # mmdebstrap goes by the suffix
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--include=ca-certificates", SUITE, str(partial)],
            check=True,
            capture_output=True,
            timeout=1800,
        )
        partial.rename(tar)
    engine.run("import", str(tar), tag)
    return tag


def base_images(engine: Engine, airflow_version: str) -> dict[str, str]:
    """{airflow, postgres, golang: tag}: the stand-ins for the official images, each tagged by a
    hash of everything it is built from and built only when that tag is missing."""
    debian = debian_image(engine)
    certs = sorted(CA_CERTS.glob("*.crt"))
    go_root = Path(subprocess.run(["go", "env", "GOROOT"], capture_output=True, text=True, check=True).stdout.strip())
    extra = {
        "airflow": {"certs": certs, "constraints.txt": REPO / "constraints.txt"},
        "postgres": {},
        "golang": {"certs": certs, "go": go_root},
    }
    tags = {}
    for name, files in extra.items():
        source = HERE / "images" / name
        parts = [debian.encode(), airflow_version.encode(), *_files(source)]
        for label, path in sorted(files.items()):
            if label == "go":  # the toolchain by its version, not its 250 MB
                parts.append((path / "VERSION").read_bytes())
            elif isinstance(path, list):
                parts += [p.name.encode() + p.read_bytes() for p in path]
            else:
                parts.append(path.read_bytes())
        tag = tags[name] = f"fanout-local/{name}:{_digest(parts)}"
        if engine.has_image(tag):
            continue
        engine.progress(f"building {tag}")
        with tempfile.TemporaryDirectory(prefix="fanout-compose-ctx-") as tmp:
            context = Path(tmp)
            shutil.copytree(source, context, dirs_exist_ok=True)
            for label, path in files.items():
                if isinstance(path, list):
                    (context / label).mkdir()
                    for cert in path:
                        shutil.copy(cert, context / label / cert.name)
                elif path.is_dir():
                    shutil.copytree(path, context / label, symlinks=True)
                else:
                    shutil.copy(path, context / label)
            engine.build(tag, context, DEBIAN_IMAGE=debian, AIRFLOW_VERSION=airflow_version)
    return tags


def sizes(engine: Engine, tags: Iterable[str]) -> dict[str, str]:
    return {tag: f"{engine.image_size(tag) / 1e6:.0f} MB" for tag in tags}


def dumps(data: object) -> str:
    return json.dumps(data, indent=1, sort_keys=True)
