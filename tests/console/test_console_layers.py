"""The console's import picture, read from its source with ``ast``: no cycle among its
modules, and the shared pieces below the resources never import a resource or the app.

Imports inside functions count too: a deferred import hides a cycle from Python at load
time, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

CONSOLE = Path(__file__).resolve().parents[2] / "console"
# Modules that assemble or run the console: they may import anything in it.
TOP = {"console", "console.__main__", "console.app", "console.service"}


def module_name(path: Path, root: Path) -> str:
    parts = ("console",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def console_imports(root: Path = CONSOLE) -> dict[str, set[str]]:
    """module -> the console modules it imports (``from a import b`` counts ``a.b`` when
    that is a module)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk (each as the modules around it)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                walk(dep, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a module imports one above it: the shared pieces
    import no resource and nothing of TOP; a resource imports nothing of TOP."""
    bad = []
    for name, deps in sorted(graph.items()):
        if name in TOP:
            continue
        for dep in sorted(deps):
            resource_dep = dep.startswith("console.resources.")
            shared = not name.startswith("console.resources")
            if dep in TOP or (shared and resource_dep):
                bad.append((name, dep))
    return bad


def test_the_console_reads_its_own_modules():
    graph = console_imports()
    # The picture the other assertions judge: the app assembles the resources, which
    # stand on the shared pieces.
    assert "console.resources.alarms" in graph["console.app"]
    assert "console.access" in graph["console.resources.alarms"]
    assert "console.http" in graph["console.context"]


def test_no_import_cycle_in_the_console():
    assert cycles(console_imports()) == []


def test_no_console_module_imports_one_above_it():
    assert upward_imports(console_imports()) == []


def test_the_checks_see_a_deferred_import_cycle(tmp_path):
    # The shape the console had: the app imported its handlers inside create_app, and
    # the handlers imported the app at the top.
    pkg = tmp_path / "console"
    (pkg / "resources").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from console.app import create_app\n")
    (pkg / "app.py").write_text("def create_app():\n    from console.resources import a\n")
    (pkg / "resources" / "__init__.py").write_text("")
    (pkg / "resources" / "a.py").write_text("from console.app import create_app\n")
    graph = console_imports(pkg)
    assert ["console.app", "console.resources.a", "console.app"] in cycles(graph)
    assert ("console.resources.a", "console.app") in upward_imports(graph)
