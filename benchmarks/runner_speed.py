"""Runner speed: cells per minute, parallel speedup, cached re-run, time outside the model passes.

    python benchmarks/runner_speed.py [--grid tiny]

Runs the grid into fresh output directories (the zoo must be built or is built first) with one
local worker, then with two, then once more with nothing changed; then re-runs every cell of the
grid in this process (attack included, not isolated, so that its passes can be timed) under
instrumentation that sums the time spent in forward passes of the zoo models and the surrogate,
in backward passes and in optimiser steps. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from psml_bench.bench.cell import run_cell
from psml_bench.bench.grid import load_grid
from psml_bench.runner import make_executor, run_grid
from psml_bench.zoo.build import open_zoo


class ComputeClock:
    """Sums wall time inside top-level model forwards, backward passes and optimiser steps."""

    def __init__(self):
        self.seconds = 0.0
        self._depth = 0
        self._started = 0.0

    def enter(self):
        if self._depth == 0:
            self._started = time.perf_counter()
        self._depth += 1

    def leave(self):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._started

    def wrap(self, function):
        def timed(*args, **kwargs):
            self.enter()
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()
        return timed


def _attack_in_process(server, locator, knowledge, budget, rng):
    """The attack on this process's own clock; isolation gives the same numbers (tests/test_isolation.py)."""
    from psml_bench import ATTACKS
    from psml_bench.serving.frontend import target_for

    return ATTACKS.get(locator.name)(**dict(locator.params)).run(target_for(server), knowledge, budget, rng)


def compute_share(grid, zoo) -> dict[str, float]:
    import psml_bench.bench.cell as runner

    isolated, runner.run_attack = runner.run_attack, _attack_in_process
    try:
        return _compute_share(grid, zoo)
    finally:
        runner.run_attack = isolated


def _compute_share(grid, zoo) -> dict[str, float]:
    clock = ComputeClock()
    originals = (torch.nn.Module.__call__, torch.Tensor.backward, torch.optim.AdamW.step)
    torch.nn.Module.__call__ = clock.wrap(originals[0])
    torch.Tensor.backward = clock.wrap(originals[1])
    torch.optim.AdamW.step = clock.wrap(originals[2])
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for cell in grid.cells():
            run_cell(zoo, grid, cell)
        total = time.perf_counter() - start
    finally:
        torch.nn.Module.__call__, torch.Tensor.backward, torch.optim.AdamW.step = originals
    return {"inline_total_s": round(total, 2), "model_pass_s": round(clock.seconds, 2),
            "share_outside_model_passes": round(1 - clock.seconds / total, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="tiny")
    args = parser.parse_args()
    grid = load_grid(args.grid)
    zoo = open_zoo(grid.zoo, progress=False)
    root = Path(tempfile.mkdtemp(prefix="psml-bench-runner-speed-"))
    timings = {}
    for jobs in (1, 2):
        start = time.perf_counter()
        summary = run_grid(grid, root / f"jobs{jobs}", executor=make_executor("local", jobs=jobs), progress=False)
        timings[jobs] = time.perf_counter() - start
        assert summary.computed == len(grid.cells())
    start = time.perf_counter()
    cached = run_grid(grid, root / "jobs2", executor=make_executor("local", jobs=2), progress=False)
    cached_s = time.perf_counter() - start
    assert cached.computed == 0
    cells = len(grid.cells())
    print(json.dumps({
        "grid": grid.name, "cells": cells,
        "one_worker_s": round(timings[1], 2), "two_workers_s": round(timings[2], 2),
        "cells_per_minute_one_worker": round(cells / timings[1] * 60, 2),
        "cells_per_minute_two_workers": round(cells / timings[2] * 60, 2),
        "parallel_speedup_two_workers": round(timings[1] / timings[2], 3),
        "cached_rerun_s": round(cached_s, 2), "cached_over_cold": round(cached_s / timings[2], 4),
        **compute_share(grid, zoo),
    }, indent=2))


if __name__ == "__main__":
    main()
