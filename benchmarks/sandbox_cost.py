"""What the bubblewrap sandbox costs: per attack process (per cell), and once per worker.

    python benchmarks/sandbox_cost.py [--zoo fmnist-tiny] [--budget 100] [--repeats 5]

Runs the same attack (``naive``, a small surrogate) through ``run_attack`` ``--repeats`` times with
the jailed zygote (bubblewrap, fresh namespaces and private /tmp per attack process) and with the
plain zygote (the same code, no jail: what built-ins get where bubblewrap is missing), alternating,
after one warm-up each. Prints the median seconds per attack of each, their difference (the
sandbox's cost per cell; goal: under 1 s) and ratio, and the one-time start-up of each zygote
(paid once per worker, overlapping its start-up). Run it alone: timings are noisy when another
heavy job shares the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from psml_bench.isolation import attack_process as _isolation
from psml_bench.isolation.attack_process import PREIMPORTED, PluginLocator, run_attack
from psml_bench.contract.registries import DEFENSES
from psml_bench.isolation.sandbox import Sandbox
from psml_bench.contract.target import Knowledge
from psml_bench.serving.frontend import Frontend
from psml_bench.zoo.build import open_zoo


def one_attack(zoo, budget: int) -> float:
    server = Frontend(zoo, defense=DEFENSES.get("none")(), rng=np.random.default_rng([0, 2]), budget=budget)
    knowledge = Knowledge(zoo.input_shape, zoo.num_classes, server.spec_range, zoo.splits["attacker_x"], "rank:1")
    started = time.perf_counter()
    run_attack(server, PluginLocator("naive", (("epochs", 1), ("min_steps", 5))), knowledge, budget,
               np.random.default_rng(0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist-tiny")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    zoo = open_zoo(args.zoo, progress=False)
    sandboxes = {jailed: Sandbox(jailed, PREIMPORTED, _isolation.SANDBOX_TARGETS) for jailed in (True, False)}
    startup, times = {}, {True: [], False: []}
    for jailed, sandbox in sandboxes.items():
        _isolation._sandbox = lambda locator, gpu=False, sandbox=sandbox: sandbox  # noqa: SLF001 - choose the arm
        started = time.perf_counter()
        one_attack(zoo, args.budget)  # starts the zygote: its imports, then the first fork
        startup[jailed] = time.perf_counter() - started
    for _ in range(args.repeats):
        for jailed, sandbox in sandboxes.items():
            _isolation._sandbox = lambda locator, gpu=False, sandbox=sandbox: sandbox  # noqa: SLF001
            times[jailed].append(one_attack(zoo, args.budget))
    for sandbox in sandboxes.values():
        sandbox.stop()
    jailed, plain = statistics.median(times[True]), statistics.median(times[False])
    print(json.dumps({"zoo": args.zoo, "budget": args.budget, "repeats": args.repeats,
                      "jailed_s_per_attack": round(jailed, 3), "plain_s_per_attack": round(plain, 3),
                      "sandbox_cost_s_per_cell": round(jailed - plain, 3), "ratio": round(jailed / plain, 3),
                      "first_attack_with_startup_s": {"jailed": round(startup[True], 2),
                                                      "plain": round(startup[False], 2)}}, indent=1))


if __name__ == "__main__":
    main()
