"""What ``query-hash`` costs a cell: the same cell with ``query-hash`` and undefended, wall time.

    python benchmarks/query_hash_cost.py [--zoo fmnist-tiny] [--budget 1000] [--repeats 5]

Runs one cell (``psml`` at its defaults against victim ``rank:2``, seed 0, the default service) with the
defense ``none``, ``query-hash(action=flag)`` (every request hashed and matched, nothing refused:
the detector's own cost) and ``query-hash`` at its defaults (blocking, which also removes the
blocked clients' work), interleaved ``--repeats`` times, and prints each one's median wall time
and its ratio to the undefended median (goal: at most 1.2 for ``flag``). Run it alone: timings
are noisy when another heavy job shares the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from psml_bench.bench.cell import CELL_THREADS, run_cell
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec
from psml_bench.serving.service import PoolAnswers, ServiceConfig
from psml_bench.zoo.build import open_zoo

SETTINGS = {"none": PluginSpec("none"), "query-hash(action=flag)": PluginSpec("query-hash", (("action", "flag"),)),
            "query-hash": PluginSpec("query-hash")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist-tiny")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--benign-queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(CELL_THREADS)
    zoo = open_zoo(args.zoo, progress=False)
    PoolAnswers.of(zoo)  # computed once per zoo, not per cell
    attack = PluginSpec("psml")  # the default recipe, as the default grid's cells train
    grid = GridConfig("bench", args.zoo, "infaas", ("rank:2",), (attack,), tuple(SETTINGS.values()), (args.budget,),
                      (0,), args.benign_queries, "benchmark")
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    rows: dict[str, dict] = {}
    run_cell(zoo, grid, Cell("rank:2", attack, SETTINGS["none"], args.budget, 0, ServiceConfig()))  # warm-up
    for _ in range(args.repeats):
        for name, defense in SETTINGS.items():
            started = time.perf_counter()
            rows[name] = run_cell(zoo, grid, Cell("rank:2", attack, defense, args.budget, 0, ServiceConfig()))
            times[name].append(time.perf_counter() - started)
            assert rows[name]["status"] == "ok", rows[name]["error"]
    base = statistics.median(times["none"])
    print(json.dumps({
        "zoo": args.zoo, "budget": args.budget, "repeats": args.repeats,
        "median_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
        "ratio_to_none": {name: round(statistics.median(t) / base, 3) for name, t in times.items()},
        "benign_requests": {name: rows[name]["benign_requests"] for name in SETTINGS},
        "attacker_detected_at": {name: rows[name]["queries_to_detection"] for name in SETTINGS},
        "runs_s": {name: [round(x, 2) for x in t] for name, t in times.items()}}, indent=1))


if __name__ == "__main__":
    main()
