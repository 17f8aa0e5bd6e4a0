"""Extraction strategies: every registered strategy passes the same conformance tests on the tiny zoo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psml_bench import (ATTACKS, STRATEGIES, SURROGATE_DEFAULTS, ConfigError, Knowledge, QuerySession, Spec,
                        Surrogate, SurrogateConfig, UnknownPluginError, extract, query_batched, sample_pool)
from psml_bench.isolation.attack_process import PluginLocator, run_attack
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for

from helpers import Recorder

BUDGET = 64
SMALL = {"min_steps": 20, "epochs": 1}
SYNTHETIC = {"jacobian": "after a pool seed set", "dfme": "only"}
"""Strategies that query inputs they make (never running out), and whether pool inputs come first or never."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(zoo, budget: int | None, pool_size: int | None = None, victim_only: bool = True):
    victim = zoo.role("rank:1")
    server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng([0, 2]), budget=budget,
                      model_ids=[victim] if victim_only else None)
    pool = zoo.splits["attacker_x"]
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=pool if pool_size is None else pool[:pool_size], role="rank:1")
    return server, knowledge


def _specs(knowledge: Knowledge, n: int) -> list[Spec]:
    """``n`` distinct specs, so the order in which they reach the server can be checked."""
    (a_lo, a_hi), (_, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
    return [Spec(float(a), l_hi) for a in np.linspace(a_lo, a_hi, n)]


def _pool_rows(knowledge: Knowledge) -> dict[bytes, int]:
    return {row.numpy().tobytes(): i for i, row in enumerate(knowledge.pool)}


def _run(zoo, strategy: str, labels: str, budget: int = BUDGET, spec=None, pool_size: int | None = None,
         **config):
    server, knowledge = _setup(zoo, budget, pool_size)
    recorder = Recorder(server)
    spec = _specs(knowledge, budget) if spec is None else spec
    surrogate = extract(recorder.target, knowledge, spec, budget, np.random.default_rng(7),
                        SurrogateConfig(labels=labels, strategy=strategy, **{**SMALL, **config}))
    return surrogate, server, knowledge, recorder, spec


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)


@pytest.fixture(scope="module", params=[(s, lab) for s in STRATEGIES.names() for lab in ("soft", "hard")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def conformance_run(request, tiny_zoo):
    strategy, labels = request.param
    return strategy, labels, _run(tiny_zoo, strategy, labels)


def test_strategy_spends_exactly_its_queries(conformance_run):
    strategy, _, (_, server, _, recorder, _) = conformance_run
    assert server.used == BUDGET == len(recorder.queried)
    assert server.log.count("extract") == BUDGET


def test_strategy_consumes_the_spec_sequence_in_order(conformance_run):
    _, _, (_, _, _, recorder, specs) = conformance_run
    assert recorder.specs == specs


def test_strategy_returns_a_surrogate_with_logits(conformance_run, tiny_zoo):
    _, _, (surrogate, _, _, _, _) = conformance_run
    assert type(surrogate) is Surrogate and not surrogate.training
    with torch.no_grad():
        logits = surrogate(tiny_zoo.splits["test_x"][:7])
    assert logits.shape == (7, tiny_zoo.num_classes) and torch.isfinite(logits).all()


def test_strategy_never_requeries_a_pool_input(conformance_run):
    strategy, _, (_, _, knowledge, recorder, _) = conformance_run
    rows = _pool_rows(knowledge)
    hits = [rows[x.numpy().tobytes()] for x in recorder.queried if x.numpy().tobytes() in rows]
    assert len(hits) == len(set(hits))
    assert ((recorder.queried >= 0) & (recorder.queried <= 1)).all()
    if strategy not in SYNTHETIC:
        assert len(hits) == BUDGET
    elif SYNTHETIC[strategy] == "only":
        assert not hits


def test_same_seed_gives_the_same_surrogate(conformance_run, tiny_zoo):
    strategy, labels, (surrogate, _, _, recorder, _) = conformance_run
    again, _, _, recorder_again, _ = _run(tiny_zoo, strategy, labels)
    assert torch.equal(recorder.queried, recorder_again.queried)
    state, state_again = surrogate.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_strategy_stops_when_the_pool_runs_out(tiny_zoo, strategy):
    """Only new inputs count: pool strategies send the whole (small) pool once; Jacobian makes up the rest, DFME
    needs no pool."""
    _, server, knowledge, recorder, _ = _run(tiny_zoo, strategy, "soft", budget=50, spec=None, pool_size=30)
    expected = 50 if strategy in SYNTHETIC else 30
    assert server.used == expected
    rows = _pool_rows(knowledge)
    hits = [rows[x.numpy().tobytes()] for x in recorder.queried if x.numpy().tobytes() in rows]
    assert len(hits) == len(set(hits)) <= 30


def _old_extract(target, knowledge, spec, n_queries, rng, config):
    """``extract`` and ``train_surrogate`` before strategies (commit 1179b5c), verbatim but for names."""
    indices = sample_pool(knowledge, n_queries, rng)
    inputs = knowledge.pool[indices]
    specs = spec if isinstance(spec, Spec) else list(spec)[: len(inputs)]
    answers = query_batched(target, inputs, specs) if len(inputs) else torch.empty(0, knowledge.num_classes)
    seed = int(rng.integers(2**31))
    pool = knowledge.pool
    mean = pool.mean(dim=(0, 2, 3))
    std = pool.std(dim=(0, 2, 3)).clamp_min(1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Surrogate(config.arch, knowledge.input_shape[0], knowledge.num_classes, mean, std)
    targets = F.one_hot(answers.argmax(1), knowledge.num_classes).float() if config.labels == "hard" \
        else answers.float()
    n = len(inputs)
    steps = max(config.min_steps, config.epochs * math.ceil(n / config.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2 or done == steps:
                continue
            log_probs = F.log_softmax(model(inputs[batch]), dim=1)
            loss = -(targets[batch] * log_probs).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
    return model.eval()


@pytest.mark.parametrize("labels", ["soft", "hard"])
def test_random_strategy_is_the_old_extract(tiny_zoo, labels):
    """Leaderboard numbers depend on it: same queries, same answers, same surrogate, same generator state."""
    budget = 600  # more than one query batch
    results = []
    for run in (extract, _old_extract):
        server, knowledge = _setup(tiny_zoo, budget, victim_only=False)
        recorder = Recorder(server)
        rng = np.random.default_rng([3, 1])
        specs = knowledge.spec_range.sample(budget, np.random.default_rng(5))
        surrogate = run(recorder.target, knowledge, specs, budget, rng, SurrogateConfig(labels=labels, **SMALL))
        results.append((recorder, server, surrogate.state_dict(), rng.integers(2**31)))
    (new, new_server, new_state, new_next), (old, old_server, old_state, old_next) = results
    assert torch.equal(new.queried, old.queried) and new.specs == old.specs
    assert np.array_equal(new_server.log.served_ids(), old_server.log.served_ids())
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    assert new_next == old_next


def test_jacobian_queries_synthetic_inputs_in_the_unit_box(tiny_zoo):
    _, server, knowledge, recorder, _ = _run(tiny_zoo, "jacobian", "soft")
    rows = _pool_rows(knowledge)
    in_pool = [x.numpy().tobytes() in rows for x in recorder.queried]
    rounds = STRATEGIES.get("jacobian").defaults["rounds"]
    assert sum(in_pool) == math.ceil(BUDGET / 2**rounds) and all(in_pool[:sum(in_pool)])
    synthetic = recorder.queried[sum(in_pool):]
    assert len(synthetic) == BUDGET - sum(in_pool)
    assert synthetic.min() >= 0 and synthetic.max() <= 1
    # each synthetic input is a step of size ``step`` (before clipping) from an input queried earlier
    step = STRATEGIES.get("jacobian").defaults["step"]
    queried = recorder.queried
    for position in range(sum(in_pool), BUDGET, 7):
        distance = (queried[:position] - queried[position]).abs().flatten(1).amax(dim=1)
        assert 0 < float(distance.min()) <= step + 1e-6


def test_uncertainty_queries_more_uncertain_inputs_than_random(tiny_zoo):
    """After the seed set, the victim is less sure about uncertainty's picks than about random pool inputs."""
    budget, entropy = 400, {}
    for strategy in ("random", "uncertainty"):
        server, knowledge = _setup(tiny_zoo, budget)
        session = QuerySession(target_for(server), knowledge, _specs(knowledge, budget), budget)
        STRATEGIES.get(strategy)().collect(session, knowledge, SurrogateConfig(min_steps=200), np.random.default_rng(7))
        seed = math.ceil(budget * STRATEGIES.get("uncertainty").defaults["seed_fraction"])
        entropy[strategy] = float(_entropy(session.answers[seed:]).mean())
    assert entropy["uncertainty"] > 1.1 * entropy["random"], entropy


def test_kcenter_greedy_covers_the_space():
    from strategies.kcenter import k_center_greedy

    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 10.0], [0.2, 0.1], [10.0, 10.0]])
    assert k_center_greedy(points, points[:1], 3).tolist() == [5, 2, 3]
    assert sorted(k_center_greedy(points, torch.empty(0, 2), 4).tolist()) == [0, 2, 3, 5]


def test_query_session_refuses_repeats_and_overruns(tiny_zoo):
    server, knowledge = _setup(tiny_zoo, None)
    session = QuerySession(target_for(server), knowledge, _specs(knowledge, 10), 10)
    session.query_pool(torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="only once"):
        session.query_pool(torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="only once"):
        session.query_pool(torch.tensor([6, 6]))
    with pytest.raises(ValueError, match="exceed the 8 left"):
        session.query(knowledge.pool[:9])
    session.query(knowledge.pool[10:18])
    assert session.remaining == 0 and server.used == 10 and len(session.inputs) == len(session.answers) == 10
    assert session.unqueried().tolist() == [i for i in range(len(knowledge.pool)) if i not in (3, 4)]


def test_every_surrogate_attack_takes_a_strategy_and_labels():
    assert SURROGATE_DEFAULTS["strategy"] == "random" and SURROGATE_DEFAULTS["labels"] == "soft"
    for name in ("oracle", "naive", "psml"):
        attack = ATTACKS.get(name)(strategy="kcenter", labels="hard")
        config = SurrogateConfig.from_params(attack.params)
        assert (config.strategy, config.labels) == ("kcenter", "hard")


def test_unknown_strategy_or_labels_is_a_clear_error(tiny_zoo):
    with pytest.raises(UnknownPluginError, match="unknown strategy 'jacobain'; did you mean 'jacobian'"):
        SurrogateConfig.from_params({"strategy": "jacobain"})
    with pytest.raises(ConfigError, match="'labels' must be 'soft' or 'hard'"):
        SurrogateConfig.from_params({"labels": "probs"})
    server, knowledge = _setup(tiny_zoo, 10)
    with pytest.raises(UnknownPluginError, match="available: dfme, jacobian, kcenter, random, uncertainty"):
        extract(target_for(server), knowledge, _specs(knowledge, 10), 10, np.random.default_rng(0),
                SurrogateConfig(strategy="kcentre"))
    assert server.used == 0


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_strategy_runs_in_the_isolated_attack_process(tiny_zoo, strategy):
    """The oracle attack with each strategy: same surrogate in the attack process as in-process."""
    params = {**SMALL, "strategy": strategy}
    labels = []
    for isolated in (True, False):
        server, knowledge = _setup(tiny_zoo, BUDGET)
        rng = np.random.default_rng([0, 1])
        if isolated:
            surrogate = run_attack(server, PluginLocator("oracle", tuple(sorted(params.items()))), knowledge,
                                   BUDGET, rng, timeout_s=120)
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                surrogate = ATTACKS.get("oracle")(**params).run(target_for(server), knowledge, BUDGET, rng)
            finally:
                torch.set_num_threads(threads)
        assert type(surrogate) is Surrogate and server.used == BUDGET
        with torch.no_grad():
            labels.append(surrogate(tiny_zoo.splits["test_x"]).argmax(dim=1))
    assert torch.equal(labels[0], labels[1])
