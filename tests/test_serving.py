"""The server on the tiny zoo: routing, per-input budget accounting, the hidden log, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psml_bench import BudgetExhausted, InvalidQueryError, Spec
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for


@pytest.fixture
def server(tiny_zoo, rng):
    return Frontend(tiny_zoo, defense=make_defense("none"), rng=rng, budget=50)


def pool(zoo, n):
    return zoo.splits["attacker_x"][:n]


def test_answers_are_probabilities_from_the_routed_model(tiny_zoo, server):
    top = max(tiny_zoo.menu, key=lambda e: e.accuracy)
    x = pool(tiny_zoo, 8)
    answers = server.query(x, Spec(tiny_zoo.accuracy_range[1], tiny_zoo.latency_range_ms[1]))
    assert answers.shape == (8, tiny_zoo.num_classes)
    assert torch.allclose(answers.sum(1), torch.ones(8), atol=1e-5) and (answers >= 0).all()
    with torch.no_grad():
        expected = torch.softmax(tiny_zoo.model(top.id)(x), dim=1)
    assert torch.allclose(answers, expected, atol=1e-5)
    assert server.menu_ids(server.log.served_ids()) == [top.id] * 8


def test_routing_is_per_input(tiny_zoo, server):
    fastest = min(tiny_zoo.menu, key=lambda e: e.latency_ms)
    top = max(tiny_zoo.menu, key=lambda e: e.accuracy)
    lax = Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1])
    strict = Spec(tiny_zoo.accuracy_range[1], tiny_zoo.latency_range_ms[1])
    server.query(pool(tiny_zoo, 4), [lax, strict, lax, strict])
    assert server.menu_ids(server.log.served_ids()) == [fastest.id, top.id, fastest.id, top.id]


def test_budget_is_counted_per_input_and_enforced(tiny_zoo, server):
    spec = Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1])
    target = target_for(server)
    target.query(pool(tiny_zoo, 30), spec)
    target.query(pool(tiny_zoo, 15), spec, purpose="fingerprint")
    assert target.remaining_budget == 5 and server.used == 45
    assert server.log.count("fingerprint") == 15
    with pytest.raises(BudgetExhausted, match="remaining budget of 5"):
        target.query(pool(tiny_zoo, 6), spec)
    assert server.used == 45 and len(server.log.served_ids()) == 45  # nothing of it was served
    target.query(pool(tiny_zoo, 5), spec)
    with pytest.raises(BudgetExhausted):
        target.query(pool(tiny_zoo, 1), spec)


@pytest.mark.parametrize("inputs, message", [
    (torch.zeros(3, 28, 28), "shape"),
    (torch.zeros(3, 3, 28, 28), "shape"),
    (torch.zeros(0, 1, 28, 28), "N >= 1"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "floating point"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    ([[0.0]], "torch.Tensor"),
])
def test_malformed_inputs_are_clear_errors(tiny_zoo, server, inputs, message):
    with pytest.raises(InvalidQueryError, match=message):
        server.query(inputs, Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1]))
    assert server.used == 0


def test_specs_outside_the_advertised_range_are_rejected(tiny_zoo, server):
    x = pool(tiny_zoo, 1)
    (a_lo, a_hi), (l_lo, l_hi) = tiny_zoo.accuracy_range, tiny_zoo.latency_range_ms
    for spec, field in [(Spec(a_hi + 0.01, l_hi), "min_accuracy"), (Spec(a_lo, l_lo - 0.01), "max_latency_ms"),
                        (Spec(float("nan"), l_hi), "min_accuracy")]:
        with pytest.raises(InvalidQueryError, match=field):
            server.query(x, spec)
    with pytest.raises(InvalidQueryError, match="one Spec or a sequence"):
        server.query(pool(tiny_zoo, 2), [Spec(a_lo, l_hi)])
    assert server.used == 0
    # a bound computed in floats (high + 1.0 * (l_hi - high)) passes it by rounding only: served as the bound
    assert server.query(x, Spec(a_hi, float(np.nextafter(l_hi, np.inf)))).shape == (1, tiny_zoo.num_classes)
    assert server.used == 1


def test_single_model_service_serves_only_the_victim(tiny_zoo, rng):
    victim = tiny_zoo.role("rank:2")
    server = Frontend(tiny_zoo, defense=make_defense("none"), rng=rng, model_ids=[victim])
    specs = server.spec_range.sample(20, rng)
    server.query(pool(tiny_zoo, 20), specs)
    assert set(server.menu_ids(server.log.served_ids())) == {victim}


def test_roles_rank_the_frontier_by_accuracy(tiny_zoo):
    ranked = [tiny_zoo.role(f"rank:{k}") for k in range(1, len(tiny_zoo.frontier) + 1)]
    accuracies = [tiny_zoo.entry(m).accuracy for m in ranked]
    assert accuracies == sorted(accuracies, reverse=True) and set(ranked) == set(tiny_zoo.frontier)
    from psml_bench import ConfigError

    for bad in ("rank:0", f"rank:{len(ranked) + 1}", "best", "rank:x"):
        with pytest.raises(ConfigError, match="rank:k"):
            tiny_zoo.role(bad)
