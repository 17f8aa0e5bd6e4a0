"""The per-worker caches of a cell's path give the numbers computing afresh gives, bit for bit."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from psml_bench.bench import cell as _cell
from psml_bench.isolation import trainer as _training
from psml_bench.bench.cell import run_cell, score_surrogate, surrogate_metrics
from psml_bench.bench.context import RunContext, default_context
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec
from psml_bench.serving.service import PROCESS_POOL_ANSWERS, PoolAnswersCache
from psml_bench.isolation.attack_process import pack, unpack
from psml_bench.bench.sanity import surrogate_flags
from psml_bench.extraction.surrogate import Surrogate, train_surrogate, training_elsewhere, weights_digest
from psml_bench.contract.surrogate_config import SurrogateConfig


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
    run = RunContext()  # a run's own context starts empty and is the only one it fills
    before = len(default_context().scores)
    assert score_surrogate(tiny_zoo, victim, twin, context=run) == (fresh, fresh_flags)
    assert len(calls) == 2 and len(run.scores) == 1 and len(default_context().scores) == before


def test_a_cell_opens_its_pool_answers_through_its_run_context_alone(tiny_zoo, monkeypatch):
    """The run's context owns the pool answers its cells' services read: the process's owner is never asked, and
    another context gives the same row."""
    naive = PluginSpec("naive", (("epochs", 1), ("min_steps", 20)))
    grid = GridConfig("owner", "fmnist-tiny", "infaas", ("rank:1",), (naive,), (PluginSpec("none"),), (60,), (0,),
                      50, "test")
    cell = Cell("rank:1", naive, PluginSpec("none"), 60, 0)
    reference = run_cell(tiny_zoo, grid, cell, context=RunContext())
    asked = []

    class Recording(PoolAnswersCache):
        def get(self, zoo, device="cpu"):
            asked.append((zoo.name, torch.device(device).type))
            return super().get(zoo, device)

    run = RunContext()
    run.pool_answers = Recording()
    monkeypatch.setattr(PROCESS_POOL_ANSWERS, "get", lambda *a, **k: pytest.fail("the process's owner was asked"))
    row = run_cell(tiny_zoo, grid, cell, context=run)
    assert asked == [(tiny_zoo.name, "cpu")] and row.status == "ok", row.error

    def numbers(r):
        return json.dumps(replace(r, wall_s=None).as_dict(), sort_keys=True, default=str)

    assert numbers(row) == numbers(reference)


def test_a_run_context_keeps_its_cells_trainings_where_it_is_told(tiny_zoo, tmp_path):
    """``RunContext(training_cache=DIR)``: the cells' surrogate trainings go to DIR's ``surrogates/``, not the
    zoo's, and a fresh directory (with the memory cleared) trains again; the numbers stay the same."""
    naive = PluginSpec("naive", (("epochs", 1), ("min_steps", 20)))
    grid = GridConfig("owner", "fmnist-tiny", "infaas", ("rank:1",), (naive,), (PluginSpec("none"),), (60,), (0,),
                      50, "test")
    cell = Cell("rank:1", naive, PluginSpec("none"), 60, 0)
    rows, trained = [], []
    for name in ("first", "second"):
        _training.clear_memory()
        before = _training.STATS["trained"]
        rows.append(run_cell(tiny_zoo, grid, cell, context=RunContext(training_cache=tmp_path / name)))
        trained.append(_training.STATS["trained"] - before)
        assert rows[-1].status == "ok", rows[-1].error
        assert len(list((tmp_path / name / _training.CACHE_DIR).glob("*.safetensors"))) == 1
    assert trained == [1, 1] and rows[0].fidelity == rows[1].fidelity


def _knowledge(zoo):
    from psml_bench.contract.target import Knowledge
    from psml_bench.contract.spec import SpecRange

    return Knowledge(zoo.input_shape, zoo.num_classes, SpecRange(zoo.accuracy_range, zoo.latency_range_ms),
                     zoo.splits["attacker_x"], "rank:1")


def test_the_worker_trains_what_the_attack_process_would_and_once_per_request(tiny_zoo, tmp_path):
    """A fresh surrogate trained through the channel has the weights, recipe and generator state that
    training in the attack process (one thread) gives; an identical request is served from memory,
    then from disk; hard labels with other answers of the same argmax are the same training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(_training.THREADS)  # the attack process's
    try:
        _train_both_ways(tiny_zoo, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _train_both_ways(zoo, cache_dir):
    knowledge = _knowledge(zoo)
    inputs = zoo.splits["attacker_x"][:40].contiguous()
    answers = torch.softmax(torch.randn(40, zoo.num_classes, generator=torch.Generator().manual_seed(0)), 1)
    config = SurrogateConfig(min_steps=6, epochs=1, labels="hard")

    def train(answers=answers, init=None):
        torch.manual_seed(5)
        return train_surrogate(inputs, answers, knowledge, config, np.random.default_rng(3), init=init), \
            torch.get_rng_state()

    local, local_after = train()
    worker = _training.SurrogateTrainer(knowledge, cache_dir)
    sent = []

    def call(header, tensors):  # the channel: the worker sees only what unpack gives it
        sent.append(header)
        return worker.answer(*unpack(pack(header, tensors)))[1]

    _training.clear_memory()
    before = dict(_training.STATS)
    with training_elsewhere(_training.remote_trainer(call, knowledge, 2**30)):
        results = [train(), train()]
        _training.clear_memory()
        results.append(train())
        results.append(train(torch.nn.functional.one_hot(answers.argmax(1), zoo.num_classes).float()))
        further, _ = train(init=_surrogate(zoo, 0))  # not taken by the worker: trained here
    assert not sent[4:] and train()[0].recipe == local.recipe and len(sent) == 4  # after the block: trained here
    assert len(sent) == 4 and further.recipe == config.recipe()
    for surrogate, after in results:
        assert weights_digest(surrogate) == weights_digest(local) and surrogate.recipe == local.recipe
        assert torch.equal(after, local_after)
    stats = {k: _training.STATS[k] - before[k] for k in before}
    assert stats == {"requests": 4, "trained": 1, "memory_hits": 2, "disk_hits": 1}


def test_an_attack_that_changed_torch_settings_trains_itself(tiny_zoo):
    """Under settings the worker would not train with (here: gradients off), no request is sent."""
    knowledge = _knowledge(tiny_zoo)
    trainer = _training.remote_trainer(lambda header, tensors: pytest.fail("sent a request"), knowledge, 2**30)
    inputs = tiny_zoo.splits["attacker_x"][:4].contiguous()
    answers = torch.full((4, tiny_zoo.num_classes), 1.0 / tiny_zoo.num_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(_training.THREADS)
    try:
        with torch.no_grad():
            assert trainer(inputs, answers, SurrogateConfig(), 0, None) is None
    finally:
        torch.set_num_threads(threads)
