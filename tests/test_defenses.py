"""Defenses: the spec-noise hook itself, and its effect on routing and goodput on the tiny zoo."""

from __future__ import annotations

import numpy as np
import pytest

from psml_bench import ConfigError, SpecRange
from psml_bench._plugins import DEFENSES, make_defense
from psml_bench._runner import Cell, GridConfig, PluginSpec, _goodput
from psml_bench._serving import Server

RANGE = SpecRange((0.70, 0.96), (0.5, 10.0))


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
    server = Server(tiny_zoo, defense=make_defense("spec-noise", {"scale": 0.2}), rng=np.random.default_rng(0))
    top = tiny_zoo.entry(tiny_zoo.role("rank:2")).accuracy + 0.001  # just inside rank:1's region
    served, meets = server.route(np.full(2000, top), np.full(2000, tiny_zoo.latency_range_ms[1]))
    # noise downwards past the boundary reaches the less accurate rank:2, a miss
    assert 0.2 < meets.mean() < 0.8 and len(set(served.tolist())) > 1
    clean = Server(tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0))
    assert clean.route(np.full(10, top), np.full(10, tiny_zoo.latency_range_ms[1]))[1].all()


def test_goodput_falls_as_noise_grows(tiny_zoo):
    grid = GridConfig("g", "fmnist-tiny", "infaas", ("rank:1",), (), (), (100,), (0,), 1000, "test")
    goodputs = [_goodput(tiny_zoo, grid, Cell("rank:1", PluginSpec("naive"), PluginSpec(
        "spec-noise", (("scale", scale),)), 100, 0)) for scale in (0.0, 0.02, 0.1, 0.3)]
    assert goodputs[0] == 1.0
    assert goodputs == sorted(goodputs, reverse=True) and goodputs[-1] < goodputs[1]
