"""Pack a build context into a tar.gz the way `docker build` / `az acr build` would send it:
every file under the context except those `.dockerignore` excludes.

`.dockerignore` rules (as Docker documents them): one pattern per line, `#` starts a comment,
a leading `/` is ignored, `*` and `?` do not cross `/`, `**` matches any number of directories,
`!` re-includes, and the last matching line wins. A pattern that matches a directory excludes
everything under it. The Dockerfile and `.dockerignore` are always sent, as Docker does.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    regex: re.Pattern[str]
    negated: bool


def _translate(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith(("!", "^")) else body
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return out


def parse_dockerignore(text: str) -> list[IgnoreRule]:
    """The rules of a `.dockerignore`; ValueError naming the line for a pattern Docker would refuse too."""
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        line = posixpath.normpath(line.lstrip("/")) if line.lstrip("/") else "."
        if line == ".":
            continue  # excluding the context root itself is what Docker ignores too
        try:
            regex = re.compile(_translate(line))
        except re.error as err:
            raise ValueError(
                f".dockerignore line {number}: {raw.strip()!r} is not a valid pattern ({err.msg})"
            ) from None
        rules.append(IgnoreRule(line, regex, negated))
    return rules


def excluded(relpath: str, rules: list[IgnoreRule]) -> bool:
    """Does `.dockerignore` keep `relpath` (posix, relative to the context) out of the context?"""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for rule in rules:
        # A rule on a directory applies to everything below it.
        if any(rule.regex.fullmatch(p) for p in prefixes):
            result = not rule.negated
    return result


def pack_context(context: Path, dockerfile: str = "Containerfile") -> bytes:
    """The context as tar.gz bytes, files in sorted order, owner and gzip header normalised so
    that the same tree gives the same archive."""
    context = context.resolve()
    if not (context / dockerfile).is_file():
        raise FileNotFoundError(f"{context}: no {dockerfile} in the build context")
    ignore_file = context / ".dockerignore"
    rules = parse_dockerignore(ignore_file.read_text()) if ignore_file.is_file() else []
    always = {dockerfile, ".dockerignore"}
    members: list[str] = []
    for root, dirs, files in os.walk(context):
        dirs.sort()
        rel_root = Path(root).relative_to(context).as_posix()
        for name in sorted(files) + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel in always or not excluded(rel, rules):
                members.append(rel)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in members:
            info = tar.gettarinfo(str(context / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(context / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)  # symlinks travel as links, never followed out of the context
    return gzip.compress(raw.getvalue(), mtime=0)
