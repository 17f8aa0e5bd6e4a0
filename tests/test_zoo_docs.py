"""The zoo tables of docs/protocol.md and docs/zoos.md are generated from the shipped configs and profiles."""

from __future__ import annotations

import runpy
from pathlib import Path

from psml_bench.common.files import shipped_configs

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = runpy.run_path(str(ROOT / "scripts" / "zoo_docs.py"))


def test_zoo_tables_in_the_docs_are_generated_from_the_configs():
    for page in GENERATOR["PAGES"]:
        text = page.read_text()
        assert GENERATOR["render"](text) == text, f"{page} is out of date: run python scripts/zoo_docs.py"


def test_every_shipped_zoo_has_its_generated_model_table():
    zoos_page = (ROOT / "docs" / "zoos.md").read_text()
    blocks = [match.group("name") for match in GENERATOR["BLOCK"].finditer(zoos_page)]
    assert sorted(blocks) == sorted(["overview"] + [f"models-{name}" for name in shipped_configs("zoos")])
    assert "<!-- zoo-docs: splits -->" in (ROOT / "docs" / "protocol.md").read_text()


def test_a_stale_table_is_rewritten_with_one_row_per_configured_model():
    stale = "<!-- zoo-docs: models-fmnist-tiny -->\n| id |\n| `resnet10t` |\n<!-- /zoo-docs -->\n"
    rendered = GENERATOR["render"](stale)
    assert "resnet10t" not in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `resnet-xs`", "| `effnet-xs`", "| `byobnet-xs`"]
