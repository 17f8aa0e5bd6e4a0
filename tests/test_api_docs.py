"""docs/api.md is generated from the public API's docstrings (pdoc) and up to date; every reference in
those docstrings resolves (files in the repository, Sphinx roles to objects)."""

from __future__ import annotations

import importlib
import re
import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("pdoc")

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = runpy.run_path(str(ROOT / "scripts" / "api_docs.py"))
FILE_REFERENCE = re.compile(r"(?<![\w/.$<-])((?:[\w-]+/)*[\w-]+\.(?:md|toml|json))\b")
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc):`~?([\w.]+)`")


def test_docs_api_md_is_generated_from_the_docstrings():
    assert (ROOT / "docs" / "api.md").read_text() == GENERATOR["render"](), \
        "docs/api.md is out of date: run python scripts/api_docs.py"


def _resolves(target: str, module_name: str, qualname: str) -> bool:
    module = sys.modules[module_name]
    head, *rest = target.split(".")
    owner = getattr(module, qualname.split(".")[0], None)  # a method's or attribute's own class
    scopes = [vars(owner) if isinstance(owner, type) else {}, vars(module), vars(importlib.import_module("psml_bench"))]
    if isinstance(owner, type) and hasattr(owner, head):
        scopes[0] = {head: getattr(owner, head)}
    for scope in scopes:
        if head in scope:
            obj = scope[head]
            try:
                for part in rest:
                    obj = getattr(obj, part)
                return True
            except AttributeError:
                return False
    for cut in range(len(target.split(".")), 0, -1):  # a dotted module path, then attributes
        name = ".".join(target.split(".")[:cut])
        try:
            obj = importlib.import_module(name)
        except ImportError:
            continue
        try:
            for part in target.split(".")[cut:]:
                obj = getattr(obj, part)
            return True
        except AttributeError:
            return False
    return False


def test_every_reference_in_a_public_docstring_resolves():
    unresolved = []
    for doc in GENERATOR["public_members"]():
        for member in GENERATOR["documented"](doc):
            if callable(member.obj) and getattr(member.obj, "__doc__", None) is None:
                continue  # no docstring of its own: pdoc shows the overridden method's (torch's)
            text = member.docstring or ""
            for path in FILE_REFERENCE.findall(text):
                if not any((base / path).exists() for base in (ROOT, ROOT / "psml_bench", ROOT / "docs")):
                    unresolved.append(f"{member.fullname}: file {path}")
            for target in ROLE.findall(text):
                if not _resolves(target, member.modulename, member.qualname):
                    unresolved.append(f"{member.fullname}: {target}")
    assert not unresolved, unresolved


def test_the_reference_check_finds_a_missing_design_document():
    assert FILE_REFERENCE.findall("besides the handle (DESIGN.md section 2)") == ["DESIGN.md"]
    assert not (ROOT / "DESIGN.md").exists()
