"""A submitted defense answers from its jailed process exactly as it would in the worker: answers, routing, refusals,
the client work it prices, blocked clients and its generators' states."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from psml_bench.isolation.attack_process import sandbox_available
from psml_bench.isolation.jailed_defense import SubmittedDefense
from psml_bench.plugins.manifests import load_manifest
from psml_bench.plugins.registration import register
from psml_bench.contract.registries import DEFENSES
from psml_bench.contract.requests import Requests
from psml_bench.serving.frontend import Frontend

from test_submissions import write_submission

pytestmark = pytest.mark.skipif(not sandbox_available(), reason="the sandbox needs bubblewrap and user namespaces")

STATEFUL = '''
import numpy as np
import torch

from psml_bench import Defense


class Jittery(Defense):
    """Random refusals, spec noise and answer noise; blocks a client after a few requests; remembers everything."""

    version = "1"
    strength = "scale"
    deterministic = False
    defaults = {"scale": 0.05, "patience": 5}

    def __init__(self, **params):
        super().__init__(**params)
        self.seen = {}
        self.kept = None

    def admit(self, requests, rng):
        for client in requests.clients:
            self.seen[int(client)] = self.seen.get(int(client), 0) + 1
            if self.seen[int(client)] > self.params["patience"]:
                self.block(int(client))
        return rng.random(len(requests)) > 0.2

    def perturb_spec(self, min_accuracy, max_latency_ms, spec_range, rng):
        return min_accuracy - rng.random(len(min_accuracy)) * self.params["scale"], max_latency_ms

    def reroute(self, served, candidates, rng):
        self.kept = self.kept or rng  # a defense may hold on to a generator it was given
        return np.where(candidates[np.arange(len(served)), served], served, served)

    def answer(self, requests, probabilities, rng):
        noisy = probabilities + torch.from_numpy(self.kept.random(probabilities.shape)).float() * self.params["scale"]
        return noisy / noisy.sum(dim=1, keepdim=True)

    def client_work_ms(self, requests, answers, rng):
        return answers[:, 0].double().numpy() * 100 + rng.random(len(requests))
'''
MANIFEST = {"name": "jittery", "kind": "defense", "entry": "jittery:Jittery", "version": "1", "authors": ["A. Author"],
            "description": "A stateful random defense for the tests.", "license": "MIT", "grids": ["nowhere"],
            "parameters": {"scale": {"type": "number", "default": 0.05}, "patience": {"type": "integer", "default": 5}},
            "sweep": {"parameter": "scale", "values": [0.05]}}


def _serve(zoo, defense) -> tuple[list, list, list]:
    """Two servers (two generators) sharing the defense, as a cell's benign and attacker servers do."""
    servers = [Frontend(zoo, defense=defense, rng=np.random.default_rng([7, k])) for k in (2, 4)]
    accuracy, latency = (sum(r) / 2 for r in (servers[0].spec_range.accuracy, servers[0].spec_range.latency_ms))
    inputs, outcomes = zoo.splits["benign_x"], []
    for step in range(8):
        server = servers[step % 2]
        requests = Requests(np.arange(6) % 3 + 3 * (step % 2), inputs[6 * step:6 * step + 6], np.full(6, accuracy),
                            np.full(6, latency), np.zeros(6))
        served = server.serve(requests, server.rng)
        outcomes.append((served.answers.numpy(), served.refused, served.served, served.work_ms))
    return outcomes, sorted(defense.blocked), [s.rng.bit_generator.state for s in servers]


def test_a_jailed_defense_serves_exactly_as_the_same_class_in_the_worker(tiny_zoo, tmp_path):
    folder = write_submission(tmp_path, MANIFEST, {"jittery.py": STATEFUL})
    register(load_manifest(folder))
    jailed = DEFENSES.get("jittery")(scale=0.1)
    assert isinstance(jailed, SubmittedDefense) and "Jittery" not in {type(c).__name__ for c in type(jailed).__mro__}
    spec = importlib.util.spec_from_file_location("jittery_in_the_worker", folder / "jittery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    direct = module.Jittery(scale=0.1)
    (outcomes, blocked, states), (expected, expected_blocked, expected_states) = _serve(tiny_zoo, jailed), \
        _serve(tiny_zoo, direct)
    assert blocked == expected_blocked and blocked and states == expected_states
    assert jailed.deterministic is False
    for (answers, refused, served, work), (want_answers, want_refused, want_served, want_work) in zip(outcomes,
                                                                                                     expected):
        assert np.array_equal(answers, want_answers, equal_nan=True)
        assert np.array_equal(refused, want_refused) and np.array_equal(served, want_served)
        assert np.array_equal(work, want_work) and (work[~refused] > 0).all() and (work[refused] == 0).all()
    assert any(r.any() for _, r, _, _ in outcomes) and not all(r.all() for _, r, _, _ in outcomes)
