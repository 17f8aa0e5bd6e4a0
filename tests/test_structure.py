"""The package's structure: layers that import only downward, no import circle, modules and functions of a
readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "psml_bench"
MAX_LINES = 500
MAX_FUNCTION_LINES = 60
"""Longest function or method, ``def`` line to last line (docstring included)."""
LONG_FUNCTIONS: set[str] = set()
"""Functions still over :data:`MAX_FUNCTION_LINES`, to be split: the list may only shrink."""

LAYERS = ("_version", "contract", "common", "zoo", "extraction", "serving", "isolation", "plugins", "bench", "report",
          "runner", "render", "cli", "__init__")
"""Bottom to top. A subpackage is one layer; ``_version`` (version numbers) sits below everything, the run
orchestration (``runner``), the command line and the public face (``psml_bench/__init__.py``) on top."""


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name relative to it (``serving.frontend``; ``bench`` for its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer(module: str) -> int:
    """Index in :data:`LAYERS` of a module's layer."""
    return LAYERS.index(module.split(".")[0])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str, known: dict[str, Path], *, type_only: bool = True) -> set[str]:
    """The package modules ``module`` imports, at any depth (imports inside functions count; ``type_only``:
    imports under ``if TYPE_CHECKING`` count too)."""
    path = known[module]
    package = module.split(".") if path.name == "__init__.py" and module != "__init__" else module.split(".")[:-1]
    found: set[str] = set()

    def resolve(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_only:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                stem = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "psml_bench" or node.module.startswith("psml_bench.")):
                stem = node.module[len("psml_bench."):] if node.module != "psml_bench" else ""
            else:
                stem = None
            if stem is not None:
                for alias in node.names:
                    full = f"{stem}.{alias.name}" if stem else alias.name
                    resolve(full if full in known else stem or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("psml_bench."):
                    resolve(alias.name[len("psml_bench."):])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(module)
    return found


KNOWN = modules()


def test_every_module_belongs_to_a_layer():
    stray = [m for m in KNOWN if m.split(".")[0] not in LAYERS]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


@pytest.mark.parametrize("module", sorted(KNOWN))
def test_imports_point_down(module):
    upward = sorted(t for t in imports(module, KNOWN) if layer(t) > layer(module))
    assert not upward, f"{module} imports from a higher layer: {upward} (layers, bottom first: {LAYERS})"


def test_no_import_circle():
    graph = {module: imports(module, KNOWN, type_only=False) for module in KNOWN if module != "__init__"}
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in graph:
        if module not in state:
            walk(module)


def test_the_checks_find_an_upward_import_and_a_circle(tmp_path):
    (tmp_path / "contract").mkdir()
    (tmp_path / "contract" / "__init__.py").write_text('"""c"""\n')
    (tmp_path / "contract" / "a.py").write_text("from ..bench.b import x\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text('"""b"""\n')
    (tmp_path / "bench" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from ..contract import a\n"
                                             "def f():\n    from psml_bench.contract.a import y\n")
    known = modules(tmp_path)
    assert imports("contract.a", known) == {"bench.b"}
    assert layer("bench.b") > layer("contract.a")
    assert imports("bench.b", known) == {"contract.a"}
    assert imports("bench.b", known, type_only=False) == {"contract.a"}  # the one inside a function


@pytest.mark.parametrize("module", sorted(KNOWN))
def test_module_is_one_concept_of_readable_size(module):
    text = KNOWN[module].read_text()
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring, f"{module} has no module docstring"
    assert len(docstring.splitlines()[0]) <= 120, f"{module}: the docstring's first line should say its concept"
    assert len(text.splitlines()) <= MAX_LINES, f"{module} has {len(text.splitlines())} lines (at most {MAX_LINES})"


def test_the_readme_layout_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    sections: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        head = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else ""
        if head:
            current = head.rstrip("/")
        sections[current] = sections.get(current, "") + " " + line
    missing = []
    for module in KNOWN:
        if module == "__init__":
            continue
        top, _, leaf = module.partition(".")
        if not leaf:
            if f"{top}.py" not in block and f"{top}/" not in block:
                missing.append(module)
        elif leaf.split(".")[-1] not in sections.get(top, "").replace(",", " ").split():
            missing.append(module)
    assert not missing, f"README.md's Layout does not name: {missing}"


def test_loading_a_grid_reaches_no_sandbox():
    """A grid is data: bench.grid's imports, at any depth and followed through, reach nothing of the isolation layer."""
    seen, stack = set(), ["bench.grid"]
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack.extend(imports(module, KNOWN, type_only=False))
    assert not sorted(m for m in seen if m.startswith("isolation")), sorted(seen)


def long_functions(source: str, prefix: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """The functions and methods (nested ones too) of ``source`` over ``limit`` lines, by dotted name, with their
    length."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, path: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{path}.{child.name}"
                length = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > limit:
                    found[name] = length
                visit(child, name)
            else:
                visit(child, path)

    visit(ast.parse(source), prefix)
    return found


def test_functions_are_of_readable_size():
    found: dict[str, int] = {}
    for module, path in KNOWN.items():
        found.update(long_functions(path.read_text(), module))
    over = {name: length for name, length in found.items() if name not in LONG_FUNCTIONS}
    assert not over, f"over {MAX_FUNCTION_LINES} lines (split them into helpers that each say one thing): {over}"
    split = sorted(LONG_FUNCTIONS - set(found))
    assert not split, f"{split} are no longer over {MAX_FUNCTION_LINES} lines: take them off LONG_FUNCTIONS"


def test_the_size_check_finds_a_long_nested_function():
    body = "".join(f"            x{i} = {i}\n" for i in range(5))
    source = "class A:\n    def m(self):\n        def inner():\n" + body
    assert long_functions(source, "mod", limit=5) == {"mod.A.m": 7, "mod.A.m.inner": 6}
    assert long_functions(source, "mod", limit=7) == {}
