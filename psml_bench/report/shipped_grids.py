"""The shipped grids beside a leaderboard: which ran, how far, and where their own pages are.

Blocks that do not fit the ``default`` grid's compute budget are grids of their own
(``psml_bench/configs/grids/``), run with ``psml-bench run --grid NAME --out leaderboard/NAME``; their
results are committed under ``leaderboard/NAME/`` with a page of their own. The leaderboard page links
them in one section, listing every shipped grid with how many of its cells have results there. The
section appears only on a page whose directory holds at least one such grid's results, so a
leaderboard written elsewhere (a test's, a user's ``--out``) is unchanged.
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..bench.grid import GridConfig, load_grid
from ..common.files import shipped_configs
from ..contract.errors import ConfigError
from .results import read_results
from .sections import Section, Table
from .sequential_seeds import grid_decisions

NOT_LISTED = ("default", "tiny")
"""The leaderboard's own grid and the test grid: never a shipped grid's row."""


@dataclass(frozen=True)
class ShippedGrid:
    """One shipped grid as the page lists it."""

    name: str
    description: str
    zoos: tuple[str, ...]
    cells: int
    finished: int | None
    """Rows of its ``results.csv`` under the leaderboard directory; None when it has none."""
    failed: int
    sequential: int = 0
    """The most cells its sequential seeds may add to ``cells`` (its declared cells)."""
    resolved: tuple[int, int] | None = None
    """(resolved, all) of its sequential blocks' headline comparisons on its results; None without either."""

    @property
    def status(self) -> str:
        if self.finished is None:
            return "defined, not run"
        done = "complete" if self.finished >= self.cells else "partial"
        failed = f", {self.failed} failed" if self.failed else ""
        if self.sequential:
            return (f"{done}: {self.finished} cells, of {self.cells} declared and up to {self.sequential} more by "
                    f"sequential seeds{failed}" + (f"; {self.resolved[0]} of {self.resolved[1]} headline comparisons "
                                                   "resolved" if self.resolved else ""))
        return f"{done}: {self.finished} of {self.cells} cells{failed}"

    def headline(self) -> str | None:
        """The sentence a leaderboard's headline gives this grid: how many headline comparisons its sequential
        seeds resolved (None for a grid without them or without results)."""
        if not self.resolved:
            return None
        what = self.description.rstrip(".")
        return (f"Shipped grid `{self.name}` ({what[:1].lower()}{what[1:]}; {self.finished} cells): "
                f"{self.resolved[0]} of {self.resolved[1]} headline comparisons resolved, each with its interval on "
                f"its page ({self.name}/index.html).")


def _results(directory: Path) -> tuple[int, int] | None:
    """(rows, failed rows) of ``directory/results.csv``, or None without one."""
    path = directory / "results.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        statuses = [row.get("status", "") for row in csv.DictReader(handle)]
    return len(statuses), sum(status != "ok" for status in statuses)


def headline_resolved(directory: Path, grid: GridConfig) -> tuple[int, int] | None:
    """(resolved, all) headline comparisons of ``grid``'s sequential blocks on its ``results.csv`` in
    ``directory``, decided as its own page decides them; None without sequential blocks or results."""
    path = directory / "results.csv"
    if all(block.sequential is None for block in grid.parts()) or not path.is_file():
        return None
    decided = [decision for _, _, decision in grid_decisions(read_results(path), grid)]
    return sum(d.resolved for d in decided), len(decided)


def first_sentence(text: str) -> str:
    """A grid description's first clause: up to its first ". " or ": " outside parentheses, for a table cell."""
    text = " ".join(text.split())
    depth = 0
    for index, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if depth == 0 and char in ".:" and text[index + 1: index + 2] == " ":
            return text[:index] + "."
    return text


def shipped_grids(out_dir: Path, own: str) -> list[ShippedGrid]:
    """Every shipped grid but ``own`` and the test grid, with its results under ``out_dir/<name>``, if any."""
    found = []
    for name in shipped_configs("grids"):
        if name in NOT_LISTED or name == own:
            continue
        try:
            grid = load_grid(name)
        except ConfigError:  # a grid whose plugins are not installed here (e.g. a dataset zoo's extras)
            continue
        results = _results(out_dir / name)
        description = tomllib.loads(Path(grid.source).read_text()).get("description", "")
        found.append(ShippedGrid(name, first_sentence(description), grid.zoos(), len(grid.cells()),
                                 None if results is None else results[0], 0 if results is None else results[1],
                                 sum(len(grid.sequential_cells(block)) for block in grid.parts()),
                                 headline_resolved(out_dir / name, grid)))
    return found


def has_shipped_results(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds the results of at least one shipped grid (``<name>/results.csv``)."""
    return any((out_dir / name / "results.csv").is_file() for name in shipped_configs("grids")
               if name not in NOT_LISTED)


def shipped_grids_section(grids: list[ShippedGrid]) -> list[Section]:
    """The page's "Shipped grids" section for ``grids`` (:func:`shipped_grids`; none when the page's directory holds
    no shipped grid's results, :func:`has_shipped_results`).

    The descriptions are the shipped configs' own text (no plugin's), so their code spans render."""
    if not grids:
        return []
    rows = [[f"`{g.name}`", ", ".join(f"`{z}`" for z in g.zoos), g.status, g.description]
            for g in grids]
    links = [(f"{g.name}: its page", f"{g.name}/index.html") for g in grids if g.finished is not None]
    return [Section(2, "Shipped grids", [
        "Blocks beyond this grid's compute budget are grids of their own (`psml_bench/configs/grids/`), run with "
        "`psml-bench run --grid NAME --out leaderboard/NAME`; each has its own page (below), tables, `results.csv` "
        "and cells. A partial grid's page shows the cells computed so far (cells are resumable: the same command "
        "computes the rest). Cell counts are of the grid's cells with a result in its directory."],
        Table(["grid", "zoos", "results here", "what it measures"], rows), links=links)]
