"""Fidelity of psml with DFME (data-free) extraction against psml with random pool sampling, seed by seed.

    python benchmarks/dfme_vs_random.py [--zoo fmnist-tiny] [--role rank:2] [--budget 1000] [--seeds 0 1 2]

For every seed, runs the ``psml`` attack (fingerprint, then extraction through the found spec)
against the zoo's undefended service once with ``strategy = "random"`` and once with ``strategy =
"dfme"``, in this process on one thread, and prints one JSON line per run: the fidelity (argmax
agreement with the victim on the zoo's test split), the surrogate's accuracy, how many classes it
predicts, the queries the server counted and the share of extraction queries the victim served. Then
the mean fidelity of each with a 95% t-interval, and of the per-seed difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from psml_bench import ATTACKS, Knowledge
from psml_bench.common import metrics as scoring
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for
from psml_bench.zoo.build import open_zoo


def interval(values: list[float]) -> str:
    """``mean ± half-width`` of a 95% t-interval."""
    if len(values) < 2:
        return f"{values[0]:.3f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.fmean(values):.3f} ± {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist-tiny")
    parser.add_argument("--cache", type=Path, default=None, help="zoo cache (default: psml-bench's)")
    parser.add_argument("--role", default="rank:2")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = open_zoo(args.zoo, args.cache, progress=False)
    victim = zoo.role(args.role)
    victim_labels = zoo.test_predictions[victim].argmax(1).numpy()
    fidelity: dict[str, list[float]] = {"random": [], "dfme": []}
    for seed in args.seeds:
        for strategy in fidelity:
            server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng([seed, 2]),
                              budget=args.budget)
            knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes,
                                  spec_range=server.spec_range, pool=zoo.splits["attacker_x"], role=args.role)
            surrogate = ATTACKS.get("psml")(strategy=strategy).run(target_for(server), knowledge, args.budget,
                                                                   np.random.default_rng([seed, 1]))
            predicted = scoring.predict_labels(surrogate, zoo.splits["test_x"], zoo.num_classes)
            fidelity[strategy].append(scoring.fidelity(predicted, victim_labels))
            victim_index = [e.id for e in server.menu].index(victim)
            hit_rate = scoring.victim_hit_rate(server.log.served_ids("extract"), victim_index)
            print(json.dumps({"strategy": strategy, "seed": seed, "fidelity": round(fidelity[strategy][-1], 4),
                              "accuracy": round(float((predicted == zoo.splits["test_y"].numpy()).mean()), 4),
                              "classes_predicted": int(len(np.unique(predicted))), "queries": server.used,
                              "victim_hit_rate": round(hit_rate, 4)}), flush=True)
    difference = [d - r for d, r in zip(fidelity["dfme"], fidelity["random"])]
    print(json.dumps({"zoo": args.zoo, "role": args.role, "budget": args.budget, "seeds": args.seeds,
                      "fidelity_random": interval(fidelity["random"]), "fidelity_dfme": interval(fidelity["dfme"]),
                      "dfme_minus_random": interval(difference)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
