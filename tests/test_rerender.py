"""Re-rendering a leaderboard from its committed cells and zoo summaries, with no zoo and no cell recomputed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from psml_bench.bench.row import CellRow

from psml_bench.contract.errors import ConfigError
from psml_bench.report.leaderboard import write_leaderboard
from psml_bench.render import rerender
from psml_bench.report.zoo_summary import ZOO_SUMMARIES, read_zoo_summaries
from psml_bench.runner import write_cell
from test_leaderboard import CardOnlyZoo, rows, toy_grid

PAGES = ("README.md", "index.html", "results.csv")


def _cells():
    """The toy rows with the service fields a run records, in the run's row order."""
    return sorted((replace(row, benign_clients=8, attacker_rate=1.0, latency_visible=False) for row in rows()),
                  key=CellRow.order)


def _committed(tmp_path):
    (tmp_path / "cells").mkdir()
    for row in _cells():
        write_cell(tmp_path / "cells" / f"{row.cell_key}.json", row)
    write_leaderboard(_cells(), CardOnlyZoo(), toy_grid(), tmp_path, figures=False)
    return {name: (tmp_path / name).read_bytes() for name in PAGES}


def test_rerender_from_cells_and_summaries_is_byte_identical(tmp_path):
    before = _committed(tmp_path)
    summary = read_zoo_summaries(tmp_path)["toy"]
    assert summary.frontier == CardOnlyZoo.frontier and summary.entry("slow").accuracy == 0.9
    for name in PAGES:
        (tmp_path / name).unlink()
    assert rerender(toy_grid(), tmp_path, figures=False) == len(rows())
    assert {name: (tmp_path / name).read_bytes() for name in PAGES} == before


def test_rerender_refuses_an_altered_cell_and_a_missing_summary(tmp_path):
    _committed(tmp_path)
    path = next((tmp_path / "cells").glob("*.json"))
    row = json.loads(path.read_text())
    path.write_text(json.dumps({**row, "fidelity": 0.99}))
    with pytest.raises(ConfigError, match="altered"):
        rerender(toy_grid(), tmp_path, figures=False)
    (tmp_path / ZOO_SUMMARIES).unlink()
    with pytest.raises(ConfigError, match="zoo summaries"):
        rerender(toy_grid(), tmp_path, figures=False)
