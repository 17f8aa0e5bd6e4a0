"""Defenses: conformance of every built-in, then each one's hook and its effect on the tiny zoo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from psml_bench import ConfigError, Spec, SpecRange
from psml_bench.contract.registries import DEFENSES, make_defense
from psml_bench.bench.grid import load_grid
from psml_bench.serving.frontend import Frontend
from psml_bench.bench.sanity import are_probability_vectors

RANGE = SpecRange((0.70, 0.96), (0.5, 10.0))


def _feasible_specs(zoo, n, seed):
    rng = np.random.default_rng(seed)
    accuracy, latency = rng.uniform(*zoo.accuracy_range, n), rng.uniform(*zoo.latency_range_ms, n)
    meets = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng(0)).route(accuracy, latency)[1]
    return accuracy[meets], latency[meets]


def test_none_is_the_identity():
    accuracy, latency = np.array([0.8, 0.9]), np.array([1.0, 2.0])
    out = make_defense("none").perturb_spec(accuracy, latency, RANGE, np.random.default_rng(0))
    assert np.array_equal(out[0], accuracy) and np.array_equal(out[1], latency)


def test_spec_noise_scale_is_relative_to_the_advertised_widths():
    n = 200_000
    accuracy, latency = np.full(n, 0.85), np.full(n, 5.0)
    noisy_accuracy, noisy_latency = make_defense("spec-noise", {"scale": 0.1}).perturb_spec(
        accuracy, latency, RANGE, np.random.default_rng(0))
    assert np.std(noisy_accuracy - accuracy) == pytest.approx(0.1 * 0.26, rel=0.02)
    assert np.std(noisy_latency - latency) == pytest.approx(0.1 * 9.5, rel=0.02)
    assert abs(np.mean(noisy_accuracy - accuracy)) < 1e-3


def test_spec_noise_zero_scale_is_the_identity_and_same_seed_same_noise():
    accuracy, latency = np.array([0.8, 0.9]), np.array([1.0, 2.0])
    zero = make_defense("spec-noise", {"scale": 0.0}).perturb_spec(accuracy, latency, RANGE, np.random.default_rng(0))
    assert np.array_equal(zero[0], accuracy)
    defense = make_defense("spec-noise", {"scale": 0.05})
    first = defense.perturb_spec(accuracy, latency, RANGE, np.random.default_rng(7))
    second = defense.perturb_spec(accuracy, latency, RANGE, np.random.default_rng(7))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_spec_noise_declares_strength_and_randomness():
    cls = DEFENSES.get("spec-noise")
    assert cls.strength == "scale" and cls.deterministic is False
    assert make_defense("spec-noise", {"scale": 0.05}).label == "spec-noise(scale=0.05)"
    with pytest.raises(ConfigError, match="no parameter"):
        make_defense("spec-noise", {"sigma": 1})


def test_noisy_specs_are_clipped_and_misroute_near_boundaries(tiny_zoo):
    server = Frontend(tiny_zoo, defense=make_defense("spec-noise", {"scale": 0.2}), rng=np.random.default_rng(0))
    top = tiny_zoo.entry(tiny_zoo.role("rank:2")).accuracy + 0.001  # just inside rank:1's region
    served, meets = server.route(np.full(2000, top), np.full(2000, tiny_zoo.latency_range_ms[1]))
    # noise downwards past the boundary reaches the less accurate rank:2, a miss
    assert 0.2 < meets.mean() < 0.8 and len(set(served.tolist())) > 1
    clean = Frontend(tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0))
    assert clean.route(np.full(10, top), np.full(10, tiny_zoo.latency_range_ms[1]))[1].all()


def test_goodput_falls_as_noise_grows(tiny_zoo):
    accuracy, latency = _feasible_specs(tiny_zoo, 4000, 2)
    goodputs = [Frontend(tiny_zoo, defense=make_defense("spec-noise", {"scale": scale}), rng=np.random.default_rng(0))
                .route(accuracy, latency)[1].mean() for scale in (0.0, 0.02, 0.1, 0.3)]
    assert goodputs[0] == 1.0
    assert goodputs == sorted(goodputs, reverse=True) and goodputs[-1] < goodputs[1]


# --- every built-in defense: the same conformance checks --------------------------------------

BUILT_IN = [entry.name for entry in DEFENSES if entry.source == "built-in"]
OUTPUT_DEFENSES = ["label-only", "top-k", "reverse-sigmoid"]  # deterministic, postprocess only


def test_the_built_in_defenses_are_registered():
    assert {"none", "spec-noise", "spec-quantize", "random-routing", "label-only", "top-k", "reverse-sigmoid",
            "prob-noise", "prada", "adaptive-misinformation", "prediction-poisoning", "proof-of-work"} <= set(BUILT_IN)


@pytest.mark.parametrize("name, strength, deterministic", [
    ("none", None, True), ("spec-noise", "scale", False), ("spec-quantize", "step", True),
    ("random-routing", "probability", False), ("label-only", None, True), ("top-k", "k", True),
    ("reverse-sigmoid", "beta", True), ("prob-noise", "sigma", False), ("prada", "delta", False),
    ("adaptive-misinformation", "tau", True), ("prediction-poisoning", "epsilon", True),
    ("proof-of-work", "work_factor", True)])
def test_strength_and_determinism_are_declared(name, strength, deterministic):
    cls = DEFENSES.get(name)
    assert cls.strength == strength and cls.deterministic is deterministic
    assert strength is None or strength in cls.defaults
    if strength is not None:  # the strength shows in the label even at its default
        assert make_defense(name).label == f"{name}({strength}={cls.defaults[strength]})"


@pytest.mark.parametrize("name", BUILT_IN)
def test_answers_are_probabilities_and_determinism_is_as_declared(name, tiny_zoo):
    inputs = tiny_zoo.splits["benign_x"][:64]
    spec = Spec(sum(tiny_zoo.accuracy_range) / 2, sum(tiny_zoo.latency_range_ms) / 2)
    runs = []
    for _ in range(2):  # two fresh servers with the same seed: the same answers
        server = Frontend(tiny_zoo, defense=make_defense(name), rng=np.random.default_rng(3))
        calls = [server.query(inputs, spec) for _ in range(2)]
        runs.append(calls)
        answered = ~server.last_refused  # query-hash refuses the second call (the same inputs again)
    (first, second), (again, _) = runs
    assert are_probability_vectors(first, tiny_zoo.num_classes)
    assert are_probability_vectors(second[answered], tiny_zoo.num_classes)
    assert torch.equal(first, again)
    if DEFENSES.get(name).deterministic:
        assert torch.equal(first, second)


@pytest.mark.parametrize("name, params", [
    ("spec-noise", {"scale": -0.1}), ("spec-noise", {"scale": float("nan")}),
    ("spec-noise", {"distribution": "cauchy"}), ("spec-quantize", {"step": -0.1}),
    ("spec-quantize", {"step": 1.5}), ("random-routing", {"probability": 1.2}),
    ("random-routing", {"probability": -0.5}), ("top-k", {"k": 0}), ("top-k", {"k": 2.5}),
    ("reverse-sigmoid", {"beta": -1.0}), ("reverse-sigmoid", {"gamma": 0.0}), ("prob-noise", {"sigma": -0.01}),
    ("prada", {"delta": 1.5}), ("prada", {"action": "drop"}), ("adaptive-misinformation", {"tau": -0.1}),
    ("prediction-poisoning", {"norm": "kl"}), ("proof-of-work", {"work_factor": 0.0}),
    ("proof-of-work", {"sigma": -1.0}), ("proof-of-work", {"teachers": 1}), ("proof-of-work", {"delta": 0.5})])
def test_bad_parameter_values_are_one_clear_config_error(name, params):
    [(key, value)] = params.items()
    with pytest.raises(ConfigError, match=rf"^defense '{name}' parameter '{key}' must be [^\n]*, got {value!r}$"):
        make_defense(name, params)


def test_a_bad_value_in_a_grid_names_the_file_and_field(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [10]\nseeds = [0]\n'
                    'benign_queries = 10\n[[attacks]]\nname = "naive"\n[[defenses]]\nname = "top-k"\n'
                    'sweep = { k = [2, 0] }\n')
    with pytest.raises(ConfigError, match=r"g\.toml: field 'defenses\.0': defense 'top-k' parameter 'k'"):
        load_grid(grid)


# --- spec-noise: Laplace ----------------------------------------------------------------------

def test_spec_noise_gaussian_is_the_same_noise_as_before():
    accuracy, latency = np.linspace(0.7, 0.96, 50), np.linspace(0.5, 10.0, 50)
    default = make_defense("spec-noise", {"scale": 0.05}).perturb_spec(
        accuracy, latency, RANGE, np.random.default_rng(4))
    explicit = make_defense("spec-noise", {"scale": 0.05, "distribution": "gaussian"}).perturb_spec(
        accuracy, latency, RANGE, np.random.default_rng(4))
    rng = np.random.default_rng(4)  # what the defense drew before it had a distribution parameter
    expected = (accuracy + rng.normal(0.0, 0.05 * 0.26, size=50), latency + rng.normal(0.0, 0.05 * 9.5, size=50))
    for out in (default, explicit):
        assert np.array_equal(out[0], expected[0]) and np.array_equal(out[1], expected[1])


def test_laplace_spec_noise_has_the_variance_of_gaussian_at_equal_scale():
    n = 200_000
    accuracy, latency = np.full(n, 0.85), np.full(n, 5.0)
    noisy_accuracy, noisy_latency = make_defense("spec-noise", {"scale": 0.1, "distribution": "laplace"}).perturb_spec(
        accuracy, latency, RANGE, np.random.default_rng(0))
    for noise, width in ((noisy_accuracy - accuracy, 0.26), (noisy_latency - latency, 9.5)):
        assert np.std(noise) == pytest.approx(0.1 * width, rel=0.02)
        # Laplace: mean |x| = b = scale * width / sqrt(2) (a Gaussian's would be 0.798 * std)
        assert np.mean(np.abs(noise)) == pytest.approx(0.1 * width / np.sqrt(2), rel=0.02)
        assert abs(np.mean(noise)) < 0.01 * 0.1 * width * 10
    assert make_defense("spec-noise", {"distribution": "laplace"}).label == \
        "spec-noise(distribution=laplace,scale=0.02)"


def test_laplace_epsilon_mapping_is_documented():
    doc = " ".join((DEFENSES.get("spec-noise").__doc__ or "").split())
    assert "epsilon = width / b = sqrt(2) / scale" in doc and "epsilon 14.1" in doc
    assert np.sqrt(2) / 0.1 == pytest.approx(14.14, abs=0.01)


# --- spec-quantize ----------------------------------------------------------------------------

def test_spec_quantize_snaps_each_field_to_its_grid():
    defense = make_defense("spec-quantize", {"step": 0.1})  # cells of 0.026 in accuracy, 0.95 ms in latency
    accuracy = np.array([0.70, 0.712, 0.714, 0.738, 0.739, 0.95, 0.96])  # 0.739: a half, up
    latency = np.array([0.5, 0.9, 1.0, 5.2, 5.3, 9.9, 10.0])
    snapped_accuracy, snapped_latency = defense.perturb_spec(accuracy, latency, RANGE, np.random.default_rng(0))
    assert snapped_accuracy == pytest.approx([0.70, 0.70, 0.726, 0.726, 0.752, 0.96, 0.96])
    assert snapped_latency == pytest.approx([0.5, 0.5, 1.45, 5.25, 5.25, 10.0, 10.0])
    exact = SpecRange((0.0, 1.0), (0.0, 8.0))  # binary fractions: the halves are exact
    halves = make_defense("spec-quantize", {"step": 0.25}).perturb_spec(
        np.array([0.125, 0.375, 0.625]), np.array([1.0, 3.0, 5.0]), exact, None)
    assert halves[0].tolist() == [0.25, 0.5, 0.75] and halves[1].tolist() == [2.0, 4.0, 6.0]
    many = np.random.default_rng(1).uniform(0.70, 0.96, 1000)
    snapped = defense.perturb_spec(many, np.full(1000, 5.0), RANGE, np.random.default_rng(0))[0]
    cells = (snapped - 0.70) / 0.026
    assert np.allclose(cells, np.round(cells)) and np.abs(snapped - many).max() <= 0.013 + 1e-12
    assert len(np.unique(np.round(cells))) == 11


def test_spec_quantize_is_deterministic_per_query_and_zero_step_is_the_identity():
    accuracy = np.random.default_rng(2).uniform(0.70, 0.96, 40)
    latency = np.random.default_rng(3).uniform(0.5, 10.0, 40)
    defense = make_defense("spec-quantize", {"step": 0.2})
    batch = defense.perturb_spec(accuracy, latency, RANGE, np.random.default_rng(0))
    alone = [defense.perturb_spec(accuracy[i:i + 1], latency[i:i + 1], RANGE, np.random.default_rng(i))
             for i in range(40)]
    assert np.array_equal(batch[0], np.concatenate([a for a, _ in alone]))
    assert np.array_equal(batch[1], np.concatenate([lat for _, lat in alone]))
    zero = make_defense("spec-quantize", {"step": 0.0}).perturb_spec(accuracy, latency, RANGE, None)
    assert np.array_equal(zero[0], accuracy) and np.array_equal(zero[1], latency)


def test_spec_quantize_costs_goodput_and_serves_one_model_per_grid_cell(tiny_zoo):
    accuracy, latency = _feasible_specs(tiny_zoo, 6000, 0)
    goodput = {}
    for step in (0.0, 0.1, 0.3):
        server = Frontend(tiny_zoo, defense=make_defense("spec-quantize", {"step": step}), rng=np.random.default_rng(0))
        goodput[step] = server.route(accuracy, latency)[1].mean()
    assert goodput[0.0] == 1.0 and goodput[0.3] < goodput[0.1] < 1.0 and goodput[0.3] < 0.95
    # a fine sweep of the accuracy floor: the served model changes only where the snapped floor does
    server = Frontend(tiny_zoo, defense=make_defense("spec-quantize", {"step": 0.1}), rng=np.random.default_rng(0))
    floors = np.linspace(*tiny_zoo.accuracy_range, 400)
    served, _ = server.route(floors, np.full(400, tiny_zoo.latency_range_ms[1]))
    snapped = server.defense.perturb_spec(floors, floors, server.spec_range, None)[0]
    changes = np.flatnonzero(np.diff(served))
    assert len(changes) >= 2 and all(snapped[i] != snapped[i + 1] for i in changes)


# --- random-routing ---------------------------------------------------------------------------

def test_random_routing_draws_only_candidates_uniformly():
    n = 30_000
    rng = np.random.default_rng(0)
    candidates = rng.random((n, 4)) < 0.5
    candidates[:100] = False  # specs no model meets keep the policy's choice
    served = np.argmax(candidates, axis=1)
    rerouted = make_defense("random-routing", {"probability": 1.0}).reroute(
        served, candidates, np.random.default_rng(1))
    some = candidates.any(axis=1)
    assert np.array_equal(rerouted[~some], served[~some]) and (~some).sum() > 100
    assert candidates[some, rerouted[some]].all()
    full = candidates.all(axis=1)  # rows where all four are candidates: each drawn a quarter of the time
    assert np.bincount(rerouted[full], minlength=4) / full.sum() == pytest.approx([0.25] * 4, abs=0.03)
    pairs = candidates.sum(axis=1) == 2
    first_of_pair = rerouted[pairs] == np.argmax(candidates[pairs], axis=1)
    assert first_of_pair.mean() == pytest.approx(0.5, abs=0.02)


def test_random_routing_probability_sets_the_share_rerouted():
    n = 30_000
    candidates, served = np.ones((n, 3), dtype=bool), np.zeros(n, dtype=np.int64)
    zero = make_defense("random-routing", {"probability": 0.0}).reroute(served, candidates, np.random.default_rng(0))
    assert np.array_equal(zero, served)
    half = make_defense("random-routing", {"probability": 0.5})
    moved = half.reroute(served, candidates, np.random.default_rng(0)) != 0
    assert moved.mean() == pytest.approx(0.5 * 2 / 3, abs=0.01)  # a draw lands on the policy's model 1/3
    assert np.array_equal(half.reroute(served, candidates, np.random.default_rng(5)),
                          half.reroute(served, candidates, np.random.default_rng(5)))
    assert not np.array_equal(half.reroute(served, candidates, np.random.default_rng(5)),
                              half.reroute(served, candidates, np.random.default_rng(6)))


def test_random_routing_keeps_goodput_and_costs_latency(tiny_zoo):
    accuracy, latency = _feasible_specs(tiny_zoo, 6000, 1)
    served_latency = {}
    for probability in (0.0, 0.5, 1.0):
        server = Frontend(tiny_zoo, defense=make_defense("random-routing", {"probability": probability}),
                          rng=np.random.default_rng(0))
        served, meets = server.route(accuracy, latency)
        assert meets.all()  # every candidate meets the spec
        if probability == 0.0:
            assert np.array_equal(served, server.requested(accuracy, latency))
        served_latency[probability] = server._latency[served].mean()
    assert served_latency[0.0] < served_latency[0.5] < served_latency[1.0]
    # the attacker's lax spec: every model serves, mixed at random
    server = Frontend(tiny_zoo, defense=make_defense("random-routing", {"probability": 1.0}),
                      rng=np.random.default_rng(0))
    lax = server.route(np.full(900, tiny_zoo.accuracy_range[0]), np.full(900, tiny_zoo.latency_range_ms[1]))[0]
    assert np.bincount(lax, minlength=len(server.menu)) / 900 == pytest.approx([1 / 3] * 3, abs=0.05)


# --- output defenses --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def answers(tiny_zoo) -> torch.Tensor:
    """Real answers: the tiny zoo's test-split probabilities, every model, 300 rows each."""
    return torch.cat([p[:300] for p in tiny_zoo.test_predictions.values()])


@pytest.mark.parametrize("name", OUTPUT_DEFENSES + ["top-k:1"])
def test_output_defenses_work_per_row_and_keep_the_top_class(name, answers):
    name, _, k = name.partition(":")
    defense = make_defense(name, {"k": int(k)} if k else {})
    batch = defense.postprocess(answers, np.random.default_rng(0))
    singles = torch.cat([defense.postprocess(answers[i:i + 1], np.random.default_rng(0)) for i in range(len(answers))])
    assert torch.equal(batch, singles)
    assert are_probability_vectors(batch, answers.shape[1]) and batch.dtype == answers.dtype
    assert torch.equal(batch.argmax(dim=1), answers.argmax(dim=1))
    assert not torch.equal(batch, answers)


def test_label_only_is_one_hot_per_row_with_ties_to_the_lowest_class():
    ties = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.2, 0.7]])
    out = make_defense("label-only").postprocess(ties, np.random.default_rng(0))
    assert torch.equal(out, torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]))


def test_top_k_keeps_the_k_largest_and_renormalises():
    rows = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.4, 0.2, 0.2, 0.2], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    out = make_defense("top-k", {"k": 2}).postprocess(rows, np.random.default_rng(0))
    expected = torch.tensor([[0.625, 0.375, 0, 0], [2 / 3, 1 / 3, 0, 0], [0, 0, 3 / 7, 4 / 7]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.equal(make_defense("top-k", {"k": 4}).postprocess(rows, None), rows)
    assert torch.equal(make_defense("top-k", {"k": 9}).postprocess(rows, None), rows)
    assert make_defense("top-k", {"k": 3}).postprocess(rows, None)[1].tolist() == pytest.approx([0.5, 0.25, 0.25, 0])


def test_top_1_is_label_only(answers):
    assert torch.equal(make_defense("top-k", {"k": 1}).postprocess(answers, None),
                       make_defense("label-only").postprocess(answers, None))


def _reverse_sigmoid_by_hand(row: list[float], beta: float, gamma: float) -> list[float]:
    def perturbed(y: float) -> float:
        clipped = min(max(y, 1e-6), 1 - 1e-6)
        return max(y - beta * (1 / (1 + math.exp(-gamma * math.log(clipped / (1 - clipped)))) - 0.5), 0.0)
    values = [perturbed(y) for y in row]
    return [v / sum(values) for v in values]


def test_reverse_sigmoid_follows_lee_et_al():
    rows = [[0.7, 0.2, 0.1], [0.98, 0.015, 0.005], [0.4, 0.35, 0.25]]
    for beta, gamma in ((0.7, 0.4), (1.0, 0.1), (3.0, 2.0)):
        out = make_defense("reverse-sigmoid", {"beta": beta, "gamma": gamma}).postprocess(
            torch.tensor(rows, dtype=torch.float64), None)
        assert torch.allclose(out, torch.tensor([_reverse_sigmoid_by_hand(r, beta, gamma) for r in rows],
                                                dtype=torch.float64), atol=1e-12)
    default = make_defense("reverse-sigmoid").postprocess(torch.tensor([[0.7, 0.2, 0.1]]), None)
    assert default[0].tolist() == pytest.approx([0.5432, 0.2496, 0.2072], abs=1e-4)  # flattened, order kept
    zero = make_defense("reverse-sigmoid", {"beta": 0.0}).postprocess(torch.tensor(rows, dtype=torch.float64), None)
    assert torch.allclose(zero, torch.tensor(rows, dtype=torch.float64), atol=1e-12)


def test_reverse_sigmoid_keeps_every_tiny_zoo_argmax_at_its_defaults_but_not_always(tiny_zoo):
    defense = make_defense("reverse-sigmoid")
    for predictions in tiny_zoo.test_predictions.values():
        assert torch.equal(defense.postprocess(predictions, None).argmax(dim=1), predictions.argmax(dim=1))
    # a weak top class (0.2) beside a class at 0: y - r is larger at y = 0 (0.347) than at 0.2 (0.294)
    weak = torch.tensor([[0.2, 0.0] + [0.1] * 8])
    assert defense.postprocess(weak, None).argmax(dim=1).item() == 1
    assert make_defense("reverse-sigmoid", {"beta": 1.0, "gamma": 1.0}).postprocess(weak, None)[0].tolist() == \
        pytest.approx([0.1] * 10, abs=1e-6)  # beta * gamma = 1 flattens every row to uniform


def test_prob_noise_is_seeded_per_row_and_flips_labels_more_as_sigma_grows(answers):
    defense = make_defense("prob-noise", {"sigma": 0.05})
    first = defense.postprocess(answers, np.random.default_rng(9))
    assert torch.equal(first, defense.postprocess(answers, np.random.default_rng(9)))
    assert not torch.equal(first, defense.postprocess(answers, np.random.default_rng(10)))
    rng = np.random.default_rng(9)  # per row: a batch is its rows answered one after another
    assert torch.equal(first, torch.cat([defense.postprocess(answers[i:i + 1], rng) for i in range(len(answers))]))
    assert are_probability_vectors(first, answers.shape[1])
    assert torch.equal(make_defense("prob-noise", {"sigma": 0.0}).postprocess(answers, None), answers)
    flips = [(make_defense("prob-noise", {"sigma": sigma}).postprocess(answers, np.random.default_rng(0)).argmax(dim=1)
              != answers.argmax(dim=1)).float().mean().item() for sigma in (0.01, 0.05, 0.2)]
    assert 0 < flips[0] < flips[1] < flips[2] and 0.01 < flips[1] < 0.15


def test_prob_noise_answers_the_top_class_when_the_noise_zeroes_a_row():
    rows = torch.tensor([[0.6, 0.4]] * 200, dtype=torch.float64)
    out = make_defense("prob-noise", {"sigma": 100.0}).postprocess(rows, np.random.default_rng(0))
    empty = ((rows + torch.from_numpy(np.random.default_rng(0).normal(0.0, 100.0, (200, 2)))) <= 0).all(dim=1)
    assert 20 < empty.sum() < 80  # about a quarter of the rows
    assert torch.equal(out[empty], torch.tensor([[1.0, 0.0]] * int(empty.sum()), dtype=torch.float64))
    assert are_probability_vectors(out, 2)
