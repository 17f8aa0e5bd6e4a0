"""The per-worker caches of a cell's path give the numbers computing afresh gives, bit for bit."""

from __future__ import annotations

import torch

from psml_bench import _cell
from psml_bench._cell import score_surrogate, surrogate_metrics
from psml_bench._sanity import surrogate_flags
from psml_bench._surrogate import Surrogate


def _surrogate(zoo, seed: int) -> Surrogate:
    pool = zoo.splits["attacker_x"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Surrogate("test_resnet", zoo.input_shape[0], zoo.num_classes, pool.mean(dim=(0, 2, 3)),
                         pool.std(dim=(0, 2, 3))).eval()


def test_identical_weights_are_scored_once_with_the_fresh_numbers(tiny_zoo, monkeypatch):
    victim = tiny_zoo.role("rank:1")
    first, twin, other = _surrogate(tiny_zoo, 0), _surrogate(tiny_zoo, 0), _surrogate(tiny_zoo, 1)
    fresh = surrogate_metrics(tiny_zoo, victim, first)
    fresh_flags = surrogate_flags(tiny_zoo, victim, first, fresh["fidelity"])
    assert score_surrogate(tiny_zoo, victim, first) == (fresh, fresh_flags)
    calls = []
    monkeypatch.setattr(_cell, "surrogate_metrics", lambda *a: calls.append(a) or fresh)
    assert score_surrogate(tiny_zoo, victim, twin) == (fresh, fresh_flags)  # same weights: no prediction
    assert calls == []
    score_surrogate(tiny_zoo, victim, other)
    assert len(calls) == 1  # other weights are scored


def _knowledge(zoo):
    from psml_bench._serving import Knowledge, SpecRange

    return Knowledge(zoo.input_shape, zoo.num_classes, SpecRange(zoo.accuracy_range, zoo.latency_range_ms),
                     zoo.splits["attacker_x"], "rank:1")


def test_the_worker_trains_what_the_attack_process_would_and_once_per_request(tiny_zoo, tmp_path):
    """A fresh surrogate trained through the channel has the weights, recipe and generator state that
    training in the attack process gives; an identical request is served from memory, then from disk."""
    import numpy as np

    from psml_bench import _training
    from psml_bench._isolation import pack, unpack
    from psml_bench._surrogate import SurrogateConfig, train_elsewhere, train_surrogate, weights_digest

    knowledge = _knowledge(tiny_zoo)
    inputs = tiny_zoo.splits["attacker_x"][:40].contiguous()
    answers = torch.softmax(torch.randn(40, tiny_zoo.num_classes, generator=torch.Generator().manual_seed(0)), 1)
    config = SurrogateConfig(min_steps=6, epochs=1, labels="hard")
    threads = torch.get_num_threads()
    torch.set_num_threads(_training.THREADS)  # the attack process's
    try:
        torch.manual_seed(5)
        local = train_surrogate(inputs, answers, knowledge, config, np.random.default_rng(3))
        local_after = torch.get_rng_state()
    finally:
        torch.set_num_threads(threads)

    worker = _training.SurrogateTrainer(knowledge, tmp_path)
    sent = []

    def call(header, tensors):  # the channel: the worker sees only what unpack gives it
        sent.append(header)
        return worker.answer(*unpack(pack(header, tensors)))[1]

    train_elsewhere(_training.remote_trainer(call, knowledge, 2**30))
    _training._MEMORY.clear()
    try:
        before = dict(_training.STATS)
        results = []
        for _ in range(2):
            torch.manual_seed(5)
            results.append((train_surrogate(inputs, answers, knowledge, config, np.random.default_rng(3)),
                            torch.get_rng_state()))
        _training._MEMORY.clear()
        torch.manual_seed(5)
        results.append((train_surrogate(inputs, answers, knowledge, config, np.random.default_rng(3)),
                        torch.get_rng_state()))
        # hard labels: other answers with the same argmax are the same training
        sharper = torch.nn.functional.one_hot(answers.argmax(1), tiny_zoo.num_classes).float()
        torch.manual_seed(5)
        results.append((train_surrogate(inputs, sharper, knowledge, config, np.random.default_rng(3)),
                        torch.get_rng_state()))
        # a request the worker does not take (a surrogate to train further) is trained here
        further = train_surrogate(inputs, answers, knowledge, config, np.random.default_rng(3),
                                  init=_surrogate(tiny_zoo, 0))
    finally:
        train_elsewhere(None)
    assert len(sent) == 4 and further.recipe == config.recipe()
    for surrogate, after in results:
        assert weights_digest(surrogate) == weights_digest(local) and surrogate.recipe == local.recipe
        assert torch.equal(after, local_after)
    stats = {k: _training.STATS[k] - before[k] for k in before}
    assert stats == {"requests": 4, "trained": 1, "memory_hits": 2, "disk_hits": 1}
