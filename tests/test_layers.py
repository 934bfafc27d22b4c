"""The import picture is the data-flow picture (docs/internals.md, "Layers").

Every module's imports are read with ``ast`` (module-level and inside functions alike: a
lazy import is still a dependency) and checked against the layers, lowest first:

    shared     contract/ (the shared vocabulary) and emfence.config (the typed config
               table every box is handed): any layer may import them; contract imports
               no other emfence module, emfence.config only contract
    geofence
    engine
    ingest | alarms   adapters beside each other: neither imports the other
    console | simulators   the operators' side and the devices' side, beside each other
    emfence    the application (cli, demo, `emfence run`, replay)
    benchmarks   measures everything below it

A module may import its own package and any lower layer, never a higher one or a
sibling. No import cycle between modules either.

The code meets this: KNOWN_UPWARD and KNOWN_CYCLES are empty. Should an exception ever
be unavoidable, it is listed there with the reason and the step that removes it; the
test fails when a new violation appears, and also when a listed one disappears from the
code but stays in the list, so the lists only shrink.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RANK = {"shared": 0, "geofence": 1, "engine": 2, "ingest": 3, "alarms": 3, "console": 4,
        "simulators": 4, "emfence": 5, "benchmarks": 6}
PACKAGES = ("contract", *(p for p in RANK if p != "shared"))
SHARED = ("contract", "emfence.config")

# (importing module, imported module): why it is still there, and what removes it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

# Import cycles (strongly connected sets of modules).
KNOWN_CYCLES: list[set[str]] = []


def layer(module: str) -> str:
    if any(module == s or module.startswith(s + ".") for s in SHARED):
        return "shared"
    return module.split(".", 1)[0]


def package(module: str) -> str:
    return module.split(".", 1)[0]


def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the given top-level packages."""
    mods: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom,
             mods: dict[str, Path]) -> list[str]:
    """The project modules an import statement depends on (``from p import m`` depends
    on the module p.m when there is one, else on p)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join([*pkg, base] if base else pkg)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                 for a in node.names]
    out = []
    for name in names:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in mods:
            out.append(name)
    return out


def import_edges(mods: dict[str, Path]) -> dict[tuple[str, str], str]:
    """(importer, imported) -> "file:line" of the first such import."""
    edges: dict[tuple[str, str], str] = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for dep in _targets(module, path, node, mods):
                    if dep != module:
                        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                        where = f"{shown}:{node.lineno}"
                        edges.setdefault((module, dep), where)
    return edges


def upward(edges) -> dict[tuple[str, str], str]:
    """The imports that break the layers: into a higher layer or a sibling package."""
    bad = {}
    for (a, b), where in edges.items():
        la, lb = layer(a), layer(b)
        if package(a) == package(b) and la == lb:
            continue
        if lb == "shared" and la != "shared":
            continue
        # Within the shared floor, contract/ is the bottom: emfence.config may use it
        # (its ConfigError derives from contract.errors.EmfenceError), never the reverse.
        if package(b) == "contract" and package(a) != "contract":
            continue
        if RANK[lb] >= RANK[la]:
            bad[(a, b)] = where
    return bad


def cycles(edges) -> list[set[str]]:
    """Strongly connected sets of more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(comp)
    return found


def _edges():
    return import_edges(project_modules(ROOT))


def test_no_import_goes_up_a_layer_except_the_known_ones():
    bad = upward(_edges())
    new = {k: v for k, v in bad.items() if k not in KNOWN_UPWARD}
    gone = [k for k in KNOWN_UPWARD if k not in bad]
    assert not new, "imports into a higher layer or a sibling adapter:\n" + "\n".join(
        f"  {where}: {a} imports {b}" for (a, b), where in sorted(new.items()))
    assert not gone, ("fixed, so remove from KNOWN_UPWARD in tests/test_layers.py:\n"
                      + "\n".join(f"  {a} -> {b}" for a, b in gone))


def test_no_import_cycle_except_the_known_ones():
    found = cycles(_edges())
    new = [c for c in found if c not in KNOWN_CYCLES]
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not new, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    assert not gone, "fixed, so remove from KNOWN_CYCLES: " + "; ".join(
        " <-> ".join(sorted(c)) for c in gone)


def test_the_reader_sees_the_imports_it_must_see():
    """Guards against a vacuous pass: imports of every form are found."""
    edges = _edges()
    assert ("engine.kernels", "geofence.kernels") in edges  # from p.m import name
    assert ("engine.engine", "engine.kernels") in edges  # from p import m
    assert ("engine.kernels", "contract.alarms") in edges
    assert ("engine", "engine.engine") in edges  # lazy, inside a function


def test_the_checker_catches_an_upward_import_a_sibling_and_a_cycle(tmp_path):
    """The checker itself, on a small tree made for it."""
    files = {
        "geofence/__init__.py": "",
        "geofence/zones.py": "from engine import rules\n",  # up
        "engine/__init__.py": "",
        "engine/rules.py": "import geofence.zones\nfrom contract import types\n",
        "ingest/__init__.py": "",
        "ingest/a.py": "from . import b\n\ndef f():\n    import alarms.store\n",  # sibling
        "ingest/b.py": "from .a import f\n",  # cycle a <-> b
        "alarms/__init__.py": "",
        "alarms/store.py": "from emfence.config import Config\n",  # shared: fine
        "contract/__init__.py": "",
        "contract/types.py": "import engine.rules\n",  # shared imports nothing: up
        "emfence/__init__.py": "",
        "emfence/config.py": "from contract import types\n",  # shared on contract: fine
        "contract/errors.py": "from emfence.config import Config\n",  # contract on config: up
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    mods = project_modules(tmp_path, ("contract", "geofence", "engine", "ingest", "alarms",
                                      "emfence"))
    edges = import_edges(mods)
    assert set(upward(edges)) == {("geofence.zones", "engine.rules"),
                                  ("ingest.a", "alarms.store"),
                                  ("contract.types", "engine.rules"),
                                  ("contract.errors", "emfence.config")}
    assert {frozenset(c) for c in cycles(edges)} == {
        frozenset({"ingest.a", "ingest.b"}),
        frozenset({"geofence.zones", "engine.rules", "contract.types"})}


if __name__ == "__main__":  # print today's picture
    e = _edges()
    for (a, b), w in sorted(upward(e).items()):
        print(f"{w}: {a} -> {b}")
    for c in cycles(e):
        print("cycle:", " <-> ".join(sorted(c)))
    sys.exit(0)
