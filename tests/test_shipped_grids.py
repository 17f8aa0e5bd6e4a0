"""The leaderboard page links the shipped grids whose results sit beside it, and says how far each ran."""

from __future__ import annotations

import shutil
from pathlib import Path

from psml_bench.bench.grid import load_grid
from psml_bench.report.results import read_results
from psml_bench.report.sequential_seeds import grid_decisions
from psml_bench.report.leaderboard import write_leaderboard
from psml_bench.report.shipped_grids import first_sentence, shipped_grids
from test_leaderboard import CardOnlyZoo, rows, toy_grid

ROOT = Path(__file__).resolve().parents[1]


def _results(directory, statuses):
    directory.mkdir(parents=True)
    (directory / "results.csv").write_text("zoo,status\n" + "".join(f"fmnist,{s}\n" for s in statuses))


def test_a_page_without_shipped_results_has_no_such_section(tmp_path):
    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path, figures=False)
    assert "Shipped grids" not in (tmp_path / "README.md").read_text()


def test_the_page_lists_every_shipped_grid_and_links_those_with_results(tmp_path):
    _results(tmp_path / "routing", ["ok", "ok", "failed"])
    total = len(load_grid("deployable-defenses").cells())
    _results(tmp_path / "deployable-defenses", ["ok"] * total)
    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path, figures=False)
    readme, page = (tmp_path / "README.md").read_text(), (tmp_path / "index.html").read_text()
    assert "## Shipped grids" in readme
    line = next(x for x in readme.splitlines() if x.startswith("| `routing`"))
    assert "partial: 3 of 36 cells, 1 failed" in line
    assert f"complete: {total} of {total} cells" in readme
    assert "| `threat-models` " in readme and "defined, not run" in readme
    sequential = load_grid("headline-sequential")
    declared, later = len(sequential.cells()), sum(len(sequential.sequential_cells(b)) for b in sequential.parts())
    assert "| `headline-sequential` " in readme and "defined, not run" in next(
        x for x in readme.splitlines() if x.startswith("| `headline-sequential`"))
    assert "- [routing: its page](routing/index.html)" in readme
    assert '<a href="deployable-defenses/index.html">deployable-defenses: its page</a>' in page
    assert 'href="threat-models/index.html"' not in page  # no results: no link
    assert "| `default` " not in readme and "| `tiny` " not in readme
    committed = ROOT / "leaderboard" / "headline-sequential" / "results.csv"
    (tmp_path / "headline-sequential").mkdir()
    shutil.copy(committed, tmp_path / "headline-sequential" / "results.csv")
    found = {g.name: g for g in shipped_grids(tmp_path, "routing")}["headline-sequential"]
    count = len(committed.read_text().splitlines()) - 1  # a sequential grid's rows outnumber its declared cells
    decided = [d for _, _, d in grid_decisions(read_results(committed), sequential)]
    resolved = f"{sum(d.resolved for d in decided)} of {len(decided)} headline comparisons resolved"
    assert count > declared and found.status == (
        f"complete: {count} cells, of {declared} declared and up to {later} more by sequential seeds; {resolved}")
    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path, figures=False)
    headline = (tmp_path / "README.md").read_text().split("## Headline")[1].split("\n- ")[1]
    assert headline.startswith("Shipped grid `headline-sequential`") and resolved in headline  # the first bullet
    listed = {g.name for g in shipped_grids(tmp_path, "routing")}
    assert "routing" not in listed and "deployable-defenses" in listed  # a grid's own page does not list itself


def test_first_sentence():
    assert first_sentence("What load-aware routing does (issue 25), on fmnist. More text. ") == \
        "What load-aware routing does (issue 25), on fmnist."
    assert first_sentence("One sentence only") == "One sentence only"
    assert first_sentence("Cells under the router (infaas: the cheapest), compared: more") == \
        "Cells under the router (infaas: the cheapest), compared."


def test_the_ownership_table_reports_claims_queries_and_innocent_claims():
    """Settings whose cells kept watermark pairs get a row: claim rate, queries to claim, innocent claims."""
    import math
    from dataclasses import replace

    from psml_bench.report.leaderboard import leaderboard_sections
    from psml_bench.report.results import results_frame

    marked = []
    for row in rows():
        if row.defense == "spec-noise(scale=0.05)" and row.status == "ok":  # stands in for a watermark setting
            claimed = row.seed == 0
            row = replace(row, watermark_pairs=4.0 + row.seed, watermark_agreement=0.9 if claimed else 0.2,
                          ownership_queries=3.0 if claimed else math.nan, ownership_claimed=float(claimed),
                          innocent_claims=0.0, innocent_agreement=0.1)
        marked.append(row)
    frame = results_frame(marked)
    sections = leaderboard_sections(frame, CardOnlyZoo(), toy_grid())
    owned = next(s for s in sections if s.title == "Ownership")
    assert owned.table.rows and all(r[2] == "spec-noise(scale=0.05)" for r in owned.table.rows)
    first = dict(zip(owned.table.headers, owned.table.rows[0]))
    assert first["claimed"].startswith("0.500 ± ") and first["queries to claim (median, range)"] == "3 (3-3, 1 claimed)"
    assert first["innocent claims"] == "0.000 ± 0.000" and first["seeds"] == "2"
    assert len(owned.table.cells[0]) == 2
    assert not any(s.title == "Ownership" for s in leaderboard_sections(results_frame(rows()), CardOnlyZoo(),
                                                                         toy_grid()))
