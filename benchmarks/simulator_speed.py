"""Batching simulator speed: requests simulated per second, incremental versus one-shot.

    python benchmarks/simulator_speed.py [--requests 50000] [--round-trips 500] [--models 5] [--repeats 5]

Benign requests (Poisson arrivals at 70% of capacity, spread over the models) are added up front;
then an attacker makes the given number of round trips, each adding one request at the committed
time plus a think time and asking for its completion, as the serving system does. The same
requests are also simulated in one shot (one add, then finish). Prints one JSON object: the median
over the repeats of each wall time, requests per second, and incremental/one-shot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from psml_bench.serving.simulator import BatchingConfig, BatchingSimulator, poisson_arrivals, saturation_capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="benign plus attacker requests")
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    intercept, slope = rng.uniform(1.0, 5.0, args.models), rng.uniform(0.1, 1.0, args.models)
    shares = rng.dirichlet(np.ones(args.models))
    config = BatchingConfig(max_batch=8, max_wait_ms=2.0)
    rate = 0.7 * saturation_capacity(intercept, slope, shares, config.max_batch)
    benign = args.requests - args.round_trips
    benign_times = poisson_arrivals(rate, benign, rng)
    benign_models = rng.choice(args.models, size=benign, p=shares)
    think_ms = benign_times[-1] / args.round_trips  # the attacker's calls span the benign traffic
    attacker_models = rng.integers(0, args.models, args.round_trips)

    def incremental() -> BatchingSimulator:
        simulator = BatchingSimulator(intercept, slope, config)
        simulator.add(benign_times, benign_models)
        now = 0.0
        for model in attacker_models:
            ids = simulator.add([now], [model])
            now = float(simulator.completion(ids)[0]) + think_ms
        simulator.finish()
        return simulator

    attacker_times = incremental().arrival_ms[benign:]

    def one_shot() -> BatchingSimulator:
        simulator = BatchingSimulator(intercept, slope, config)
        simulator.add(np.concatenate([benign_times, attacker_times]), np.concatenate([benign_models, attacker_models]))
        simulator.finish()
        return simulator

    seconds: dict[str, list[float]] = {"incremental": [], "one_shot": []}
    for _ in range(args.repeats):
        for name, simulate in (("incremental", incremental), ("one_shot", one_shot)):
            start = time.perf_counter()
            simulate()
            seconds[name].append(time.perf_counter() - start)
    if not np.array_equal(incremental().completion_ms, one_shot().completion_ms):
        raise SystemExit("incremental and one-shot simulations disagree")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({"requests": args.requests, "round_trips": args.round_trips, "models": args.models,
                      "repeats": args.repeats, "load": 0.7,
                      **{f"{name}_median_s": round(value, 4) for name, value in medians.items()},
                      **{f"{name}_requests_per_s": round(args.requests / value) for name, value in medians.items()},
                      "incremental_over_one_shot": round(medians["incremental"] / medians["one_shot"], 3)},
                     indent=2))


if __name__ == "__main__":
    main()
