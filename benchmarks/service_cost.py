"""What Service v2 costs a cell: the attack against the multi-tenant service at a load versus the
protocol-2 cell (the attack against a lone server, then the benign workload forwarded live twice).

    python benchmarks/service_cost.py [--zoo fmnist] [--budget 1000] [--load 0.95] [--repeats 3]
    python benchmarks/service_cost.py --policies [--zoo fmnist] [--load 0.95] [--repeats 3]

Both sides run the same attack (``psml``, isolated in its process as in every cell) with the same
seed and defense (``spec-noise``). "v2" is the protocol-2 cell: the attack against a
``Frontend`` with no clock, then ``benign_queries`` test inputs sent through a defended and an
undefended front end. "v3" is ``run_cell``: the attack on the cell's ``SimulatedService`` with the benign
clients at ``--load``, the benign stream answered from the pool answers cached per zoo. Prints
the median wall time of each and the ratio v3 / v2 (goal: at most about 1.05). Run it alone:
timings are noisy when another heavy job shares the cores.

``--policies``: the same cell (``run_cell``, the load a fraction of each router's own capacity at the
SLO) under protocol 4's SLO-aware router ``infaas-slo`` and protocol 3's queue-blind ``infaas``,
alternately, each run with a fresh :class:`RunContext` and an empty surrogate-training cache (memory
and a fresh ``surrogates/`` directory: psml collects the same training set under both routers, so a
shared cache would make every run after the first a hit);
prints both medians and the ratio infaas-slo / infaas (issue 25's goal: at most 1.10 at load 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from psml_bench.bench.context import RunContext
from psml_bench.isolation import trainer as _training
from psml_bench.bench.cell import CELL_THREADS, attack_generator, attack_locator, run_cell
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec
from psml_bench.isolation.attack_process import run_attack
from psml_bench.contract.registries import make_defense
from psml_bench.common.metrics import benign_specs
from psml_bench.serving.service import PoolAnswers, ServiceConfig
from psml_bench.contract.target import Knowledge
from psml_bench.serving.frontend import Frontend
from psml_bench.zoo.build import open_zoo


def protocol2_cell(zoo, grid: GridConfig, cell: Cell) -> None:
    """The protocol-2 cell's work: the attack on a lone server, then the benign workload twice."""
    defense = cell.defense_plugin.instantiate()
    server = Frontend(zoo, defense=defense, rng=np.random.default_rng([cell.seed, 2]), budget=cell.budget)
    knowledge = Knowledge(zoo.input_shape, zoo.num_classes, server.spec_range, zoo.splits["attacker_x"], cell.victim)
    surrogate = run_attack(server, attack_locator(cell.attack_plugin), knowledge, cell.budget,
                           attack_generator(cell.seed))
    with torch.no_grad():
        surrogate(zoo.splits["test_x"])
    for benign_defense in (cell.defense_plugin.instantiate(), make_defense("none")):
        benign = Frontend(zoo, defense=benign_defense, rng=np.random.default_rng([cell.seed, 4]))
        specs = benign_specs(benign._accuracy, benign._latency, benign.spec_range, grid.benign_queries,
                             np.random.default_rng([cell.seed, 3]))
        rows = torch.arange(len(specs)) % len(zoo.splits["test_x"])
        benign.query(zoo.splits["test_x"][rows], specs, purpose="benign")


def compare_policies(zoo, grid: GridConfig, cell: Cell, args: argparse.Namespace) -> None:
    """The cell under infaas-slo and infaas, alternately, with fresh contexts: medians and their ratio."""
    times: dict[str, list[float]] = {"infaas-slo": [], "infaas": []}
    benign: dict[str, int] = {}
    for _ in range(args.repeats):
        for policy in times:
            with tempfile.TemporaryDirectory() as cache:
                _training.clear_memory()
                started = time.perf_counter()
                row = run_cell(zoo, replace(grid, policy=policy), cell, context=RunContext(training_cache=Path(cache)))
                times[policy].append(time.perf_counter() - started)
            assert row.status == "ok", row.error
            benign[policy] = row.benign_requests
    slo, blind = statistics.median(times["infaas-slo"]), statistics.median(times["infaas"])
    print(json.dumps({"zoo": args.zoo, "budget": args.budget, "load": args.load, "benign_requests": benign,
                      "infaas_slo_median_s": round(slo, 2), "infaas_median_s": round(blind, 2),
                      "ratio_slo_over_blind": round(slo / blind, 3),
                      "runs": {k: [round(t, 2) for t in v] for k, v in times.items()}}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--load", type=float, default=0.95)
    parser.add_argument("--benign-queries", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", action="store_true", help="infaas-slo against infaas instead of v3 against v2")
    args = parser.parse_args()
    torch.set_num_threads(CELL_THREADS)
    zoo = open_zoo(args.zoo, progress=False)
    PoolAnswers.of(zoo)  # computed once per zoo (at the first run), not per cell
    attack, defense = PluginSpec("psml"), PluginSpec("spec-noise", (("scale", 0.05),))
    grid = GridConfig("bench", args.zoo, "infaas", ("rank:2",), (attack,), (defense,), (args.budget,), (0,),
                      args.benign_queries, "benchmark")
    cell = Cell("rank:2", attack, defense, args.budget, 0, ServiceConfig(load=args.load))
    if args.policies:
        compare_policies(zoo, grid, cell, args)
        return
    times: dict[str, list[float]] = {"v2": [], "v3": []}
    benign = 0.0
    for _ in range(args.repeats):
        for name in ("v2", "v3"):
            started = time.perf_counter()
            if name == "v2":
                protocol2_cell(zoo, grid, cell)
            else:
                row = run_cell(zoo, grid, cell)
                assert row.status == "ok", row.error
                benign = row.benign_requests
            times[name].append(time.perf_counter() - started)
    v2, v3 = statistics.median(times["v2"]), statistics.median(times["v3"])
    print(json.dumps({"zoo": args.zoo, "budget": args.budget, "load": args.load, "benign_requests_v3": benign,
                      "v2_median_s": round(v2, 2), "v3_median_s": round(v3, 2), "ratio_v3_over_v2": round(v3 / v2, 3),
                      "runs": {k: [round(t, 2) for t in v] for k, v in times.items()}}, indent=1))


if __name__ == "__main__":
    main()
