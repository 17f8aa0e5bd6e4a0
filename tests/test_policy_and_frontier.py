"""The infaas policy, the Pareto frontier and the advertised ranges, on synthetic menus."""

from __future__ import annotations

import numpy as np
import pytest

from psml_bench.serving.policies import InfaasPolicy
from psml_bench.zoo.model_zoo import pareto_frontier, service_ranges

# id:        0     1     2     3     4 (dominated by 2: slower and less accurate)
ACCURACY = np.array([0.78, 0.84, 0.88, 0.91, 0.86])
LATENCY = np.array([0.7, 0.8, 0.9, 5.0, 2.0])


def select(min_accuracy, max_latency):
    served, feasible = InfaasPolicy().select(ACCURACY, LATENCY, np.atleast_1d(np.array(min_accuracy, float)),
                                             np.atleast_1d(np.array(max_latency, float)))
    return served.tolist(), feasible.tolist()


@pytest.mark.parametrize("min_accuracy, max_latency, expected", [
    (0.70, 10.0, 0),   # everything feasible: the fastest
    (0.80, 10.0, 1),   # fastest with accuracy >= 0.80
    (0.84, 10.0, 1),   # boundary is inclusive
    (0.841, 10.0, 2),
    (0.89, 10.0, 3),
    (0.80, 0.85, 1),
])
def test_feasible_specs_get_the_fastest_feasible_model(min_accuracy, max_latency, expected):
    assert select(min_accuracy, max_latency) == ([expected], [True])


def test_infeasible_accuracy_falls_back_to_most_accurate_within_latency():
    assert select(0.99, 10.0) == ([3], [False])
    assert select(0.85, 0.85) == ([1], [False])
    assert select(0.99, 1.0) == ([2], [False])


def test_nothing_within_latency_falls_back_to_fastest():
    assert select(0.5, 0.1) == ([0], [False])


def test_ties_prefer_lower_accuracy_then_speed():
    accuracy, latency = np.array([0.9, 0.8, 0.9]), np.array([1.0, 1.0, 0.5])
    served, _ = InfaasPolicy().select(accuracy, latency, np.array([0.7, 0.85, 0.95]), np.array([1.0, 1.0, 2.0]))
    # 0.7 within 1.0: models 0, 1, 2 feasible; fastest is 2 (0.5 ms)
    # 0.85 within 1.0: models 0 and 2; fastest is 2
    # 0.95 infeasible: most accurate within 2.0 ms, tie 0/2 at 0.9 -> the faster, 2
    assert served.tolist() == [2, 2, 2]
    served, _ = InfaasPolicy().select(np.array([0.9, 0.8]), np.array([1.0, 1.0]), np.array([0.7]), np.array([1.0]))
    assert served.tolist() == [1]  # equal latency: the lower accuracy


def test_dominated_model_is_never_served():
    rng = np.random.default_rng(0)
    served, _ = InfaasPolicy().select(ACCURACY, LATENCY, rng.uniform(0.6, 1.0, 5000), rng.uniform(0.1, 8.0, 5000))
    assert 4 not in set(served.tolist())
    assert set(served.tolist()) == {0, 1, 2, 3}


def test_pareto_frontier():
    assert pareto_frontier(ACCURACY.tolist(), LATENCY.tolist()) == [0, 1, 2, 3]
    assert pareto_frontier([0.9, 0.9], [1.0, 1.0]) == [0, 1]  # equal points dominate neither
    assert pareto_frontier([0.8, 0.9, 0.85], [1.0, 0.5, 2.0]) == [1]


def test_service_ranges_cover_the_menu_with_margins():
    (a_lo, a_hi), (l_lo, l_hi) = service_ranges(ACCURACY, LATENCY, 0.05, 0.5)
    assert (a_lo, a_hi) == (0.73, 0.96)
    assert l_lo == pytest.approx(0.46) and l_hi == pytest.approx(7.5)
    (a_lo, a_hi), _ = service_ranges([0.2, 0.99], [1.0, 2.0], 0.05, 0.0)
    assert (a_lo, a_hi) == (0.15, 1.0)
