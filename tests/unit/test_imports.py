"""The fanout package's modules import each other without a cycle (function-level imports
included: a cycle broken by a late import is still a cycle), and the core stays Airflow-free."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "fanout"
PURE = ("fanout.fleet", "fanout.planner", "fanout.policy", "fanout.drift", "fanout.names", "fanout.records")


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: {t for t in imports_of(path) if t in modules and t != name} for name, path in modules.items()}


def test_no_import_cycle_in_the_fanout_package():
    graph = import_graph()
    assert len(graph) > 20 and graph["fanout.airflow.dags"], "the walk found the package and its imports"
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None
    assert len(order) == len(graph)


def test_the_walk_finds_a_cycle_broken_by_a_late_import(tmp_path):
    # The test above can fail: the same walk over a package whose cycle hides in a function does.
    package = tmp_path / "fanout"
    package.mkdir()
    (package / "a.py").write_text("import fanout.b\n")
    (package / "b.py").write_text("def late():\n    from fanout.a import x\n")
    graph = import_graph(package)
    assert graph == {"fanout.a": {"fanout.b"}, "fanout.b": {"fanout.a"}}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("the walk missed the cycle")


def test_the_core_imports_no_airflow():
    for name in PURE:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        airflow = sorted(i for i in imports_of(path) if i.split(".")[0] == "airflow")
        assert airflow == [], f"{name} imports {airflow}"
