"""Odd numbers from plugins: a surrogate with non-finite weights or outputs fails its cell, a defense's
answers of another dtype are converted (floating) or named (integer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psml_bench import Defense, Knowledge, Spec
from psml_bench.bench.cell import run_cell
from psml_bench.contract.errors import AttackFailed, DefenseError
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec
from psml_bench.isolation.attack_process import PluginLocator, run_attack
from psml_bench.contract.registries import ATTACKS, DEFENSES
from psml_bench.serving.frontend import Frontend

ODD = '''
import torch

from psml_bench import Attack, Spec, SurrogateConfig, train_surrogate


def _trained(target, knowledge, budget, rng):
    inputs = knowledge.pool[:budget]
    answers = target.query(inputs, Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1]))
    return train_surrogate(inputs, answers, knowledge, SurrogateConfig(epochs=1, min_steps=5), rng)


class NaNWeight(Attack):
    def run(self, target, knowledge, budget, rng):
        surrogate = _trained(target, knowledge, budget, rng)
        with torch.no_grad():
            surrogate.net.get_classifier().weight[0, 0] = float("nan")
        return surrogate


class Overflows(Attack):
    """Finite weights so large that every logit is infinite."""

    def run(self, target, knowledge, budget, rng):
        surrogate = _trained(target, knowledge, budget, rng)
        with torch.no_grad():
            surrogate.net.get_classifier().weight.fill_(3e38)
        return surrogate
'''


@pytest.fixture(scope="module")
def odd_attacks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    (folder / "odd_surrogates.py").write_text(ODD)
    return folder


def test_a_surrogate_with_a_nan_weight_fails_with_one_line(tiny_zoo, odd_attacks, monkeypatch):
    monkeypatch.syspath_prepend(str(odd_attacks))
    server = Frontend(tiny_zoo, defense=DEFENSES.get("none")(), rng=np.random.default_rng([0, 2]), budget=20)
    knowledge = Knowledge(input_shape=tiny_zoo.input_shape, num_classes=tiny_zoo.num_classes,
                          spec_range=server.spec_range, pool=tiny_zoo.splits["attacker_x"], role="rank:1")
    ATTACKS.get("odd_surrogates:NaNWeight")
    with pytest.raises(AttackFailed, match=r"^the attack's surrogate has 1 non-finite weight value "
                                           r"\(NaN or infinity\), "
                                           r"the first in 'net\.[a-z_.]+weight': it cannot be scored$"):
        run_attack(server, PluginLocator("odd_surrogates:NaNWeight"), knowledge, 20, np.random.default_rng(0),
                   timeout_s=120)


def test_a_surrogate_whose_outputs_overflow_fails_its_cell(tiny_zoo, odd_attacks, monkeypatch):
    monkeypatch.syspath_prepend(str(odd_attacks))
    attack = PluginSpec("odd_surrogates:Overflows")
    grid = GridConfig("odd", "fmnist-tiny", "infaas", ("rank:1",), (attack,), (PluginSpec("none"),), (20,), (0,),
                      50, "test")
    row = run_cell(tiny_zoo, grid, Cell("rank:1", attack, PluginSpec("none"), 20, 0))
    assert row.status == "failed" and row.surrogate_recipe == ""
    assert row.error.startswith("the attack's surrogate predicts non-finite probabilities on the test split ("), row
    assert all(np.isnan(getattr(row, m)) for m in ("fidelity", "kl", "l1"))


class Casts(Defense):
    """Answers the served probabilities in another dtype."""

    name = "casts"

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype

    def postprocess(self, probabilities, rng):
        return probabilities.to(self.dtype) if self.dtype != torch.bool else probabilities > 0.5


def _query(zoo, dtype):
    server = Frontend(zoo, defense=Casts(dtype), rng=np.random.default_rng(0))
    spec = Spec(sum(server.spec_range.accuracy) / 2, sum(server.spec_range.latency_ms) / 2)
    return server.query(zoo.splits["benign_x"][:8], spec, with_raw=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_answers_are_converted_to_float32(tiny_zoo, dtype):
    answers, raw = _query(tiny_zoo, dtype)
    assert answers.dtype == torch.float32
    torch.testing.assert_close(answers, raw.to(dtype).to(torch.float32), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_integer_answers_fail_with_one_line_naming_the_dtype(tiny_zoo, dtype):
    with pytest.raises(DefenseError, match=rf"^defense 'casts' answer\(\)/postprocess\(\) returned {dtype} answers; "
                                           r"answers are probabilities: return a floating-point tensor "
                                           r"\(torch\.float32; "
                                           r"other floating dtypes are converted to it\)$"):
        _query(tiny_zoo, dtype)
