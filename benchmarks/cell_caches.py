"""What the cell caches save, and proof that they change no number: committed cells re-run with them off and on.

    python benchmarks/cell_caches.py [--grid default] [--cells SELECTOR ...] [--repeats 1] [--leaderboard leaderboard]

A selector is ``attack|defense|seed`` (budget 1000, load 0.5, latencies hidden unless it adds
``|budget|load|latency_visible``). Each selected cell runs in this process on one thread as a
worker runs it, first with the caches off (the surrogate trained in the attack process, every
surrogate scored), then on, from empty caches, the cells in the order given: the worker trains
each fresh surrogate once per identical request (:mod:`psml_bench.isolation.trainer`) and scores each
surrogate once per identical weights (``psml_bench.bench.cell.score_surrogate``). Every metric, flag,
status and recipe of both runs is compared with the committed cell file (``<leaderboard>/cells/<key>.json``)
bit for bit. Prints JSON: per cell the median wall time off and on, their ratio, which caches it
hit and whether both runs equal the committed row; for the grid, the share of its committed cells
whose surrogate an earlier cell already had (they hit both caches in a cold run) and its summed
cell hours, committed and estimated with those cells at the measured ratio. Run it alone
(timings are noisy otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from psml_bench.isolation import trainer as _training
from psml_bench.bench.cell import CELL_THREADS, METRICS, cell_key, run_cell, zoo_identity
from psml_bench.bench.context import RunContext
from psml_bench.bench.grid import load_grid
from psml_bench.isolation.attack_process import prestart
from psml_bench.serving.service import PoolAnswers
from psml_bench.zoo.build import open_zoo

DEFAULT_CELLS = ["psml|none|0", "psml|spec-quantize(step=0.1)|0", "psml(labels=hard)|top-k(k=2)|0",
                 "psml(labels=hard)|reverse-sigmoid(beta=0.7)|0"]
COMPARED = METRICS + ("flags", "status", "error", "surrogate_recipe")


def _select(grid, selectors: list[str]):
    cells = []
    for selector in selectors:
        attack, defense, seed, *rest = selector.split("|")
        budget, load, visible = (rest + ["1000", "0.5", "False"][len(rest):])[:3]
        found = [c for c in grid.cells() if (c.attack_plugin.label, c.defense_plugin.label, c.seed, c.budget,
                                             c.service.load, c.service.latency_visible)
                 == (attack, defense, int(seed), int(budget), float(load), visible == "True")]
        if not found:
            raise SystemExit(f"no cell of grid {grid.name} matches {selector!r}")
        cells.append(found[0])
    return cells


def _same(value, committed) -> bool:
    if isinstance(value, float) and isinstance(committed, float) and math.isnan(value) and math.isnan(committed):
        return True
    return value == committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="default")
    parser.add_argument("--cells", nargs="+", default=DEFAULT_CELLS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--leaderboard", type=Path, default=Path("leaderboard"))
    args = parser.parse_args()
    torch.set_num_threads(CELL_THREADS)
    grid = load_grid(args.grid)
    zoo = open_zoo(grid.zoo, progress=False)
    identity = zoo_identity(zoo)
    cells = _select(grid, args.cells)
    prestart()  # the sandbox's start is a worker's, not a cell's
    PoolAnswers.of(zoo)
    walls: dict[str, dict[str, list[float]]] = {s: {"off": [], "on": []} for s in args.cells}
    hits: dict[str, list[str]] = {}
    equal: dict[str, bool] = {s: True for s in args.cells}
    answer = _training.SurrogateTrainer.answer
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            with tempfile.TemporaryDirectory() as cache:
                _training.clear_memory()
                context = RunContext(training_cache=Path(cache))  # a fresh score memo and trainings cache per mode
                _training.SurrogateTrainer.answer = answer if mode == "on" else (lambda self, h, t: ("ok", None))
                try:
                    for selector, cell in zip(args.cells, cells):
                        if mode == "off":
                            context.scores.clear()
                        before, scores = dict(_training.STATS), len(context.scores)
                        started = time.perf_counter()
                        row = json.loads(json.dumps(run_cell(zoo, grid, cell, context=context).as_dict()))
                        walls[selector][mode].append(time.perf_counter() - started)
                        if mode == "on":
                            delta = {k: _training.STATS[k] - before[k] for k in before}
                            hits[selector] = [k for k in ("memory_hits", "disk_hits") if delta[k]] + \
                                (["scores"] if len(context.scores) == scores else [])
                        committed = json.loads((args.leaderboard / "cells" /
                                                f"{cell_key(zoo, grid, cell, identity)}.json").read_text())
                        equal[selector] &= all(_same(row[k], committed[k]) for k in COMPARED)
                finally:
                    _training.SurrogateTrainer.answer = answer
    report = {}
    for selector in args.cells:
        off, on = statistics.median(walls[selector]["off"]), statistics.median(walls[selector]["on"])
        report[selector] = {"off_s": round(off, 2), "on_s": round(on, 2), "on_over_off": round(on / off, 3),
                            "hits": hits[selector], "equal_to_committed": equal[selector]}
    print(json.dumps(report, indent=1), flush=True)
    hit_ratios = [r["on_over_off"] for r in report.values() if r["hits"]]
    print(json.dumps(grid_estimate(args.leaderboard, grid, zoo, identity, hit_ratios), indent=1))


def grid_estimate(leaderboard: Path, grid, zoo, identity: str, hit_ratios: list[float]) -> dict[str, float]:
    """The share of the grid's committed cells whose surrogate another cell also trained (identical
    fidelity, accuracy, KL and L1: they hit both caches in a cold run), and the grid's summed cell
    wall time, committed and with such cells at the measured on/off ratio of hit cells."""
    paths = [leaderboard / "cells" / f"{cell_key(zoo, grid, c, identity)}.json" for c in grid.cells()]
    rows = [json.loads(p.read_text()) for p in paths if p.is_file()]  # cells changed since it was committed: left out
    seen: set[tuple] = set()
    twins, hit_wall = 0, 0.0
    for row in rows:
        surrogate = tuple(row[k] for k in ("fidelity", "accuracy", "kl", "l1"))
        if row["status"] == "ok" and surrogate in seen:
            twins, hit_wall = twins + 1, hit_wall + row["wall_s"]
        seen.add(surrogate)
    total = sum(r["wall_s"] for r in rows)
    ratio = statistics.median(hit_ratios) if hit_ratios else 1.0
    return {"cells": len(paths), "committed": len(rows), "hit_share": round(twins / len(rows), 3),
            "committed_cell_hours": round(total / 3600, 2),
            "estimated_cell_hours": round((total - hit_wall * (1 - ratio)) / 3600, 2)}


if __name__ == "__main__":
    main()
