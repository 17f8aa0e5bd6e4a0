"""Cost and fidelity of each extraction strategy relative to random pool sampling, in one run.

    python benchmarks/strategy_cost.py [--zoo fmnist] [--budget 1000] [--seeds 0 1 2] [--labels soft hard]

For every seed and label mode, runs each registered strategy as the oracle attacker would
(the victim `rank:1` alone, no defense, one thread) and prints one JSON line per run, then a
summary: per strategy, the median over seeds of its wall time divided by random's in the same
seed, and its mean fidelity. Ratios within one invocation are what to compare on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from psml_bench import STRATEGIES, Knowledge, Spec, SurrogateConfig, extract
from psml_bench.common import metrics as scoring
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for
from psml_bench.zoo.build import open_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist")
    parser.add_argument("--cache", type=Path, default=None, help="zoo cache (default: psml-bench's)")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", nargs="+", default=["soft", "hard"], choices=["soft", "hard"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = open_zoo(args.zoo, args.cache, progress=False)
    victim = zoo.role("rank:1")
    victim_labels = zoo.test_predictions[victim].argmax(1).numpy()
    strategies = ["random"] + [name for name in STRATEGIES.names() if name != "random"]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for labels in args.labels:
        for seed in args.seeds:
            base = None
            for strategy in strategies:
                server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng([seed, 2]),
                                  budget=args.budget, model_ids=[victim])
                knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes,
                                      spec_range=server.spec_range, pool=zoo.splits["attacker_x"], role="rank:1")
                spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
                started = time.perf_counter()
                surrogate = extract(target_for(server), knowledge, spec, args.budget, np.random.default_rng([seed, 1]),
                                    SurrogateConfig(labels=labels, strategy=strategy))
                seconds = time.perf_counter() - started
                base = seconds if strategy == "random" else base
                fidelity = scoring.fidelity(scoring.predict_labels(surrogate, zoo.splits["test_x"], zoo.num_classes),
                                            victim_labels)
                results.setdefault((strategy, labels), []).append((seconds / base, fidelity))
                print(json.dumps({"strategy": strategy, "labels": labels, "seed": seed, "seconds": round(seconds, 2),
                                  "ratio": round(seconds / base, 3), "fidelity": round(fidelity, 4),
                                  "queries": server.used}), flush=True)
    summary = {f"{s}/{lab}": {"median_time_ratio": round(statistics.median(r for r, _ in v), 3),
                              "mean_fidelity": round(statistics.fmean(f for _, f in v), 4)}
               for (s, lab), v in results.items()}
    print(json.dumps({"budget": args.budget, "seeds": args.seeds, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
