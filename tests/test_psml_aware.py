"""``psml-aware``: query averaging, the diagnosis behind the hard-label fallback, its budget and its parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.psml_aware import AveragingTarget, PsmlAware, diagnose
from psml_bench import ConfigError, Knowledge, Spec, Target
from psml_bench.contract.registries import ATTACKS, make_defense
from psml_bench.serving.frontend import Frontend, target_for

from helpers import Recorder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _service(zoo, defense: str, params: dict | None = None, budget: int | None = None, victim_only: bool = False):
    model_ids = [zoo.role("rank:1")] if victim_only else None
    server = Frontend(zoo, defense=make_defense(defense, params or {}), rng=np.random.default_rng(3), budget=budget,
                      model_ids=model_ids)
    knowledge = Knowledge(zoo.input_shape, zoo.num_classes, server.spec_range, zoo.splits["attacker_x"], "rank:1")
    return server, knowledge


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_averaging_repeated_answers_brings_them_closer_to_the_clean_ones(tiny_zoo, sigma):
    """The median of 8 copies is closer to the clean answer than one answer and than their mean (prob-noise's clip at 0
    biases the mean toward a flat answer)."""
    inputs = tiny_zoo.splits["attacker_x"][:8]
    clean_server, knowledge = _service(tiny_zoo, "none", victim_only=True)
    spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
    clean = target_for(clean_server).query(inputs, spec)
    noisy_server, _ = _service(tiny_zoo, "prob-noise", {"sigma": sigma}, victim_only=True)
    noisy = target_for(noisy_server)
    single = noisy.query(inputs, spec)
    errors = {}
    for how in ("median", "mean"):
        averaging = AveragingTarget(noisy, 8, 0.0, None, np.random.default_rng(0), how)
        errors[how] = float((averaging.handle().query(inputs, spec) - clean).abs().sum(dim=1).mean())
        assert averaging.sent == 8 * 8
    single_error = float((single - clean).abs().sum(dim=1).mean())
    assert errors["median"] < 0.8 * single_error and errors["median"] < errors["mean"], (errors, single_error)
    assert noisy_server.used == 8 + 2 * 8 * 8  # every copy is a query


def test_the_wrapped_budget_is_the_servers_count_in_units_of_the_repeats(tiny_zoo):
    server, knowledge = _service(tiny_zoo, "prob-noise", budget=50)
    wrapped = AveragingTarget(target_for(server), 4, 0.05, None, np.random.default_rng(0)).handle()
    assert wrapped.remaining_budget == 12
    wrapped.query(knowledge.pool[:5], Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1]))
    assert server.used == 20 and wrapped.remaining_budget == 7


@pytest.mark.parametrize("defense, params, perturbed", [
    ("none", {}, False),
    ("prob-noise", {"sigma": 0.05}, True),
    ("reverse-sigmoid", {"beta": 0.7}, True),
    ("prediction-poisoning", {"epsilon": 1.0, "keep_argmax": True}, True),
])
def test_the_fallback_triggers_on_perturbing_defenses_and_not_on_the_undefended_service(tiny_zoo, defense, params,
                                                                                        perturbed):
    server, knowledge = _service(tiny_zoo, defense, params)
    diagnosis = diagnose(target_for(server), knowledge, 16, 0.5, np.random.default_rng(0))
    assert server.used == 32
    assert diagnosis.perturbed is perturbed and diagnosis.randomised is (defense == "prob-noise"), diagnosis
    assert not diagnosis.invalid
    assert PsmlAware().labels(diagnosis) == ("hard" if perturbed else "soft")
    assert PsmlAware(fallback="never").labels(diagnosis) == "soft"
    assert PsmlAware(fallback="always").labels(diagnosis) == "hard"


def test_the_attack_spends_its_budget_counting_every_repeat(tiny_zoo):
    budget = 242  # 32 for the diagnosis, then 210: 52 averaged queries of 4 and 2 left over
    server, knowledge = _service(tiny_zoo, "prob-noise", {"sigma": 0.05}, budget=budget)
    recorder = Recorder(server)
    attack = PsmlAware(min_steps=20, epochs=1)
    surrogate = attack.run(Target(recorder.query, lambda: server.remaining), knowledge, budget,
                           np.random.default_rng(0))
    sent = torch.cat(recorder.inputs)
    assert server.used == len(sent) == budget - 2 and isinstance(surrogate, torch.nn.Module)
    rest = sent[32:].view(-1, 4, *knowledge.input_shape)  # after the diagnosis every row goes out 4 times in a row
    assert len(rest) == 52 and torch.equal(rest, rest[:, :1].expand_as(rest))


def test_on_a_deterministic_service_the_attack_is_psml_after_its_diagnosis(tiny_zoo):
    server, knowledge = _service(tiny_zoo, "none", budget=200)
    recorder = Recorder(server)
    PsmlAware(min_steps=20, epochs=1).run(Target(recorder.query, lambda: server.remaining), knowledge, 200,
                                          np.random.default_rng(0))
    sent = torch.cat(recorder.inputs)
    assert server.used == 200 and len({row.numpy().tobytes() for row in sent[-100:]}) == 100  # no repeats


@pytest.mark.parametrize("params, message", [
    ({"averaging": 0}, r"parameter 'averaging' must be an integer >= 1, got 0$"),
    ({"averaging": 2.5}, r"parameter 'averaging' must be an integer >= 1, got 2.5$"),
    ({"threshold": 0.0}, r"parameter 'threshold' must be in \(0, 1\], got 0.0$"),
    ({"threshold": 1.5}, r"parameter 'threshold' must be in \(0, 1\], got 1.5$"),
    ({"jitter": -0.1}, r"parameter 'jitter' must be in \[0, 1\], got -0.1$"),
    ({"fallback": "sometimes"}, r"parameter 'fallback' must be 'auto' or 'never' or 'always', got 'sometimes'$"),
    ({"detect": 0}, r"parameter 'detect' must be an integer in \[1, 256\], got 0$"),
])
def test_bad_parameters_are_one_config_error(params, message):
    with pytest.raises(ConfigError, match=r"^attack 'psml-aware' " + message) as error:
        ATTACKS.get("psml-aware")(**params)
    assert "\n" not in str(error.value)
