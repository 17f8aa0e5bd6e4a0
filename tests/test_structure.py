"""The package's structure: no import circle, one concept per module, modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "psml_bench"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
MAX_LINES = 500


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def package_imports(module: str) -> set[str]:
    """The package modules ``module`` imports at run time, at any depth (imports inside functions count)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names if alias.name in MODULES)
            elif node.level == 0 and node.module and node.module.startswith("psml_bench."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("psml_bench."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != module}


def test_no_import_circle():
    graph = {module: package_imports(module) for module in MODULES if module != "__init__"}
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


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    monkeypatch.setattr(__import__(__name__), "MODULES", ["a", "b"])
    assert package_imports("a") == {"b"} and package_imports("b") == {"a"}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_module_is_one_concept_of_readable_size(module):
    text = (PACKAGE / f"{module}.py").read_text()
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring, f"{module}.py has no module docstring"
    assert len(docstring.splitlines()[0]) <= 120, f"{module}.py: the docstring's first line should say its concept"
    assert len(text.splitlines()) <= MAX_LINES, f"{module}.py has {len(text.splitlines())} lines (at most {MAX_LINES})"
