"""The typed result row: every committed cell file read and written again byte for byte, older cells' missing
fields as None (NaN in the table, empty in results.csv), and rows this harness cannot read refused."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from psml_bench.bench.row import FIELDS, VOLATILE_FIELDS, CellRow
from psml_bench.report.results import RESULT_COLUMNS, results_csv, results_frame
from psml_bench.runner import read_cell, write_cell

CELLS = sorted((Path(__file__).resolve().parents[1] / "leaderboard").glob("**/cells/*.json"))
"""Every committed cell file: the leaderboard's and each shipped grid's beside it."""
OLD_CELL = {  # a cell file of the first committed leaderboard: no service, costs, ownership, flags nor recipe
    "accuracy": 0.8133, "accuracy_norm": 0.9012632978723405, "attack": "naive", "budget": 1000,
    "cell_key": "000c4a660a4c22bab36460a923d50cb2", "defense": "none", "device": "cpu (x86_64)", "error": "",
    "fidelity": 0.8359, "fingerprint_queries": 0, "git_commit": "c527cfa4aca2a79c55e928d7f257736145d026cb",
    "goodput": 1.0, "grid": "default", "profile": "fmnist.json", "psml_bench": "0.1.0", "queries": 1000, "seed": 1,
    "status": "ok", "threads": "1", "timm": "1.0.31", "torch": "2.14.1+cu130", "victim": "rank:1",
    "victim_hit_rate": 0.13, "victim_model": "resnet18", "wall_s": 11.73, "zoo": "fmnist"}


def test_every_committed_cell_is_read_and_written_again_byte_for_byte(tmp_path):
    assert CELLS, "the committed leaderboard has cells"
    for path in CELLS:
        row = read_cell(path)
        assert isinstance(row, CellRow) and isinstance(row.load, float) and isinstance(row.budget, int)
        written = write_cell(tmp_path / "cell.json", row)
        assert (tmp_path / "cell.json").read_bytes() == path.read_bytes(), path
        stored = json.loads(path.read_text())
        del stored["content_sha256"]
        assert json.dumps(written.as_dict(), sort_keys=True) == json.dumps(stored, sort_keys=True)


def test_an_older_cell_lacks_the_newer_fields_and_keeps_lacking_them():
    row = CellRow.from_dict(OLD_CELL)
    assert row.load is None and row.attacker_time_s is None and row.flags is None and row.surrogate_recipe is None
    assert row.as_dict() == OLD_CELL  # nothing added: written again, it is the file it was
    frame = results_frame([row, replace(row, seed=0, load=0.5, attacker_time_s=1.25)])
    assert list(frame.columns) == RESULT_COLUMNS  # no column for a field no row has (flags, recipe)
    assert math.isnan(frame.loc[1, "load"]) and frame.loc[0, "load"] == 0.5  # the run's order: seed 0 first
    assert frame["attacker_time_s"].dtype == float and math.isnan(frame.loc[1, "attacker_time_s"])
    line = results_csv(frame).splitlines()[2].split(",")
    assert line[RESULT_COLUMNS.index("load")] == "" and line[RESULT_COLUMNS.index("attacker_time_s")] == ""
    assert line[RESULT_COLUMNS.index("budget")] == "1000" and line[RESULT_COLUMNS.index("fidelity")] == "0.835900"


def test_a_row_this_harness_cannot_read_is_refused(tmp_path, caplog):
    with pytest.raises(ValueError, match="unknown row field"):
        CellRow.from_dict({**OLD_CELL, "speed": 3.0})
    with pytest.raises(ValueError, match="'load'"):
        CellRow.from_dict({**OLD_CELL, "load": ""})  # a missing value is absent, never ""
    with pytest.raises(ValueError, match="'budget'"):
        CellRow.from_dict({**OLD_CELL, "budget": 1000.0})
    with pytest.raises(ValueError, match="'latency_visible'"):
        CellRow.from_dict({**OLD_CELL, "latency_visible": None})
    with pytest.raises(ValueError, match="lacks the field"):
        CellRow.from_dict({k: v for k, v in OLD_CELL.items() if k != "status"})
    # a sealed file with such a row is recomputed by a run (and refused by a re-render), like an altered one
    path = tmp_path / "cell.json"
    write_cell(path, CellRow.from_dict(OLD_CELL))
    from psml_bench.common.files import content_hash

    stored = {**OLD_CELL, "speed": 3.0}
    path.write_text(json.dumps({**stored, "content_sha256": content_hash(stored)}))
    assert read_cell(path) is None and "does not hold a row" in caplog.text


def test_the_result_columns_are_fields_but_the_derived_goodput_ratio():
    assert set(RESULT_COLUMNS) - set(FIELDS) == {"goodput_ratio"}
    assert set(VOLATILE_FIELDS) <= set(FIELDS) - set(RESULT_COLUMNS)


def test_rows_without_a_load_fill_the_same_tables():
    """Cells written before cells had a service have no load: the page keeps every one of them (a missing load
    is a load of its own, never a dropped group) and pairs and ranks them as it does the rows with a load."""
    from psml_bench.report.leaderboard import leaderboard_sections
    from test_leaderboard import CardOnlyZoo, rows, toy_grid

    def tables(data):
        sections = leaderboard_sections(results_frame(data), CardOnlyZoo(), toy_grid())
        return [(s.title, [[c for i, c in enumerate(r) if i not in _load_columns(s.table.headers)]
                           for r in s.table.rows]) for s in sections if s.table is not None]

    with_load = tables(rows())
    without = tables([replace(row, load=None) for row in rows()])
    assert sum(len(t) for _, t in with_load) > 20 and without == with_load


def _load_columns(headers: list[str]) -> set[int]:
    return {i for i, h in enumerate(headers) if h == "load"}
