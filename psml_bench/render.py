"""Re-rendering a leaderboard from its committed cells, without recomputing a cell or opening a built zoo.

A leaderboard directory holds ``cells/<key>.json`` (each sealed with its content hash) and
``zoos.json`` (:mod:`psml_bench.report.zoo_summary`: per zoo, the parts of its card the page reads),
both written by every run. :func:`rerender` reads them and writes ``results.csv``, the figures,
``README.md`` and ``index.html`` again, so a change to the ranking or the page reaches a committed
leaderboard on a machine where the zoo weights are not built::

    psml-bench render --grid default --out leaderboard
"""

from __future__ import annotations

from pathlib import Path

from .contract.errors import ConfigError
from .bench.grid import GridConfig
from .bench.row import CellRow
from .report.leaderboard import write_leaderboard
from .runner import read_cell
from .report.zoo_summary import read_zoo_summaries


def committed_rows(out_dir: Path) -> list[CellRow]:
    """Every sealed cell of ``out_dir/cells``, in the run's row order.

    Raises:
        ConfigError: a cell file is unreadable or its seal does not hold (re-rendering never recomputes).
    """
    rows = []
    for path in sorted((out_dir / "cells").glob("*.json")):
        row = read_cell(path)
        if row is None:
            raise ConfigError(f"cell file {path} is unreadable or altered; re-rendering recomputes nothing")
        rows.append(row)
    return sorted(rows, key=CellRow.order)


def rerender(grid: GridConfig, out_dir: Path, *, figures: bool = True) -> int:
    """Write ``out_dir``'s leaderboard again from its cells and zoo summaries; return the number of rows.

    Every cell file of ``out_dir/cells`` is a row, as in the run that wrote them.
    """
    zoos = read_zoo_summaries(out_dir)
    rows = committed_rows(out_dir)
    if not rows:
        raise ConfigError(f"{out_dir / 'cells'} holds no cell; nothing to render")
    write_leaderboard(rows, zoos, grid, out_dir, figures=figures)
    return len(rows)
