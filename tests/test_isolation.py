"""The attack process: same numbers as in-process, hostile attacks contained, budget enforced server-side."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from psml_bench import Knowledge
from psml_bench.common import metrics as scoring
from psml_bench.isolation.attack_process import (AttackFailed, PluginLocator, ProtocolError, pack, run_attack,
    sandbox_available, unpack)
from psml_bench.contract.registries import ATTACKS, DEFENSES
from psml_bench.bench.cell import run_cell
from psml_bench.bench.grid import Cell, PluginSpec, load_grid
from psml_bench.serving.frontend import Frontend, target_for

SANDBOXED = pytest.mark.skipif(not sandbox_available(), reason="the sandbox needs bubblewrap and user namespaces")

HOSTILE = '''
import gc
import os
import pickle
import sys
import time

import torch

from psml_bench import Attack, BudgetExhausted, Spec, SurrogateConfig, query_batched, train_surrogate

ZOO_DIR = {zoo_dir!r}
WORKER_PID = {worker_pid!r}
MARKER = {marker!r}


def _spec(knowledge):
    return Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])


class ReadsTheZoo(Attack):
    def run(self, target, knowledge, budget, rng):
        outcomes = []
        for name in ("card.json", "weights", "predictions.safetensors", "splits.safetensors"):
            try:
                path = os.path.join(ZOO_DIR, name)
                (os.listdir if name == "weights" else lambda p: open(p, "rb").read(1))(path)
                outcomes.append(f"{{name}}: read")
            except OSError as exc:
                outcomes.append(f"{{name}}: {{type(exc).__name__}}")
        raise RuntimeError("; ".join(outcomes))


class ReachesTheWorker(Attack):
    def run(self, target, knowledge, budget, rng):
        outcomes = [f"uid {{os.getuid()}} gid {{os.getgid()}} groups {{os.getgroups()}}"]
        for what, action in (("signal", lambda: os.kill(WORKER_PID, 0)),
                             ("mem", lambda: open(f"/proc/{{WORKER_PID}}/mem", "rb").read(1)),
                             ("environ", lambda: open(f"/proc/{{WORKER_PID}}/environ", "rb").read(1))):
            try:
                action()
                outcomes.append(f"{{what}}: allowed")
            except OSError as exc:
                outcomes.append(f"{{what}}: {{type(exc).__name__}}")
        found = [type(o).__name__ for o in gc.get_objects()
                 if type(o).__name__ in ("Frontend", "Zoo", "QueryLog", "ZooModel")]
        outcomes.append(f"internals: {{sorted(set(found))}}")
        loaded = sorted(m for m in sys.modules if m.startswith('psml_bench.zoo.model_zoo'))
        outcomes.append(f"zoo modules loaded: {{loaded}}")
        raise RuntimeError("; ".join(outcomes))


class CatchesBudget(Attack):
    def run(self, target, knowledge, budget, rng):
        assert target.remaining_budget == budget
        try:
            target.query(knowledge.pool[:budget + 1], _spec(knowledge))
        except BudgetExhausted as exc:
            caught = (type(exc) is BudgetExhausted, str(exc))
        assert target.remaining_budget == budget  # nothing of the refused call was served
        target.query(knowledge.pool[:3], _spec(knowledge))
        assert target.remaining_budget == budget - 3  # the server's count, sent with the answers
        inputs = knowledge.pool[3:budget]
        answers = query_batched(target, inputs, _spec(knowledge))
        try:
            target.query(knowledge.pool[:1], _spec(knowledge))
        except BudgetExhausted:
            pass
        assert caught[0] and "exceeds the remaining budget" in caught[1], caught
        assert target.remaining_budget == 0
        return train_surrogate(inputs, answers, knowledge, SurrogateConfig(min_steps=5, epochs=1), rng)


class Hangs(Attack):
    def run(self, target, knowledge, budget, rng):
        while True:
            time.sleep(1)


class Exits(Attack):
    def run(self, target, knowledge, budget, rng):
        os._exit(3)


class Floods(Attack):
    def run(self, target, knowledge, budget, rng):
        target.query(torch.zeros(12000, 1, 28, 28, dtype=torch.float64), _spec(knowledge))


class SendsAPickle(Attack):
    """Finds its end of the channel and sends a pickle that would run code if unpickled."""

    def run(self, target, knowledge, budget, rng):
        from multiprocessing.connection import Connection

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {{MARKER}}",))

        for conn in [o for o in gc.get_objects() if isinstance(o, Connection)]:
            conn.send_bytes(pickle.dumps(Payload()))
        time.sleep(5)


class ReturnsAModule(Attack):
    def run(self, target, knowledge, budget, rng):
        return torch.nn.Linear(784, 10)
'''


@pytest.fixture(scope="module")
def hostile(tiny_zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "pwned"
    (folder / "hostile_isolation.py").write_text(HOSTILE.format(zoo_dir=str(tiny_zoo.directory),
                                                                worker_pid=os.getpid(), marker=str(marker)))
    return folder, marker


def _setup(zoo, budget: int, seed: int = 0, victim: str = "rank:1"):
    defense = DEFENSES.get("none")()
    server = Frontend(zoo, defense=defense, rng=np.random.default_rng([seed, 2]), budget=budget)
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=zoo.splits["attacker_x"], role=victim)
    return server, knowledge


def _run_hostile(zoo, hostile, monkeypatch, cls: str, budget: int = 30, timeout_s: float = 120):
    folder, _ = hostile
    monkeypatch.syspath_prepend(str(folder))
    server, knowledge = _setup(zoo, budget)
    locator = PluginLocator(f"hostile_isolation:{cls}")
    ATTACKS.get(locator.name)
    return server, run_attack(server, locator, knowledge, budget, np.random.default_rng(0), timeout_s=timeout_s)


def test_messages_are_parsed_without_pickle():
    header, tensors = unpack(pack({"op": "query", "spec": [0.5, 1.0]}, {"inputs": torch.ones(2, 3)}))
    assert header["spec"] == [0.5, 1.0] and torch.equal(tensors["inputs"], torch.ones(2, 3))
    with pytest.raises(ProtocolError, match="malformed message"):
        unpack(pickle.dumps({"op": "done"}))
    with pytest.raises(ProtocolError, match="malformed message"):
        unpack((5).to_bytes(8, "little") + b"[1,2]")


def test_isolated_attack_gives_the_in_process_numbers(tiny_zoo):
    """The attack process sees the same Knowledge, budget and generator state: the same surrogate."""
    params = {"min_steps": 20, "epochs": 1}
    budget = 80
    results = []
    for isolated in (False, True):
        server, knowledge = _setup(tiny_zoo, budget, victim="rank:2")
        rng = np.random.default_rng([0, 1])
        attack = ATTACKS.get("psml")(**params)
        if isolated:
            surrogate = run_attack(server, PluginLocator("psml", tuple(sorted(params.items()))), knowledge, budget, rng)
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                surrogate = attack.run(target_for(server), knowledge, budget, rng)
            finally:
                torch.set_num_threads(threads)
        labels = scoring.predict_labels(surrogate, tiny_zoo.splits["test_x"], tiny_zoo.num_classes)
        results.append((labels, server.used, server.log.count("fingerprint"), server.log.served_ids()))
    (a, used_a, fp_a, served_a), (b, used_b, fp_b, served_b) = results
    assert np.array_equal(a, b)
    assert (used_a, fp_a) == (used_b, fp_b) and np.array_equal(served_a, served_b)



def test_isolated_attack_is_answered_on_one_thread_whatever_the_callers_count(tiny_zoo, monkeypatch):
    """The worker computes the answers on one thread, as a cell does: a forward pass's reductions split
    as many ways as there are threads, and with AVX-512 kernels that changes the answers' last bits."""
    server, knowledge = _setup(tiny_zoo, 30)
    seen = []
    forward = server.forward

    def counting_forward(inputs, served):
        seen.append(torch.get_num_threads())
        return forward(inputs, served)

    monkeypatch.setattr(server, "forward", counting_forward)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run_attack(server, PluginLocator("naive", (("epochs", 1), ("min_steps", 2))), knowledge, 30,
                   np.random.default_rng(0))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}
    assert after == 3

@SANDBOXED
def test_attack_cannot_read_the_zoo_cache(tiny_zoo, hostile, monkeypatch):
    with pytest.raises(AttackFailed) as error:
        _run_hostile(tiny_zoo, hostile, monkeypatch, "ReadsTheZoo")
    message = str(error.value)
    assert message.startswith("the attack raised RuntimeError: ") and ": read" not in message, message
    assert message.count("FileNotFoundError") == 4, message  # the cache is not in the sandbox at all


@SANDBOXED
def test_attack_cannot_reach_the_worker(tiny_zoo, hostile, monkeypatch):
    with pytest.raises(AttackFailed) as error:
        _run_hostile(tiny_zoo, hostile, monkeypatch, "ReachesTheWorker")
    message = str(error.value)
    assert "uid 65534 gid 65534" in message
    assert "signal: ProcessLookupError" in message and "mem: FileNotFoundError" in message  # another PID namespace
    assert "environ: FileNotFoundError" in message
    assert "internals: []" in message


def test_budget_is_enforced_by_the_server_and_errors_keep_their_class(tiny_zoo, hostile, monkeypatch):
    server, surrogate = _run_hostile(tiny_zoo, hostile, monkeypatch, "CatchesBudget", budget=30)
    assert server.used == 30 and isinstance(surrogate, torch.nn.Module)


def test_hung_crashed_flooding_and_pickling_attacks_fail_with_a_reason(tiny_zoo, hostile, monkeypatch):
    with pytest.raises(AttackFailed, match=r"^timed out after 3s$"):
        _run_hostile(tiny_zoo, hostile, monkeypatch, "Hangs", timeout_s=3)
    with pytest.raises(AttackFailed, match=r"^the attack process ended without a result"):
        _run_hostile(tiny_zoo, hostile, monkeypatch, "Exits")
    with pytest.raises(ProtocolError, match="message over"):
        _run_hostile(tiny_zoo, hostile, monkeypatch, "Floods", budget=10)
    with pytest.raises(ProtocolError, match="malformed message"):
        _run_hostile(tiny_zoo, hostile, monkeypatch, "SendsAPickle")
    assert not hostile[1].exists(), "a pickle from the attack process was unpickled in the worker"
    with pytest.raises(AttackFailed, match="must return a psml_bench.Surrogate"):
        _run_hostile(tiny_zoo, hostile, monkeypatch, "ReturnsAModule")


def test_cells_of_hostile_attacks_fail_alone(tiny_zoo, hostile, monkeypatch):
    folder, _ = hostile
    monkeypatch.syspath_prepend(str(folder))
    # the queue-blind policy, under which an undefended service meets every benign spec (spec_goodput exactly 1);
    # the SLO-aware one may send a request off its spec when its model is busy
    grid = dataclasses.replace(load_grid("tiny"), policy="infaas")
    defense = PluginSpec("none")
    for name, expected in (("hostile_isolation:Exits", "the attack process ended without a result"),
                           ("hostile_isolation:ReturnsAModule",
                            "the attack raised TypeError: attack returned a Linear")):
        row = run_cell(tiny_zoo, grid, Cell("rank:1", PluginSpec(name), defense, 20, 0))
        assert row.status == "failed" and row.error.startswith(expected), row.error
        assert row.spec_goodput == 1.0 and row.benign_requests >= grid.benign_queries  # costs still measured
