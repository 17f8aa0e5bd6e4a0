"""Protocol 4's serving targets on the simulator, from the committed profiles of ``fmnist`` and ``fmnist-compact``.

    python benchmarks/serving_targets.py [--requests 20000]

No zoo is built (``psml_bench.serving.capacity.committed_capacity_problem``): each zoo's menu is its models' test
accuracy (as the committed leaderboard's lock, leaderboard/zoos.json, records it) and its committed reference
profile's batch-1 p50, its batch service times the fits of the committed profiles, its advertised ranges from the
zoo config's margins (0.05, 0.5), one worker per model and the default service (max batch 8, no wait, timeout 10).
For each zoo and policy (``infaas-slo``, ``infaas``) it searches the capacity at the SLO
(``psml_bench.serving.capacity``), then prints the undefended service's goodput (SLO attainment of benign
requests) and p99 at loads 0.5, 0.8 and 0.95 of that capacity, on the search's fixed-seed benign workload,
and both policies at common rates.
"""

from __future__ import annotations

import argparse
import time

from psml_bench.serving.capacity import CapacityProblem, attainment, committed_capacity_problem, search_capacity
from psml_bench.zoo.lock import checkout_lock, read_locks

# Test accuracy of each model as the committed leaderboard's lock records it (leaderboard/zoos.json, written from the
# zoo cards by the run that computed the leaderboard): these zoos are not built here, their committed profiles are.
_LOCKS = read_locks(checkout_lock())
ACCURACY = {zoo: {m.id: m.accuracy for m in _LOCKS[zoo].models} for zoo in ("fmnist", "fmnist-compact")}


def problem(zoo: str, policy: str) -> CapacityProblem:
    return committed_capacity_problem(zoo, ACCURACY[zoo], policy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    for zoo in ACCURACY:
        capacities = {}
        for policy in ("infaas-slo", "infaas"):
            p = problem(zoo, policy)
            started = time.perf_counter()
            capacities[policy] = capacity = search_capacity(p)
            saturation = p.saturation()
            print(f"{zoo} {policy}: largest bound {p.spec_range.latency_ms[1]} ms; capacity at the SLO "
                  f"{capacity * 1000:.1f} req/s = {capacity / saturation:.4f} of the saturation rate "
                  f"{saturation * 1000:.0f} req/s (search {time.perf_counter() - started:.1f} s)")
            for load in (0.5, 0.8, 0.95):
                result = attainment(p, load * capacity)
                print(f"  load {load}: goodput {result.attainment:.4f}, p99 {result.p99_ms():.2f} ms")
        rate = capacities["infaas-slo"]
        for load in (0.5, 1.0, 2.0, 5.0):
            pair = [attainment(problem(zoo, policy), load * rate).attainment for policy in ("infaas-slo", "infaas")]
            print(f"  at {load} x the infaas-slo capacity: goodput infaas-slo {pair[0]:.4f}, infaas {pair[1]:.4f}")


if __name__ == "__main__":
    main()
