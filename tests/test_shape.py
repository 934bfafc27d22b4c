"""The shape of the code: files of one job, functions that fit on a screen.

Every Python file of the project's packages (not tests/) is read with ``ast``:

- no file over MAX_FILE_LINES lines;
- no function or method over MAX_FUNCTION_LINES lines (from its ``def`` to its last
  line), unless the comment right above it (above its decorators, if it has any) says
  ``one piece:`` and why, e.g. ``# one piece: the per-record loop keeps ...``; the
  comment may run on over several lines, as long as they are one block that ends just
  above the function.

The compiled kernels (``*/kernels.py``: numba functions that do one pass over the
arrays, see docs/internals.md) are exempt from both rules.

KNOWN lists the violations of today that are being removed in parallel, each with the
reason. The test fails when a new violation appears, and also when a listed one no
longer violates but stays in the list, so the list only shrinks (as KNOWN_UPWARD in
tests/test_layers.py).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
EXCUSE = "one piece:"
PACKAGES = ("contract", "geofence", "engine", "ingest", "alarms", "console", "simulators",
            "emfence", "benchmarks")

# "path" (the file) or "path::Qualified.name" (a function): why it is still there.
KNOWN: dict[str, str] = {}


def python_files(root: Path, packages=PACKAGES) -> list[Path]:
    return [f for pkg in packages for f in sorted((root / pkg).rglob("*.py"))]


def is_kernel(path: Path) -> bool:
    return path.name == "kernels.py"


def _functions(tree: ast.Module):
    """(qualified name, node) of every function and method, nested ones included."""
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                stack.append((name + ".", child))
            else:
                stack.append((prefix, child))


def excused(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the comment block right above the function (and its decorators) says
    ``one piece:``."""
    i = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2  # 0-based, above
    while i >= 0 and lines[i].lstrip().startswith("#"):
        if EXCUSE in lines[i].lower():
            return True
        i -= 1
    return False


def violations(root: Path, packages=PACKAGES) -> dict[str, str]:
    """"path" or "path::name" -> what is too long, for every file of ``packages``."""
    found: dict[str, str] = {}
    for path in python_files(root, packages):
        if is_kernel(path):
            continue
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        if len(lines) > MAX_FILE_LINES:
            found[rel] = f"{len(lines)} lines (at most {MAX_FILE_LINES})"
        for name, node in _functions(ast.parse(text, filename=str(path))):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and not excused(lines, node):
                found[f"{rel}::{name}"] = (f"{length} lines (at most {MAX_FUNCTION_LINES}, or a "
                                           f"'# {EXCUSE} ...' comment above it saying why)")
    return found


def test_no_file_or_function_is_too_long_except_the_known_ones():
    found = violations(ROOT)
    new = {k: v for k, v in found.items() if k not in KNOWN}
    gone = [k for k in KNOWN if k not in found]
    assert not new, "too long; split by responsibility:\n" + "\n".join(
        f"  {k}: {v}" for k, v in sorted(new.items()))
    assert not gone, ("fixed, so remove from KNOWN in tests/test_shape.py:\n"
                      + "\n".join(f"  {k}" for k in gone))


def test_every_package_is_read():
    """Guards against a vacuous pass: every top-level package is in PACKAGES, and the
    reader finds functions, methods and nested functions in them."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(PACKAGES), f"add to PACKAGES: {sorted(packages - set(PACKAGES))}"
    names = {name for f in python_files(ROOT, ("geofence",)) if not is_kernel(f)
             for name, _ in _functions(ast.parse(f.read_text(encoding="utf-8")))}
    assert {"load_zones", "CompiledZones.contains"} <= names


def test_the_checker_catches_a_long_file_and_a_long_function(tmp_path):
    """The checker itself, on a small tree made for it."""
    def function(name: str, lines: int, above: str = "", indent: str = "") -> str:
        """A function of ``lines`` lines (its def and lines - 1 statements), a blank after."""
        body = "".join(f"{indent}    x{k} = {k}\n" for k in range(lines - 1))
        return f"{above}{indent}def {name}():\n{body}\n"

    files = {
        "pkg/__init__.py": "",
        "pkg/long.py": "x = 1\n" * (MAX_FILE_LINES + 1),
        # Exactly MAX_FILE_LINES lines, with a function of exactly MAX_FUNCTION_LINES.
        "pkg/fits.py": ("x = 1\n" * (MAX_FILE_LINES - MAX_FUNCTION_LINES - 1)
                        + function("just_fits", MAX_FUNCTION_LINES)),
        "pkg/funcs.py": (
            function("too_long", MAX_FUNCTION_LINES + 1)
            + function("excused", MAX_FUNCTION_LINES + 1,
                       "# One piece: a hot loop that a call per item would slow down,\n"
                       "# measured in the benchmarks.\n")
            + function("excused_decorated", MAX_FUNCTION_LINES + 1,
                       "# one piece: as above\n@staticmethod\n")
            + function("comment_not_right_above", MAX_FUNCTION_LINES + 1,
                       "# one piece: but a blank line follows\n\n")
            + "class Holder:\n" + function("method", MAX_FUNCTION_LINES + 1, indent="    ")
            + "def outer():\n" + function("inner", MAX_FUNCTION_LINES + 1, indent="    ")
        ),
        "pkg/kernels.py": "x = 1\n" * 600 + function("kernel", 200),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path, ("pkg",))
    assert set(found) == {"pkg/long.py", "pkg/funcs.py::too_long",
                          "pkg/funcs.py::comment_not_right_above",
                          "pkg/funcs.py::Holder.method", "pkg/funcs.py::outer",
                          "pkg/funcs.py::outer.inner"}
    assert found["pkg/long.py"].startswith(f"{MAX_FILE_LINES + 1} lines")
    assert found["pkg/funcs.py::too_long"].startswith(f"{MAX_FUNCTION_LINES + 1} lines")


if __name__ == "__main__":  # print today's violations
    for key, what in sorted(violations(ROOT).items()):
        print(f"{key}: {what}{'  (known)' if key in KNOWN else ''}")
    sys.exit(0)
