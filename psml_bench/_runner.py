"""The run loop: the cells of a grid not yet in the result cache, run by an executor, then the leaderboard.

Each finished cell is written at once, atomically, to ``<out>/cells/<key>.json`` by the driver;
a later run with the same key reuses it (see :mod:`psml_bench._cell` for what a key hashes).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ._cell import CellTask, cell_key, failed_row, provenance, zoo_identity
from ._config import write_atomic
from ._errors import ConfigError
from ._executor import Executor, InlineExecutor, LocalExecutor, RayExecutor
from ._grid import GridConfig
from ._leaderboard import write_leaderboard
from ._service import PoolAnswers
from ._zoo_build import open_zoo

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    rows: list[dict[str, Any]]
    cached: int
    computed: int
    failed: int
    seconds: float
    out_dir: Path


def make_executor(name: str, *, jobs: int = 0, timeout_s: float | None = None, memory_mb: int | None = None,
                  address: str | None = None) -> Executor:
    """An executor by name: ``local`` (process pool), ``ray`` or ``inline`` (this process, for debugging)."""
    if jobs <= 0:
        jobs = os.cpu_count() or 1
    if name == "local":
        return LocalExecutor(jobs, timeout_s, memory_mb)
    if name == "ray":
        return RayExecutor(address, timeout_s, num_cpus=jobs)
    if name == "inline":
        return InlineExecutor()
    raise ConfigError(f"unknown executor '{name}'; available: inline, local, ray")


def run_grid(grid: GridConfig, out_dir: Path, *, cache_dir: Path | None = None, executor: Executor | None = None,
             progress: bool = True, profile: Path | None = None, retry_failed: bool = False) -> RunSummary:
    """Run every cell of ``grid`` not already in ``out_dir/cells``; return all rows of the grid.

    Each finished cell is written at once (atomically) by this process, so an interrupted run
    keeps every cell that finished. ``retry_failed`` recomputes cells whose stored row failed.
    """
    started = time.perf_counter()
    executor = executor or make_executor("local")
    zoo = open_zoo(grid.zoo, cache_dir, progress=progress, profile=profile)
    for victim in grid.victims:
        zoo.role(victim)  # a bad role fails before any work
    cells_dir = out_dir / "cells"
    rows: dict[str, dict[str, Any]] = {}
    tasks = []
    profile_arg = str(profile) if profile else None
    identity = zoo_identity(zoo)
    run_provenance = provenance()
    for cell in grid.cells():
        key = cell_key(zoo, grid, cell, identity)
        path = cells_dir / f"{key}.json"
        if path.is_file():
            try:
                row = json.loads(path.read_text())
                if not (retry_failed and row.get("status") != "ok"):
                    rows[key] = row
                    continue
            except json.JSONDecodeError:
                log.warning("ignoring unreadable cell file %s", path)
        tasks.append(CellTask(str(zoo.directory), profile_arg, identity, grid, cell, key, run_provenance))
    cached = len(rows)
    bar = tqdm(total=len(tasks), desc=f"grid {grid.name}", disable=not progress, unit="cell")
    counts = {"failed": 0}
    bar.set_postfix(cached=cached, failed=0)

    def on_result(task: CellTask, row: dict[str, Any] | None, error: str) -> None:
        row = row if row is not None else failed_row(zoo, task, error)
        write_atomic(cells_dir / f"{task.key}.json", json.dumps(row, indent=1, sort_keys=True) + "\n")
        rows[task.key] = row
        counts["failed"] += row["status"] != "ok"
        bar.set_postfix(cached=cached, failed=counts["failed"])
        bar.update()

    if tasks:
        PoolAnswers.of(zoo)  # every model's answers on the pool, computed once here rather than in each worker
    executor.map(tasks, on_result)
    bar.close()
    ordered = sorted(rows.values(), key=_row_order)
    write_leaderboard(ordered, zoo, grid, out_dir)
    failed = sum(r["status"] != "ok" for r in ordered)
    return RunSummary(ordered, cached, len(tasks), failed, time.perf_counter() - started, out_dir)


def _row_order(row: dict[str, Any]) -> tuple:
    """Rows by cell, whatever was cached: cells differing only in their service sort by it."""
    return (row["zoo"], row["victim"], row["attack"], row["defense"], int(row["budget"]), float(row["load"]),
            int(row["benign_clients"]), float(row["attacker_rate"]), bool(row["latency_visible"]), int(row["seed"]))
