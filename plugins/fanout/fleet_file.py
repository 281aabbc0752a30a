"""Reading a fleet file into plain data, refusing with one line what is not a fleet file at all: too
large (or endless, like /dev/zero), not UTF-8, not YAML, a key given twice (YAML would silently keep
the last), or nested / aliased beyond anything a fleet needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # a large fleet is tens of kilobytes
MAX_DEPTH = 64
MAX_NODES = 200_000  # counted after aliases are expanded: a "billion laughs" file stops here


class FleetFileError(ValueError):
    """The file cannot be read as a fleet file; the message is one line without the path."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                raise FleetFileError(f"line {line}: a key must be a plain value, not a list or mapping") from None
            if first is not None:
                shown = str(key) if len(str(key)) <= 60 else str(key)[:59] + "…"
                raise FleetFileError(f"line {line}: key {shown!r} is given twice (first on line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_fleet_file(path: Path) -> Any:
    """The YAML data of `path`. Raises OSError when it cannot be read, FleetFileError otherwise."""
    return fleet_data(read_fleet_text(path))


def read_fleet_text(path: Path) -> str:
    """The text of `path`, if it can be a fleet file at all (size, encoding)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise FleetFileError(f"larger than {MAX_BYTES // 1024} KiB; a fleet file is a few kilobytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FleetFileError(f"not UTF-8 text (byte {err.start} cannot be decoded)") from None


def fleet_data(text: str) -> Any:
    """The YAML data of a fleet file's text (as read_fleet_file read it, or a run's snapshot of it)."""
    if len(text.encode()) > MAX_BYTES:
        raise FleetFileError(f"larger than {MAX_BYTES // 1024} KiB; a fleet file is a few kilobytes")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise FleetFileError(f"not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise FleetFileError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_shape(data)
    return data


def _check_shape(data: Any) -> None:
    # Iterative on purpose: the file is not trusted to be shallow.
    stack, nodes = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise FleetFileError(f"nested deeper than {MAX_DEPTH} levels")
        if nodes > MAX_NODES:
            raise FleetFileError(f"more than {MAX_NODES} values once aliases are expanded")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
