"""Build the local fleet's binaries once from the Go module proxy and cache them.

Nothing outside the package registries is reachable on our machines, so every
binary (Kubernetes, etcd, kwok, helm) is compiled from the Go module proxy. A cold
build takes tens of minutes, so results are cached outside the repository, keyed
by tool and version, and every later call only checks that the files exist.

Usage::

    from localfleet.binaries import ensure_binaries
    paths = ensure_binaries()          # {"kube-apiserver": Path(...), ...}

or ``python -m localfleet.binaries`` to build and print a table.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fanout.cache import cache_dir

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"

# Upstream builds Kubernetes with these; grpcnotrace keeps x/net/trace (and its
# global HTTP handlers) out of the binaries, selinux matches release builds.
_KUBE_TAGS = "selinux,notest,grpcnotrace"

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A tool failed to build; the message names the tool and quotes go's output."""


@dataclass(frozen=True)
class Tool:
    """One cached unit: a wrapper module whose `go build` yields one or more binaries."""

    name: str
    version: str
    module: str  # the module the wrapper requires
    packages: dict[str, str]  # binary name -> main package import path
    ldflags: tuple[str, ...] = ()
    tags: str = ""
    # Relative replace targets in the upstream go.mod point into its own repo;
    # Go ignores a dependency's replaces, so the wrapper must re-point them at
    # published versions. None means "the module has no such replaces".
    local_replace_version: str | None = None
    # Extra Go source files for the wrapper (file name -> content).
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


def _x(pkg: str, **values: str) -> tuple[str, ...]:
    return tuple(f"-X {pkg}.{k}={v}" for k, v in values.items())


def _kube_version_flags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        # "clean" and a fixed date keep the binaries reproducible; without
        # gitVersion the server says v0.0.0-master and Helm rejects charts that
        # declare a kubeVersion.
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return _x("k8s.io/component-base/version", **values) + _x("k8s.io/client-go/pkg/version", **values)


def _tools() -> list[Tool]:
    kube_minor = KUBERNETES_VERSION.lstrip("v").split(".")[1]
    kube_patch = KUBERNETES_VERSION.lstrip("v").split(".")[2]
    return [
        Tool(
            name="etcd",
            version=ETCD_VERSION,
            module="go.etcd.io/etcd/server/v3",
            # Our own main rather than the server module's: it is the same
            # one-line call into etcdmain and does not depend on upstream keeping
            # a main package at the module root.
            packages={"etcd": "."},
            local_replace_version=ETCD_VERSION,
            sources={
                "main.go": (
                    "package main\n\n"
                    'import (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
                    "func main() { etcdmain.Main(os.Args) }\n"
                )
            },
        ),
        Tool(
            name="kwok",
            version=KWOK_VERSION,
            module="sigs.k8s.io/kwok",
            packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
            ldflags=_x("sigs.k8s.io/kwok/pkg/consts", Version=KWOK_VERSION),
        ),
        Tool(
            name="kubernetes",
            version=KUBERNETES_VERSION,
            module="k8s.io/kubernetes",
            packages={
                b: f"k8s.io/kubernetes/cmd/{b}"
                for b in (
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                    "kubectl",
                )
            },
            ldflags=_kube_version_flags(KUBERNETES_VERSION),
            tags=_KUBE_TAGS,
            local_replace_version=f"v0.{kube_minor}.{kube_patch}",
        ),
        Tool(
            name="helm",
            version=HELM_VERSION,
            module="helm.sh/helm/v4",
            packages={"helm": "helm.sh/helm/v4/cmd/helm"},
            ldflags=_x(
                "helm.sh/helm/v4/internal/version",
                version=HELM_VERSION,
                gitTreeState="clean",
            ),
        ),
    ]


TOOLS: dict[str, Tool] = {t.name: t for t in _tools()}


def bin_dir() -> Path:
    return cache_dir() / "bin"


def tool_dir(tool: Tool) -> Path:
    return bin_dir() / tool.key


def _is_built(tool: Tool) -> bool:
    # The version directory only appears through an atomic rename after every
    # binary in it was written, so existence of all files means a complete build.
    d = tool_dir(tool)
    return all((d / b).is_file() for b in tool.packages)


def ensure_binaries(progress: Progress = print) -> dict[str, Path]:
    """Return {binary name: path} for every fleet binary, building what is missing."""
    paths: dict[str, Path] = {}
    for tool in TOOLS.values():
        if not _is_built(tool):
            _build_locked(tool, progress)
        for binary in tool.packages:
            paths[binary] = tool_dir(tool) / binary
    return paths


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_locked(tool: Tool, progress: Progress) -> None:
    lock = bin_dir() / f".{tool.key}.lock"
    with _file_lock(lock):
        # Another process may have finished the build while we waited.
        if _is_built(tool):
            progress(f"[binaries] {tool.key}: built by another process")
            return
        _build(tool, progress)


def _go_env(gomod: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    # Never let go fetch a different toolchain (no download sites here) nor pick
    # up a go.work from some parent directory.
    env["GOTOOLCHAIN"] = "local"
    env["GOWORK"] = "off"
    flags = [f for f in env.get("GOFLAGS", "").split() if not f.startswith("-mod=")]
    if gomod:
        # The wrapper ships without go.sum; let go fill it in.
        flags.append("-mod=mod")
    env["GOFLAGS"] = " ".join(flags)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, str]:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc.returncode, _tail(log)


def _tail(log: Path, lines: int = 30) -> str:
    with open(log, "rb") as fh:
        dq = collections.deque(fh, maxlen=lines)
    return b"".join(dq).decode(errors="replace")


def _upstream_gomod(tool: Tool, log: Path) -> str:
    """The text of the required module's own go.mod, fetched via the module cache."""
    env = _go_env(gomod=False)
    cmd = ["go", "mod", "download", "-json", f"{tool.module}@{tool.version}"]
    with open(log, "ab") as out, tempfile.TemporaryDirectory() as outside:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        # Run outside any module: a broken wrapper go.mod from an earlier
        # attempt must not stop us from regenerating it.
        proc = subprocess.run(cmd, cwd=outside, env=env, capture_output=True)
        out.write(proc.stderr)
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or not info.get("GoMod"):
        detail = info.get("Error") or proc.stderr.decode(errors="replace")
        raise BuildError(f"{tool.key}: cannot download {tool.module}@{tool.version}: {detail.strip()}")
    return Path(info["GoMod"]).read_text()


_REPLACE_RE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)\s*$")


def _required(gomod: str) -> set[str]:
    mods: set[str] = set()
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if line.startswith("require ("):
            in_block = True
        elif in_block and line == ")":
            in_block = False
        elif in_block and line:
            mods.add(line.split()[0])
        elif line.startswith("require "):
            mods.add(line.split()[1])
    return mods


def _local_replaces(gomod: str) -> list[str]:
    """Required modules that the upstream go.mod replaces with paths in its own repo.

    Replaced modules it does not require (etcd's test-only root module, say)
    are skipped: they are not in our build graph, and some have no valid
    published version to point at.
    """
    required = _required(gomod)
    mods: list[str] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if line.startswith("replace ("):
            in_block = True
            continue
        if in_block and line == ")":
            in_block = False
            continue
        if not (in_block or line.startswith("replace ")):
            continue
        m = _REPLACE_RE.match(line)
        if m and m.group(2).startswith(("./", "../")) and m.group(1) in required:
            mods.append(m.group(1))
    return mods


def _wrapper_gomod(tool: Tool, upstream: str) -> str:
    # Copy the upstream go and godebug lines so the binaries get the same
    # language version and GODEBUG defaults as an upstream release build.
    keep = [ln for ln in upstream.splitlines() if re.match(r"^(go|godebug)\s", ln) and not ln.startswith("godebug (")]
    lines = [f"module fanout.local/build/{tool.name}", "", *keep, ""]
    lines.append(f"require {tool.module} {tool.version}")
    replaces = _local_replaces(upstream) if tool.local_replace_version else []
    if tool.local_replace_version and not replaces:
        raise BuildError(f"{tool.key}: expected local replace lines in upstream go.mod")
    if replaces:
        lines.append("")
        lines.append("replace (")
        lines += [f"\t{m} => {m} {tool.local_replace_version}" for m in replaces]
        lines.append(")")
    return "\n".join(lines) + "\n"


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


@contextlib.contextmanager
def _heartbeat(progress: Progress, what: str, every: float = 60.0) -> Iterator[None]:
    # Builds run for many minutes without output; a periodic line shows the
    # process is alive rather than hung.
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            progress(f"[binaries] {what}: still building ({_fmt_duration(time.monotonic() - start)})")

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def _build(tool: Tool, progress: Progress) -> None:
    src = cache_dir() / "src" / tool.key
    src.mkdir(parents=True, exist_ok=True)
    log = src / "build.log"
    log.write_text("")
    names = ", ".join(tool.packages)
    progress(f"[binaries] {tool.key}: building {names} (log: {log})")
    start = time.monotonic()

    upstream = _upstream_gomod(tool, log)
    (src / "go.mod").write_text(_wrapper_gomod(tool, upstream))
    # A stale go.sum from an older wrapper could pin wrong hashes.
    (src / "go.sum").unlink(missing_ok=True)
    for name, content in tool.sources.items():
        (src / name).write_text(content)

    tool_dir(tool).parent.mkdir(parents=True, exist_ok=True)
    # A build killed outright (SIGKILL, power loss) leaves its temp dir; we
    # hold the lock, so any such dir is garbage.
    for stale in tool_dir(tool).parent.glob(f".{tool.key}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    # The temp dir sits next to the final one so the rename is atomic (same fs).
    tmp = Path(tempfile.mkdtemp(prefix=f".{tool.key}.", dir=tool_dir(tool).parent))
    try:
        cmd = ["go", "build", "-trimpath", "-o", f"{tmp}/"]
        if tool.tags:
            cmd += ["-tags", tool.tags]
        # -s -w: no symbol table or DWARF, which roughly halves the binaries.
        cmd += ["-ldflags", " ".join(("-s", "-w", *tool.ldflags))]
        cmd += list(dict.fromkeys(tool.packages.values()))
        with _heartbeat(progress, tool.key):
            rc, tail = _run(cmd, src, _go_env(), log)
        if rc != 0:
            raise BuildError(f"{tool.key}: go build failed (exit {rc}); last lines of {log}:\n{tail}")
        for binary, pkg in tool.packages.items():
            # go names the output after the package's last path element; our
            # own "." main package is named after the wrapper module.
            produced = tmp / (pkg.rsplit("/", 1)[-1] if pkg != "." else tool.name)
            if not produced.is_file():
                raise BuildError(f"{tool.key}: go build produced no {produced.name}")
            if produced.name != binary:
                produced.rename(tmp / binary)
        tmp.chmod(0o755)
        try:
            tmp.rename(tool_dir(tool))
        except OSError:
            # A leftover partial directory from before this module existed;
            # we hold the lock, so nobody else is using it.
            shutil.rmtree(tool_dir(tool), ignore_errors=True)
            tmp.rename(tool_dir(tool))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"[binaries] {tool.key}: built in {_fmt_duration(time.monotonic() - start)}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def main(argv: list[str] | None = None) -> int:
    # Progress lines must show up while a long build runs, even when piped.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        paths = ensure_binaries()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    versions = {b: t.version for t in TOOLS.values() for b in t.packages}
    rows = [(b, versions[b], str(p), _human(p.stat().st_size)) for b, p in paths.items()]
    header = ("tool", "version", "path", "size")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
