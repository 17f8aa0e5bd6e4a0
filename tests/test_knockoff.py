"""``knockoff`` (Knockoff Nets): its bandit, rewards and clusters, and its queries on the tiny zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.knockoff import GradientBandit, Knockoff, Rewards, coarse_classes
from psml_bench import ConfigError, Knowledge, Spec, Target
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend

from helpers import Recorder

SMALL = {"min_steps": 100, "epochs": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_coarse_classes_separate_obvious_clusters_and_repeat_with_the_seed():
    rng = np.random.default_rng(0)
    dark = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.1
    bright = 0.9 + torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.1
    pool = torch.cat([dark, bright])
    labels = coarse_classes(pool, 2, rng)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[30]
    pool = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    first, second = coarse_classes(pool, 5, np.random.default_rng(4)), coarse_classes(pool, 5, np.random.default_rng(4))
    assert np.array_equal(first, second) and set(first) <= set(range(5))


def test_the_bandit_learns_the_rewarding_class_and_skips_closed_ones():
    bandit = GradientBandit(3, step_size=0.1)
    assert np.allclose(bandit.policy(), 1 / 3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        arm = int(rng.choice(3, p=bandit.policy()))
        bandit.update(arm, 1.0 if arm == 2 else 0.0)
    assert bandit.policy()[2] > 0.8
    bandit.open[2] = False
    policy = bandit.policy()
    assert policy[2] == 0 and np.isclose(policy.sum(), 1)


def test_rewards_follow_the_paper():
    certainty = Rewards("cert", 3)
    assert certainty(np.array([0.7, 0.2, 0.1]), np.full(3, 1 / 3)) == pytest.approx(0.5)
    diversity = Rewards("div", 3)
    assert diversity(np.array([1.0, 0.0, 0.0]), np.full(3, 1 / 3)) == 0.0  # nothing earlier to differ from
    assert diversity(np.array([0.0, 1.0, 0.0]), np.full(3, 1 / 3)) == pytest.approx(1.0)
    loss = Rewards("loss", 2)
    assert loss(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    combined = Rewards("all", 3)
    assert combined(np.array([0.7, 0.2, 0.1]), np.full(3, 1 / 3)) == 0.0  # one sample: no spread to standardise by


def test_knockoff_rejects_unknown_sampling():
    with pytest.raises(ConfigError):
        Knockoff(sampling="greedy")


def _run(zoo, budget: int, seed: int, **params):
    victim = zoo.role("rank:1")
    server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng([seed, 2]), budget=budget,
                      model_ids=[victim])
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=zoo.splits["attacker_x"], role="rank:1")
    recorder = Recorder(server)
    attack = Knockoff(spec="lax", **SMALL, **params)
    surrogate = attack.run(Target(recorder.query, lambda: server.remaining), knowledge, budget,
                           np.random.default_rng(seed))
    return surrogate, server, knowledge, torch.cat(recorder.inputs)


@pytest.mark.parametrize("sampling", ["random", "adaptive"])
def test_knockoff_spends_its_budget_on_distinct_pool_inputs_and_repeats_with_the_seed(tiny_zoo, sampling):
    first, server, knowledge, queried = _run(tiny_zoo, 120, 0, sampling=sampling, rounds=4)
    assert server.used == 120 and len(queried) == 120
    rows = {row.numpy().tobytes() for row in knowledge.pool}
    assert all(row.numpy().tobytes() in rows for row in queried)
    assert len({row.numpy().tobytes() for row in queried}) == 120
    second, *_ = _run(tiny_zoo, 120, 0, sampling=sampling, rounds=4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with torch.no_grad():
        predicted = first(tiny_zoo.splits["test_x"][:300]).argmax(1).numpy()
    victim = tiny_zoo.test_predictions[tiny_zoo.role("rank:1")][:300].argmax(1).numpy()
    assert (predicted == victim).mean() > 0.5  # chance is 0.1 on 10 classes


def test_adaptive_sampling_favours_the_clusters_that_reward_it(tiny_zoo):
    """With the certainty reward, the bandit sends more queries to the clusters whose answers are most certain."""
    budget, arms = 400, 5
    _, _, knowledge, queried = _run(tiny_zoo, budget, 0, sampling="adaptive", reward="cert", arms=arms, rounds=10,
                                    step_size=0.5)
    # the attack's first draw from its generator is the clustering: repeat it to label the queries
    classes = coarse_classes(knowledge.pool, arms, np.random.default_rng(0))
    index = {row.numpy().tobytes(): i for i, row in enumerate(knowledge.pool)}
    counts = np.bincount(classes[[index[row.numpy().tobytes()] for row in queried]], minlength=arms)
    victim = tiny_zoo.role("rank:1")
    server = Frontend(tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0), model_ids=[victim])
    lax = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
    answers = server.query(knowledge.pool, lax, "extract")
    top = answers.topk(2, dim=1).values
    certainty = (top[:, 0] - top[:, 1]).numpy()
    mean_certainty = np.array([certainty[classes == arm].mean() for arm in range(arms)])
    assert counts[mean_certainty.argmax()] > budget / arms
    assert counts[mean_certainty.argmax()] > counts[mean_certainty.argmin()]



def test_random_knockoff_matches_arts_knockoffnets(tiny_zoo):
    """ART's KnockoffNets (random, probabilities) with our training recipe lands where ours does (one seed, small
    budget; benchmarks/knockoff_vs_art.py is the five-seed comparison)."""
    pytest.importorskip("art", reason="ART is in the test extra: pip install adversarial-robustness-toolbox")
    from benchmarks.knockoff_vs_art import compare
    from psml_bench import SurrogateConfig

    (row,) = compare(tiny_zoo, 300, [0], SurrogateConfig(epochs=5, min_steps=100))
    assert row["ours_queries"] == row["art_queries"] == 300
    assert row["ours_fidelity"] > 0.6 and abs(row["ours_fidelity"] - row["art_fidelity"]) <= 0.03, row
