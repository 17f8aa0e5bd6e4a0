"""The run loop: the cells of a grid not yet in the result cache, run by an executor, then the leaderboard.

Each finished cell is written at once, atomically, to ``<out>/cells/<key>.json`` by the driver,
sealed with the sha256 of its row (``content_sha256``); a later run with the same key reuses it if
the seal holds, and recomputes it, with a warning, if not (see :mod:`psml_bench.bench.cell` for what a
key hashes). The driver creates the output directory, writable by it alone, before any attack runs.
Before computing, a run tells its preflight (:mod:`psml_bench.bench.preflight`: the cells it reuses and
computes, why a zoo differs from the lock in ``<out>/zoos.json``, an estimate of the time), or refuses
to compute when asked to reuse every cell. A block with sequential seeds then gets more seeds, round by
round, where its headline comparisons are not resolved (:func:`sequential_rounds`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .serving.capacity import CapacityCache
from .bench.cell import CellTask, cell_key, failed_row, provenance, zoo_identity
from .bench.context import RunContext
from .bench.row import CellRow
from .common.files import content_hash, write_atomic
from .contract.errors import ConfigError, RecomputeRefused, sanitise
from .bench.executor import Executor, InlineExecutor, LocalExecutor, RayExecutor
from .bench.grid import Cell, GridConfig
from .bench.preflight import Preflight, preflight, repeating_benign_inputs
from .bench import serving_curves
from .report.leaderboard import write_leaderboard
from .report.sequential_seeds import cells_asked
from .serving.service import CAPACITY_FILE, PoolAnswers, slo_capacity
from .zoo.model_zoo import Zoo
from .zoo.build import open_zoo

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    rows: list[CellRow]
    cached: int
    computed: int
    failed: int
    seconds: float
    out_dir: Path
    preflight: Preflight | None = None
    rounds: list[tuple[str, ...]] = field(default_factory=list)
    """Per round of sequential seeds, the keys of the cells it added to the run (computed or reused)."""


def make_executor(name: str, *, jobs: int = 0, timeout_s: float | None = None, memory_mb: int | None = None,
                  address: str | None = None, device: torch.device | str = "cpu") -> Executor:
    """An executor by name: ``local`` (process pool), ``ray`` or ``inline`` (this process, for debugging),
    for cells on ``device``."""
    if jobs <= 0:
        jobs = os.cpu_count() or 1
    if name == "local":
        return LocalExecutor(jobs, timeout_s, memory_mb, gpu=torch.device(device).type == "cuda")
    if name == "ray":
        if torch.device(device).type != "cpu":
            raise ConfigError("the ray executor runs cells on the CPU only (its tasks hold no GPU); use "
                              "--executor local or inline with --device cuda")
        return RayExecutor(address, timeout_s, num_cpus=jobs)
    if name == "inline":
        return InlineExecutor()
    raise ConfigError(f"unknown executor '{name}'; available: inline, local, ray")


def run_grid(grid: GridConfig, out_dir: Path, *, cache_dir: Path | None = None, executor: Executor | None = None,
             progress: bool = True, profile: Path | None = None, retry_failed: bool = False,
             device: torch.device | str = "cpu", context: RunContext | None = None,
             on_preflight: Callable[[Preflight], None] | None = None, require_cached: bool = False) -> RunSummary:
    """Run every cell of ``grid`` not already in ``out_dir/cells``; return all rows of the grid.

    Each finished cell is written at once (atomically) by this process, so an interrupted run
    keeps every cell that finished. ``retry_failed`` recomputes cells whose stored row failed.
    ``device``: where the cells' forward passes, surrogate training and scoring run (part of the
    key of any cell not on the CPU). ``context``: the run's state for cells run in this process
    (default: a fresh :class:`~psml_bench.bench.context.RunContext`; workers hold their own).
    ``on_preflight`` is told the run's preflight before any cell is computed (the zoos are opened,
    and built if needed, first: their weights decide the keys). A block with sequential seeds then
    gets its later seeds, round by round (:func:`sequential_rounds`).

    Raises:
        RecomputeRefused: ``require_cached`` and a cell of the grid (or one its sequential seeds ask for) is not
            in ``out_dir/cells`` (no cell is computed).
    """
    started = time.perf_counter()
    device = torch.device(device)
    context = context or RunContext()
    executor = executor or make_executor("local", device=device)
    cells = grid.cells()
    zoos = open_zoos(grid, cells, cache_dir, progress=progress, profile=profile)
    prepare_out_dir(out_dir, create=False)  # a foreign or linked directory is refused before its cells are read
    store = GridCells(grid, zoos, out_dir / "cells", device, profile, retry_failed)
    tasks = store.missing(cells)
    later = Counter(grid.zoo_of(cell) for block in grid.parts() for cell in grid.sequential_cells(block)
                    if not store.stored(cell))
    cards = {name: zoo.card for name, zoo in zoos.items()}
    plan = preflight(grid.name, out_dir, cards, store.cached, Counter(grid.zoo_of(task.cell) for task in tasks),
                     executor.jobs, later, repeating_benign_inputs(grid, cards, [task.cell for task in tasks]))
    if require_cached and tasks:
        raise RecomputeRefused(plan.refusal())
    prepare_out_dir(out_dir)
    if on_preflight is not None:
        on_preflight(plan)
    store.compute(tasks, executor, context, progress=progress)
    rounds = sequential_rounds(store, executor, context, progress=progress, require_cached=require_cached)
    # the serving curves and capacity kept of every defense setting (benign clients only; missing entries only)
    context.submissions()  # a submitted defense's stand-in is registered here too
    serving_curves.update(grid, zoos, cells, out_dir, progress=tqdm.write if progress else None)
    ordered = sorted(store.rows.values(), key=CellRow.order)
    write_leaderboard(ordered, zoos, grid, out_dir)
    failed = sum(r.status != "ok" for r in ordered)
    return RunSummary(ordered, store.cached, store.computed, failed, time.perf_counter() - started, out_dir, plan,
                      rounds)


class GridCells:
    """A run's rows so far, by cell key: those read from the cells directory and those computed, each written there
    as it finishes."""

    def __init__(self, grid: GridConfig, zoos: dict[str, Zoo], cells_dir: Path, device: torch.device,
                 profile: Path | None, retry_failed: bool):
        self.grid, self.zoos, self.cells_dir, self.device = grid, zoos, cells_dir, device
        self.rows: dict[str, CellRow] = {}
        self.cached = self.computed = 0
        self._profile = str(profile) if profile else None
        self._retry_failed = retry_failed
        self._identities = {name: zoo_identity(zoo) for name, zoo in zoos.items()}
        self._provenance = provenance(device)

    def key(self, cell: Cell) -> str:
        name = self.grid.zoo_of(cell)
        return cell_key(self.zoos[name], self.grid, cell, self._identities[name], self.device)

    def path(self, key: str) -> Path:
        """The cell file of the cell keyed ``key``."""
        return self.cells_dir / f"{key}.json"

    def stored(self, cell: Cell) -> bool:
        """Whether the cells directory holds a file for ``cell`` (read or not, failed or not)."""
        return self.path(self.key(cell)).is_file()

    def missing(self, cells: list[Cell]) -> list[CellTask]:
        """The tasks of the ``cells`` to compute; each not among the rows yet but stored (sealed, and not failed
        when failed ones are retried) is read into the rows instead."""
        tasks = []
        for cell in cells:
            name = self.grid.zoo_of(cell)
            key = self.key(cell)
            if key in self.rows:
                continue
            path = self.path(key)
            if path.is_file():
                row = read_cell(path)
                if row is not None and not (self._retry_failed and row.status != "ok"):
                    self.rows[key] = row
                    self.cached += 1
                    continue
            tasks.append(CellTask(str(self.zoos[name].directory), self._profile, self._identities[name], self.grid,
                                  cell, key, self._provenance, str(self.device)))
        return tasks

    def compute(self, tasks: list[CellTask], executor: Executor, context: RunContext, *, progress: bool,
                desc: str = "") -> None:
        """Run ``tasks`` on ``executor``; write each row (a failed one if the worker gave none) as it comes."""
        bar = tqdm(total=len(tasks), desc=desc or f"grid {self.grid.name}", disable=not progress, unit="cell")
        failed = [0]
        bar.set_postfix(cached=self.cached, failed=0)

        def on_result(task: CellTask, row: CellRow | None, error: str) -> None:
            row = row if row is not None else failed_row(self.zoos[self.grid.zoo_of(task.cell)], task,
                                                         sanitise(error, MAX_ERROR_CHARS))
            row = replace(row, error=sanitise(row.error or "", MAX_ERROR_CHARS))
            self.rows[task.key] = write_cell(self.path(task.key), row)
            failed[0] += row.status != "ok"
            bar.set_postfix(cached=self.cached, failed=failed[0])
            bar.update()

        if self.device.type == "cpu":
            for name in dict.fromkeys(self.grid.zoo_of(task.cell) for task in tasks):
                PoolAnswers.of(self.zoos[name])  # every model's answers on the pool, here rather than in each worker
        check_capacities(self.grid, self.zoos, [task.cell for task in tasks])
        executor.map(tasks, on_result, context)
        bar.close()
        self.computed += len(tasks)


def sequential_rounds(store: GridCells, executor: Executor, context: RunContext, *, progress: bool,
                      require_cached: bool) -> list[tuple[str, ...]]:
    """Add seeds to the sequential blocks' unresolved headline comparisons, round by round, until none asks for one
    (:mod:`psml_bench.report.sequential_seeds` decides from the rows alone); return each round's cell keys.

    Raises:
        RecomputeRefused: ``require_cached`` and a round needs a cell not in the cells directory.
    """
    grid, names = store.grid, {name: zoo.name for name, zoo in store.zoos.items()}
    rounds: list[tuple[str, ...]] = []
    while True:
        asked = {store.key(cell): cell for cell in cells_asked(grid, list(store.rows.values()), names)}
        fresh = {key: cell for key, cell in asked.items() if key not in store.rows}
        if not fresh:
            if asked:  # a seed asked for whose cells are all here: it would be asked again forever
                log.warning("grid %s: sequential seeds ask for %d cells the run already has; stopping", grid.name,
                            len(asked))
            return rounds
        rounds.append(tuple(fresh))
        tasks = store.missing(list(fresh.values()))
        if require_cached and tasks:
            raise RecomputeRefused(f"--require-cached: round {len(rounds)} of the sequential seeds of grid {grid.name} "
                                   f"needs {len(tasks)} cells not in {store.cells_dir}; no cell was computed")
        log.info("grid %s, sequential seeds, round %d: %d cells (%d reused, %d to compute)", grid.name, len(rounds),
                 len(fresh), len(fresh) - len(tasks), len(tasks))
        if tasks:
            store.compute(tasks, executor, context, progress=progress,
                          desc=f"grid {grid.name}, sequential seeds round {len(rounds)}")


def check_capacities(grid: GridConfig, zoos: dict[str, Zoo], cells: list[Cell]) -> None:
    """Search each zoo's capacity at the SLO for every service config of ``cells`` here, once, into the zoo's file
    (the workers read it), so that a service with no load meeting its SLO fails the run before any cell.

    Raises:
        ConfigError: a ``replicas`` table names a model the zoo lacks, or no load meets a service's SLO target.
    """
    for name, zoo in zoos.items():
        capacities = CapacityCache(zoo.directory / CAPACITY_FILE)
        for config in dict.fromkeys(cell.service for cell in cells if grid.zoo_of(cell) == name):
            try:
                slo_capacity(zoo, grid.policy, config, capacities)
            except ConfigError as exc:
                raise ConfigError(f"{grid.source}: zoo {name}: field 'service': {exc}") from None


def check_profile(grid: GridConfig, profile: Path | str | None) -> None:
    """Refuse a profile file for a grid on several zoos: one profile routes one zoo's models."""
    if profile and len(grid.zoos()) > 1:
        raise ConfigError(f"--profile routes one zoo, but grid {grid.name} runs on the zoos {', '.join(grid.zoos())}; "
                          "run it without --profile (each zoo then routes on its reference profile)")


def open_zoos(grid: GridConfig, cells: list[Cell], cache_dir: Path | None = None, *, progress: bool = True,
              profile: Path | None = None) -> dict[str, Zoo]:
    """Every zoo the grid's cells run on, by the name the grid gives it, the main zoo first (each built if
    needed); each cell's victim role is checked on its zoo before any work.

    Raises:
        ConfigError: ``profile`` is given for a grid on several zoos (a profile file routes one zoo), or
            a victim role does not exist on a zoo.
    """
    check_profile(grid, profile)
    names = [name for name in grid.zoos() if any(grid.zoo_of(cell) == name for cell in cells)]
    zoos = {name: open_zoo(name, cache_dir, progress=progress, profile=profile) for name in names}
    for name, zoo in zoos.items():
        for victim in dict.fromkeys(cell.victim for cell in cells if grid.zoo_of(cell) == name):
            try:
                zoo.role(victim)  # a bad role fails before any work
            except ConfigError as exc:
                raise ConfigError(f"zoo {name}: {exc}" if len(zoos) > 1 else str(exc)) from None
    return zoos


MAX_ERROR_CHARS = 500
"""Longest error a cell row keeps (one line, no control characters)."""
SEAL = "content_sha256"
"""The field of a cell file holding the sha256 of the rest of it."""


def prepare_out_dir(out_dir: Path, *, create: bool = True) -> None:
    """Create ``out_dir`` and its ``cells/`` for this user alone to write; refuse a symlink or another owner's.

    ``create=False`` only checks the ones that exist (before a run reads its cells, and may refuse to compute).
    """
    for directory in (out_dir, out_dir / "cells"):
        if directory.is_symlink():
            raise ConfigError(f"output directory {directory} is a symbolic link; refusing to write through it")
        if not create and not directory.is_dir():
            continue
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = directory.lstat()
        if info.st_uid != os.geteuid():
            raise ConfigError(f"output directory {directory} belongs to uid {info.st_uid}, not to this user; "
                              "refusing to write results into it")
        if info.st_mode & 0o022:
            directory.chmod(info.st_mode & 0o755)  # nobody else may add or replace a cell file


def write_cell(path: Path, row: CellRow) -> CellRow:
    """Write ``row`` atomically, sealed with its content hash; return it as a later run will read it."""
    stored = json.loads(json.dumps(row.as_dict(), sort_keys=True))
    write_atomic(path, json.dumps({**stored, SEAL: content_hash(stored)}, indent=1, sort_keys=True) + "\n")
    return CellRow.from_dict(stored)


def read_cell(path: Path) -> CellRow | None:
    """A stored row whose seal holds; None (with a warning: it is recomputed) for an unreadable or altered file,
    or one whose fields this harness cannot read."""
    try:
        row = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable cell file %s; recomputing it", path)
        return None
    seal = row.pop(SEAL, None) if isinstance(row, dict) else None
    if seal is None:
        log.warning("cell file %s has no content hash (written before sealing, or altered); recomputing it", path)
        return None
    if seal != content_hash(row):
        log.warning("cell file %s was altered (its content hash does not match); recomputing it", path)
        return None
    try:
        return CellRow.from_dict(row)
    except ValueError as exc:
        log.warning("cell file %s does not hold a row (%s); recomputing it", path, exc)
        return None
