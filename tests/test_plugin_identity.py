"""A plugin's source hash (its part of a cell key) covers the plugin files it inherits from."""

from __future__ import annotations

import importlib
import sys

from psml_bench import Attack


def _load(tmp_path, parent_body: str):
    (tmp_path / "ident_parent.py").write_text(
        "from psml_bench import Attack\n\n\nclass Parent(Attack):\n    name = 'parent'\n" + parent_body)
    (tmp_path / "ident_child.py").write_text(
        "from ident_parent import Parent\n\n\nclass Child(Parent):\n    name = 'child'\n")
    for name in ("ident_parent", "ident_child"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module("ident_parent").Parent, importlib.import_module("ident_child").Child


def test_child_hash_follows_its_parent_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    parent, child = _load(tmp_path, "")
    before = (parent.source_hash(), child.source_hash())
    parent, child = _load(tmp_path, "    # a changed parent\n")
    after = (parent.source_hash(), child.source_hash())
    assert before[0] != after[0]
    assert before[1] != after[1], "a subclass's key must change when the plugin it extends changes"
    assert child.source_hash() != parent.source_hash()


def test_single_module_plugin_hashes_its_module(tmp_path, monkeypatch):
    import hashlib
    import inspect
    monkeypatch.syspath_prepend(str(tmp_path))
    parent, _ = _load(tmp_path, "")
    assert parent.source_hash() == hashlib.sha256(inspect.getsource(inspect.getmodule(parent)).encode()).hexdigest()
    assert issubclass(parent, Attack)
