"""The package's import graph: no cycles between tokenforge modules, and no module reaching into another's
private names.

Every `import` and `from ... import` of every file under src/tokenforge counts, wherever it is: at the top, inside a
function, or under `if TYPE_CHECKING:`. A lazy import hides a cycle from Python at import time, not from the design:
the two modules still cannot be understood, tested or moved one without the other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tokenforge"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__.py)."""
    files = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a `from` import names, with relative imports (`from . import x`) resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, modules: set[str]) -> list[tuple[str, str | None]]:
    """(imported tokenforge module, imported name or None) for every import in the file, nested ones included.

    `from tokenforge.x import y` is the module tokenforge.x.y when that is a module, else tokenforge.x (with the
    name y); `import tokenforge.x.y` is tokenforge.x.y."""
    found: list[tuple[str, str | None]] = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.append((f"{source}.{alias.name}", None))
                elif source in modules:
                    found.append((source, alias.name))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the tokenforge modules it imports (itself left out)."""
    files = module_files()
    names = set(files)
    return {m: {target for target, _ in imports_of(m, path, names) if target != m} for m, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def private_imports() -> list[str]:
    """`module: from other import _name` for every private name a module imports from another tokenforge module."""
    files = module_files()
    names = set(files)
    found = []
    for module, path in files.items():
        for target, name in imports_of(module, path, names):
            private = name is not None and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            if private and target != module:
                found.append(f"{module}: from {target} import {name}")
    return sorted(found)


def test_the_graph_sees_imports_anywhere_in_a_file(tmp_path, monkeypatch):
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from tokenforge.sub import b\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tokenforge.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from tokenforge.c import VALUE, _hidden\n")
    (package / "c.py").write_text("import tokenforge.a\nfrom . import sub\nVALUE = 1\n_hidden = 2\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    graph = import_graph()
    assert graph == {
        "tokenforge": set(),
        "tokenforge.a": {"tokenforge.sub.b"},
        "tokenforge.c": {"tokenforge.a", "tokenforge.sub"},
        "tokenforge.sub": {"tokenforge.sub.b"},
        "tokenforge.sub.b": {"tokenforge.c"},
    }
    assert cycles(graph) == [["tokenforge.a", "tokenforge.c", "tokenforge.sub", "tokenforge.sub.b"]]
    assert private_imports() == ["tokenforge.sub.b: from tokenforge.c import _hidden"]


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 10, f"no modules under {SRC / PACKAGE}"
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s), each a set of modules that import one another:\n" + "\n".join(
        " <-> ".join(component) for component in found
    )


def test_no_module_imports_another_modules_private_names():
    found = private_imports()
    assert not found, f"{len(found)} private name(s) imported from another module:\n" + "\n".join(found)
