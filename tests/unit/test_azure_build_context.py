"""The ACR Tasks build context: `.dockerignore` as Docker reads it, and a stable archive."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from fanout.adapters.build_context import excluded, pack_context, parse_dockerignore

RULES = parse_dockerignore(
    """
# comments and blank lines are ignored

*.md
!README.md
**/node_modules
/build
docs/**/*.tmp
secrets
"""
)


@pytest.mark.parametrize(
    ("path", "out"),
    [
        ("notes.md", True),
        ("README.md", False),  # re-included by the later `!` line
        ("sub/notes.md", False),  # `*` does not cross directories
        ("node_modules", True),
        ("a/b/node_modules/x.js", True),  # `**/` at any depth; a directory rule covers its contents
        ("build/out.bin", True),  # a leading `/` is the context root
        ("src/build", False),
        ("docs/c.tmp", True),  # `**` also matches zero directories
        ("docs/a/b/c.tmp", True),
        ("secrets/key.pem", True),
        ("index.html", False),
    ],
)
def test_dockerignore_rules(path, out):
    assert excluded(path, RULES) is out


def names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        return sorted(tar.getnames())


def test_pack_honours_dockerignore_but_always_sends_the_containerfile(tmp_path):
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("Containerfile\n.dockerignore\n*.env\n")
    (tmp_path / "app.env").write_text("KEY=secret\n")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("hi\n")
    os.symlink("/etc/passwd", tmp_path / "web" / "link")
    archive = pack_context(tmp_path)
    assert names(archive) == [".dockerignore", "Containerfile", "web/index.html", "web/link"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        link = tar.getmember("web/link")
        assert link.issym() and link.uid == 0, "links travel as links, never followed"
    assert pack_context(tmp_path) == archive, "the same tree gives the same bytes"


def test_pack_refuses_a_context_without_the_containerfile(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Containerfile"):
        pack_context(tmp_path)
