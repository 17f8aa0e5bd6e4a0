"""A run's preflight: the cells it reuses and computes, why a zoo differs from the lock, and the time to compute.

:func:`psml_bench.runner.run_grid` makes a :class:`Preflight` once it knows which cells of the grid
are already in ``<out>/cells``, before it computes any: the paragraph it tells the user
(:meth:`Preflight.text`), or, when the run must reuse every cell (``--require-cached``), the one line
it refuses with (:meth:`Preflight.refusal`). A zoo whose weights differ from the lock in
``<out>/zoos.json`` (:mod:`psml_bench.zoo.lock`) is named with the reason its card and the lock give.
The time to compute is an estimate: the mean ``wall_s`` of the grid's cell files already in
``<out>/cells`` (per zoo where it has some), times the cells to compute, over the cells run at once.
It also says the most cells a grid's sequential seeds may add afterwards, and, in its notes, when defended
cells' benign clients will repeat inputs (:func:`repeating_benign_inputs`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..contract.errors import ConfigError
from .grid import Cell, GridConfig
from ..zoo.build import format_duration
from ..zoo.lock import LOCK_FILE, ZooLock, changed_models, lock_of_zoo, read_locks, why_differs


@dataclass(frozen=True)
class Preflight:
    """What a run is about to do, told before it computes a cell."""

    grid: str
    cells_dir: Path
    reused: int
    to_compute: int
    differences: tuple[str, ...]
    """One clause per zoo whose weights differ from the lock of the output directory, with the reason (or whose
    lock, written before the lock had hashes, cannot tell)."""
    estimate_s: float | None
    """The estimated wall time of the cells to compute (None: no stored cell of the grid records its time)."""
    seconds_per_cell: float | None
    jobs: int
    """The cells computed at once (the executor's, at most the cells to compute)."""
    notes: tuple[str, ...] = ()
    """One clause per thing the user should know about the cells to compute (e.g. benign clients that repeat)."""
    sequential_at_most: int = 0
    """The most cells the grid's sequential blocks may add after these (their later seeds up to each block's cap,
    those not stored): the runner asks only for the seeds of headline comparisons still open."""
    sequential_estimate_s: float | None = None
    """The estimated wall time of those cells, at most (None: none, or no stored cell records its time)."""

    def text(self) -> str:
        """The paragraph a run tells before computing."""
        total = self.reused + self.to_compute
        later = ""
        if self.sequential_at_most:
            cost = (f", about {format_duration(self.sequential_estimate_s)} more at most"
                    if self.sequential_estimate_s is not None else "")
            later = (f" Its sequential blocks may then add up to {self.sequential_at_most} cells (later seeds, only "
                     f"for headline comparisons still open){cost}.")
        if not self.to_compute:
            return f"grid {self.grid}: all {total} cells reused from {self.cells_dir}; none to compute." + later
        parts = [f"grid {self.grid}: {self.reused} of {total} cells reused from {self.cells_dir}, "
                 f"{self.to_compute} to compute."]
        parts += [f"{clause[0].upper()}{clause[1:]}." for clause in (*self.differences, *self.notes)]
        if self.estimate_s is None:
            parts.append(f"No cell of grid {self.grid} in {self.cells_dir} records its time, so there is no "
                         "estimate of how long computing takes.")
        else:
            parts.append(f"Computing them takes about {format_duration(self.estimate_s)} (an estimate: "
                         f"{self.seconds_per_cell:.0f} s per cell, the mean wall_s of the grid's stored cells, "
                         f"{self.jobs} at a time).")
        return " ".join(parts) + later

    def refusal(self) -> str:
        """The one line a run that must reuse every cell refuses with."""
        why = f" ({'; '.join(self.differences)})" if self.differences else ""
        return (f"--require-cached: {self.to_compute} of {self.reused + self.to_compute} cells of grid {self.grid} "
                f"are not in {self.cells_dir}{why}; no cell was computed")


def preflight(grid: str, out_dir: Path, cards: Mapping[str, Mapping[str, Any]], reused: int,
              to_compute: Mapping[str, int], jobs: int, sequential: Mapping[str, int] | None = None,
              notes: tuple[str, ...] = ()) -> Preflight:
    """The preflight of a run of ``grid`` into ``out_dir``.

    Args:
        grid: the grid's name (cell files record it).
        out_dir: the leaderboard directory: its ``cells/`` and its lock, ``zoos.json``.
        cards: the zoo card of each zoo the run opened, by the grid's name for it.
        reused: the cells found in ``out_dir/cells``.
        to_compute: the cells to compute, per zoo (by the grid's name for it).
        jobs: the cells the executor runs at once.
        sequential: the most cells the grid's sequential blocks may add, not stored, per zoo (by the grid's name).
        notes: clauses about the cells to compute that the user should read before they run.
    """
    differences = []
    locks = _locks(out_dir / LOCK_FILE)
    for name, card in cards.items():
        lock = lock_of_zoo(locks, name)
        if lock is None:
            continue
        if not lock.hashed:
            if to_compute.get(name):
                differences.append(f"the lock in {out_dir / LOCK_FILE} records no weights hashes for zoo {name} "
                                   "(it was written before the lock), so whether its weights differ cannot be told")
            continue
        changed = changed_models(card, lock)
        if changed:
            differences.append(f"zoo {name} differs from the lock in {out_dir / LOCK_FILE}: {len(changed)} of "
                               f"{len(card['models'])} models have other weights ({', '.join(changed)}): "
                               f"{why_differs(card, lock)}")
    sequential = sequential or {}
    count, at_most = sum(to_compute.values()), sum(sequential.values())
    times = stored_cell_seconds(out_dir / "cells", grid)  # by the rows' zoo: the card's name
    everywhere = [seconds for per_zoo in times.values() for seconds in per_zoo]

    def cell_seconds(counts: Mapping[str, int]) -> float:
        return sum(n * _mean(times.get(str(cards[name].get("zoo", name))) or everywhere)
                   for name, n in counts.items() if n)

    later_s = cell_seconds(sequential) / max(1, min(jobs, at_most)) if everywhere and at_most else None
    if not (everywhere and count):
        return Preflight(grid, out_dir / "cells", reused, count, tuple(differences), None, None, jobs, notes,
                         at_most, later_s)
    seconds = cell_seconds(to_compute)
    at_once = max(1, min(jobs, count))
    return Preflight(grid, out_dir / "cells", reused, count, tuple(differences), seconds / at_once,
                     seconds / count, at_once, notes, at_most, later_s)


def stored_cell_seconds(cells_dir: Path, grid: str) -> dict[str, list[float]]:
    """The ``wall_s`` of every cell file of ``grid`` in ``cells_dir``, per zoo (the rows' ``zoo``)."""
    times: dict[str, list[float]] = {}
    for path in sorted(cells_dir.glob("*.json")) if cells_dir.is_dir() else []:
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # the run warns about it when it reads the cell
        if not isinstance(row, dict) or row.get("grid") != grid:
            continue
        seconds = row.get("wall_s")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
            times.setdefault(str(row.get("zoo")), []).append(float(seconds))
    return times


def _locks(path: Path) -> dict[str, ZooLock]:
    if not path.is_file():
        return {}
    try:
        return read_locks(path)
    except ConfigError:
        return {}  # an unreadable lock cannot explain anything; the run rewrites it


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def repeating_benign_inputs(grid: GridConfig, cards: Mapping[str, Mapping[str, Any]], cells: list[Cell]
                            ) -> tuple[str, ...]:
    """A clause for the preflight's ``notes`` when some of ``cells`` put a defense before benign clients who will
    send more requests than their share of distinct inputs (the attacker pool of the zoo's card, ``cards`` by the
    grid's name for each zoo, over the clients), so that they repeat inputs, which a defense watching each
    client's stream sees (docs/protocol.md, section 4); none otherwise."""
    over = []
    for cell in cells:
        if cell.defense_plugin.spec.name == "none":
            continue
        share = int(cards[grid.zoo_of(cell)]["splits"]["attacker"]) // cell.service.benign_clients
        sent = cell.service.benign_requests_per_client(cell.budget, grid.benign_queries)
        if sent > share:
            over.append((sent, share))
    if not over:
        return ()
    sent, share = max(over)
    return (f"{len(over)} of the cells to compute put a defense before benign clients who each send about "
            f"{sent:,.0f} requests or more, above their share of {share:,} distinct inputs, so they repeat inputs "
            f"(a share of {1 - share / sent:.2f} of their requests or more; docs/protocol.md, section 4)",)
