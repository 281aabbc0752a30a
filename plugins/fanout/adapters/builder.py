"""Build the app image reproducibly with buildah and push it; the digest is the release."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fanout.policy import DIGEST


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildahBuilder:
    """Debian's buildah, storage kept under `root` so builds never touch the system store."""

    root: Path
    insecure: bool = False

    def _run(self, argv: list[str], what: str) -> str:
        base = ["buildah", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run")]
        done = subprocess.run(base + argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BuildError(f"buildah {what} failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def build_and_push(
        self, context: Path, destination: str, labels: dict[str, str] | None = None, extra_tags: tuple[str, ...] = ()
    ) -> str:
        """Build `context` (its Containerfile) with `labels` and push to `destination` (host/repo:tag),
        then under each of `extra_tags` too. Returns the digest."""
        if not (context / "Containerfile").is_file():
            raise BuildError(f"{context}: no Containerfile in the build context")
        local = f"localhost/fanout-build:{destination.rsplit(':', 1)[-1]}"
        label_args = [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
        # --timestamp 0: the same source always gives the same digest, so rebuilding a
        # released commit is a no-op all the way down to Helm.
        argv = ["bud", "--timestamp", "0", *label_args, "-f", str(context / "Containerfile"), "-t", local, str(context)]
        self._run(argv, "build")
        tls = [f"--tls-verify={'false' if self.insecure else 'true'}"]
        with tempfile.TemporaryDirectory(prefix="fanout-push-") as tmp:
            digest_file = Path(tmp) / "digest"
            self._run(["push", *tls, "--digestfile", str(digest_file), local, f"docker://{destination}"], "push")
            digest = digest_file.read_text().strip()
        if not DIGEST.match(digest):
            raise BuildError(f"buildah push gave no usable digest: {digest!r}")
        repository = destination.rsplit(":", 1)[0]
        for tag in extra_tags:
            self._run(["push", *tls, local, f"docker://{repository}:{tag}"], f"push of tag {tag}")
        return digest
