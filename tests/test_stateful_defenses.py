"""PRADA, Adaptive Misinformation and Prediction Poisoning on hand-made inputs; the latency and stealth attacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psml_bench import ConfigError, Requests
from psml_bench.bench.grid import load_grid
from psml_bench.contract.registries import make_defense
from defenses.adaptive_misinformation import blend_weight, misinformation
from defenses.prada import min_distance_statistic
from defenses.prediction_poisoning import mad_objective, poison
from attacks.psml_stealth import nearest_distances, spaced_steps
from attacks.psml_timing import latency_models


def _requests(inputs: torch.Tensor, client: int = 7) -> Requests:
    n = len(inputs)
    return Requests(np.full(n, client, dtype=np.int64), inputs, np.zeros(n), np.zeros(n), np.zeros(n))


# --- PRADA -----------------------------------------------------------------------------------------

def test_prada_statistic_is_high_on_normal_distances_and_low_on_bimodal_ones():
    rng = np.random.default_rng(0)
    normal = rng.normal(5.0, 1.0, 300)
    synthetic = np.concatenate([rng.normal(5.0, 1.0, 150), rng.normal(1.0, 0.05, 150)])  # steps of one size
    assert min_distance_statistic(normal) > 0.99
    assert min_distance_statistic(synthetic) < 0.9
    assert min_distance_statistic(np.full(50, 2.0)) == 0.0


def _prada_sees(defense, inputs: torch.Tensor, client: int = 7) -> None:
    probabilities = torch.zeros(len(inputs), 3)
    probabilities[:, 0] = 1.0  # one predicted class: the growing set is every query's
    for start in range(0, len(inputs), 10):
        defense.answer(_requests(inputs[start:start + 10], client), probabilities[start:start + 10],
                       np.random.default_rng(0))


def test_prada_lets_natural_queries_through_and_blocks_small_steps():
    rng = torch.Generator().manual_seed(0)
    natural = torch.rand(300, 1, 8, 8, generator=rng)
    passive = make_defense("prada")
    _prada_sees(passive, natural)
    assert passive.statistic(7) > 0.95 and not passive.detected
    queried = torch.rand(30, 1, 8, 8, generator=rng)
    for _ in range(3):  # Jacobian-like rounds: every earlier input stepped by 0.05 per pixel
        sign = torch.randint(0, 2, queried.shape, generator=rng) * 2.0 - 1.0
        queried = torch.cat([queried, (queried + 0.05 * sign).clamp(0, 1)])
    synthetic = queried
    active = make_defense("prada")
    _prada_sees(active, torch.cat([synthetic, natural[:150]]))
    assert active.blocked == {7}


def test_prada_noise_answers_a_detected_client_with_probabilities():
    defense = make_defense("prada", {"action": "noise", "min_history": 20})
    repeated = torch.rand(1, 1, 4, 4).expand(40, 1, 4, 4)  # one input again and again: distance 0
    _prada_sees(defense, repeated)
    assert defense.detected == {7} and not defense.blocked
    answers = defense.answer(_requests(repeated[:5]), torch.eye(3)[[0] * 5], np.random.default_rng(1))
    assert torch.allclose(answers.sum(dim=1), torch.ones(5)) and not torch.equal(answers, torch.eye(3)[[0] * 5])


# --- Adaptive Misinformation ---------------------------------------------------------------------

def test_misinformation_reverses_ranks_and_the_blend_follows_the_sigmoid():
    y = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], dtype=torch.float64)
    assert torch.equal(misinformation(y), torch.tensor([[0.1, 0.2, 0.7], [0.25, 0.35, 0.4]], dtype=torch.float64))
    assert float(blend_weight(torch.tensor(0.5), 0.5, 10.0)) == pytest.approx(0.5)
    defense = make_defense("adaptive-misinformation", {"tau": 0.5, "nu": 1000.0})
    out = defense.postprocess(y, np.random.default_rng(0))
    assert torch.allclose(out[0], y[0])  # confident: in distribution, the true answer
    assert torch.allclose(out[1], misinformation(y)[1:2][0])  # unsure: out of distribution, misinformation
    soft = make_defense("adaptive-misinformation", {"tau": 0.4, "nu": 10.0}).postprocess(y[1:], None)
    assert torch.allclose(soft[0], 0.5 * y[1] + 0.5 * misinformation(y)[1])


# --- Prediction Poisoning (MAD) -------------------------------------------------------------------

def test_mad_objective_is_the_reference_jacobian_objective_for_a_linear_last_layer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    h = torch.randn(1, 6)
    p = torch.softmax(layer(h), dim=1)
    nll = -torch.log_softmax(layer(h), dim=1)[0]
    G = torch.stack([torch.autograd.grad(nll[k], layer.weight, retain_graph=True)[0].flatten() for k in range(4)])
    y = torch.tensor([0.6, 0.2, 0.15, 0.05])
    candidate = torch.tensor([0.1, 0.1, 0.1, 0.7])
    u, v = G.t() @ candidate, G.t() @ y
    reference = ((u / u.norm() - v / v.norm()) ** 2).sum()
    ours = mad_objective(candidate[None, None].double(), y[None].double(), p.detach().double())
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("keep_argmax", [False, True])
def test_mad_stays_within_epsilon_in_the_simplex_and_keeps_the_argmax_when_asked(norm, keep_argmax):
    generator = torch.Generator().manual_seed(3)
    y = torch.softmax(3 * torch.randn(200, 10, generator=generator), dim=1)
    p = torch.softmax(torch.randn(200, 10, generator=generator), dim=1)
    out = poison(y, p, 0.6, norm, keep_argmax)
    assert ((out - y.double()).norm(p=1 if norm == "l1" else 2, dim=1) <= 0.6 + 1e-9).all()
    assert (out >= 0).all() and torch.allclose(out.sum(dim=1), torch.ones(200, dtype=torch.float64))
    kept = (out.argmax(dim=1) == y.argmax(dim=1)).float().mean()
    assert kept == 1.0 if keep_argmax else kept < 1.0
    assert (out - y.double()).abs().sum(dim=1).mean() > 0.3  # it moves the answers


def test_prediction_poisoning_is_deterministic_per_input_and_zero_epsilon_is_the_identity():
    inputs = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    defense = make_defense("prediction-poisoning", {"epsilon": 0.4, "keep_argmax": True})
    first = defense.answer(_requests(inputs), y, np.random.default_rng(0))
    again = make_defense("prediction-poisoning", {"epsilon": 0.4, "keep_argmax": True}).answer(
        _requests(inputs), y, np.random.default_rng(5))
    assert torch.equal(first, again) and not torch.equal(first, y)
    assert torch.equal(make_defense("prediction-poisoning", {"epsilon": 0.0}).answer(_requests(inputs), y, None), y)
    with pytest.raises(ConfigError, match="timm architecture"):
        make_defense("prediction-poisoning", {"surrogate": "no_such_net"})


# --- attacks ---------------------------------------------------------------------------------------

def test_nearest_distances_are_per_label_and_to_earlier_inputs_only():
    inputs = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [10.0, 0.0]]).view(4, 1, 1, 2)
    labels = torch.tensor([0, 0, 0, 1])
    assert sorted(nearest_distances(inputs, labels).tolist()) == [1.0, 5.0]


@pytest.mark.parametrize("least, models", [
    ([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [0, 0, 0, 1, 1, 1]),   # two models, clean
    ([1.0, 1.5, 1.0, 2.0, 3.0, 2.0], [0, 0, 0, 1, 1, 1]),   # busy workers add delays: the suffix minimum removes them
    ([1.0, 1.0, 1.3, 2.0, 2.0, 2.0], [0, 0, 0, 1, 1, 1]),   # a rise seen at one floor only is no model
    ([1.0, 1.0, 1.01, 1.01, 1.05, 1.05], [0, 0, 0, 0, 1, 1]),  # 1% apart is one model, 5% two (tolerance 2%)
])
def test_latency_models_take_suffix_minima_and_need_two_floors_per_model(least, models):
    estimate, found = latency_models(np.array(least), 0.02)
    assert found == models
    assert estimate.tolist() == np.minimum.accumulate(np.array(least)[::-1])[::-1].tolist()


def test_spaced_steps_have_the_wanted_length_and_stay_in_the_unit_box():
    surrogate = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    torch.manual_seed(0)
    inputs = torch.rand(5, 1, 4, 4)
    wanted = np.array([0.1, 0.3, 0.5, 0.8, 1.0])
    steps = spaced_steps(surrogate, inputs, torch.tensor([0, 1, 2, 0, 1]), wanted)
    assert steps.min() >= 0 and steps.max() <= 1
    assert np.allclose((steps - inputs).flatten(1).norm(dim=1).numpy(), wanted, atol=1e-4)


def test_a_latency_attack_on_a_service_without_latency_is_refused_at_grid_load(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nseeds = [0]\nbudgets = [100]\n'
                    'attacks = [{ name = "psml-timing" }]\ndefenses = [{ name = "none" }]\n')
    with pytest.raises(ConfigError, match="latency_visible"):
        load_grid(grid)
