"""Each metric, on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psml_bench import Spec, SpecRange
from psml_bench.common import metrics as scoring


def test_fidelity_and_accuracy():
    surrogate = np.array([0, 1, 2, 3, 4])
    assert scoring.fidelity(surrogate, np.array([0, 1, 2, 0, 0])) == pytest.approx(0.6)
    assert scoring.accuracy(surrogate, np.array([0, 0, 0, 0, 4])) == pytest.approx(0.4)


def test_accuracy_norm():
    assert scoring.accuracy_norm(0.45, 0.9) == pytest.approx(0.5)
    assert scoring.accuracy_norm(0.5, 0.0) == 0.0


def test_victim_hit_rate():
    assert scoring.victim_hit_rate(np.array([2, 2, 1, 2]), 2) == pytest.approx(0.75)
    assert scoring.victim_hit_rate(np.array([], dtype=int), 2) == 0.0


def test_goodput():
    assert scoring.goodput(np.array([True, False, True, True])) == pytest.approx(0.75)
    assert scoring.goodput(np.array([], dtype=bool)) == 0.0


def test_benign_specs_are_feasible_and_seeded():
    accuracy, latency = np.array([0.8, 0.9]), np.array([1.0, 3.0])
    spec_range = SpecRange((0.7, 0.99), (0.5, 4.0))
    specs = scoring.benign_specs(accuracy, latency, spec_range, 500, np.random.default_rng(0))
    assert len(specs) == 500 and all(isinstance(s, Spec) for s in specs)
    assert all(((accuracy >= s.min_accuracy) & (latency <= s.max_latency_ms)).any() for s in specs)
    again = scoring.benign_specs(accuracy, latency, spec_range, 500, np.random.default_rng(0))
    assert specs == again
    # the workload covers both models' regions
    assert any(s.min_accuracy > 0.8 for s in specs) and any(s.min_accuracy <= 0.8 for s in specs)


def test_predict_labels_checks_the_surrogate_output():
    import torch

    good = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    labels = scoring.predict_labels(good, torch.zeros(5, 1, 2, 2), 3)
    assert labels.shape == (5,)
    with pytest.raises(ValueError, match=r"\(N, 10\)"):
        scoring.predict_labels(good, torch.zeros(5, 1, 2, 2), 10)


def test_kl_and_l1_between_probability_rows():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    expected_kl = (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)) / 2
    assert scoring.kl_divergence(p, q) == pytest.approx(expected_kl, rel=1e-6)
    assert scoring.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert scoring.l1_distance(p, q) == pytest.approx((0.25 + 0.25) / 2 / 2)
    one_hot = torch.eye(2)
    assert scoring.l1_distance(one_hot, one_hot.flip(1)) == pytest.approx(1.0)


def test_fingerprint_accuracy_and_latency_overhead():
    assert scoring.fingerprint_accuracy(np.array([2, 2, 1, 2]), 2) == 0.75
    assert np.isnan(scoring.fingerprint_accuracy(np.array([], dtype=int), 2))
    assert scoring.latency_overhead(np.array([2.0, 4.0]), np.array([2.0, 2.0])) == pytest.approx(0.5)
    assert scoring.latency_overhead(np.array([1.0]), np.array([1.0])) == 0.0
