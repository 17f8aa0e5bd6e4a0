"""Serving-layer overhead: answering through the front end (``Frontend``) versus raw batched forward passes.

    python benchmarks/serving_overhead.py [--zoo fmnist-tiny] [--queries 4096] [--repeats 7]

Both sides answer the same pool inputs with the same models and batch size: "raw" runs the
models in batches of 512 and takes the softmax; "served" sends the inputs through `Frontend.query`
(spec validation, defense hook, routing, grouping, log, budget) in queries of 512 with a spec that
routes every query to one model, and with per-input specs that spread queries over the frontier
(compared with raw forward passes of the same groups). Prints the median ratio served/raw over
the repeats (goal: at most 1.05).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from psml_bench import Spec
from psml_bench.contract.session import QUERY_BATCH, query_batched
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for
from psml_bench.zoo.build import open_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist-tiny")
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = open_zoo(args.zoo, progress=False)
    inputs = zoo.splits["attacker_x"][: args.queries]
    top = zoo.role("rank:1")
    spec = Spec(zoo.accuracy_range[1], zoo.latency_range_ms[1])
    mixed = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng(0)).spec_range.sample(
        len(inputs), np.random.default_rng(0))

    @torch.no_grad()
    def raw(model_ids):
        for model_id, rows in model_ids:
            batch = inputs[rows]
            for i in range(0, len(batch), QUERY_BATCH):
                F.softmax(zoo.model(model_id)(batch[i:i + QUERY_BATCH]), dim=1)

    def served(specs):
        server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng(0))
        query_batched(target_for(server), inputs, specs)
        return server

    probe = served(mixed)
    routed = probe.log.served_ids()
    groups = [(probe.menu[i].id, torch.from_numpy(np.flatnonzero(routed == i))) for i in np.unique(routed)]
    single = [(top, torch.arange(len(inputs)))]
    ratios = {"single_model": [], "mixed_routing": []}
    for _ in range(args.repeats):
        for name, specs, plan in (("single_model", spec, single), ("mixed_routing", mixed, groups)):
            start = time.perf_counter()
            raw(plan)
            raw_s = time.perf_counter() - start
            start = time.perf_counter()
            served(specs)
            ratios[name].append((time.perf_counter() - start) / raw_s)
    print(json.dumps({"zoo": args.zoo, "queries": len(inputs), "repeats": args.repeats,
                      **{f"{k}_served_over_raw_median": round(statistics.median(v), 4) for k, v in ratios.items()}},
                     indent=2))


if __name__ == "__main__":
    main()
