"""proof-of-work (calibrated proof of work, Dziedzic et al. 2022) and the client_work_ms hook, on the tiny zoo."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from psml_bench import ConfigError, Defense, Requests, Spec
from psml_bench.bench.cell import run_cell
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec, load_grid
from psml_bench.contract.errors import DefenseError
from psml_bench.contract.registries import make_defense
from psml_bench.serving.config import ServiceConfig
from psml_bench.serving.live import ApiKey, LiveService
from psml_bench.serving.frontend import Frontend, released_ms
from psml_bench.serving.service import SimulatedService
from defenses.proof_of_work import ORDERS, epsilon, gnmax_log_q, gnmax_rdp

FAST = ServiceConfig(load=0.5, attacker_rate=50.0)  # an attacker fast enough that its work, not its pace, sets its time


def _requests(n: int, client: int) -> Requests:
    return Requests(np.full(n, client, dtype=np.int64), torch.zeros(n, 1, 28, 28), np.zeros(n), np.zeros(n),
                    np.zeros(n))


def _answers(n: int, top: float, classes: int = 10) -> torch.Tensor:
    answers = torch.full((n, classes), (1 - top) / (classes - 1))
    answers[:, 0] = top
    return answers


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan")])
def test_a_work_factor_of_zero_or_less_is_one_config_error(value):
    with pytest.raises(ConfigError, match=rf"^defense 'proof-of-work' parameter 'work_factor' must be > 0, "
                                          rf"got {value!r}$"):
        make_defense("proof-of-work", {"work_factor": value})


def test_the_gnmax_cost_is_papernot_et_al_s():
    """A uniform or tied vote costs GNMax's data-independent order / sigma^2; a confident one far less at low
    orders, the less the more confident."""
    votes = 250 * _answers(4, 1.0).double().numpy()
    votes[1] = 25.0
    votes[2] = 250 * _answers(1, 0.99).double().numpy()[0]
    votes[3] = 250 * np.array([0.5, 0.5] + [0.0] * 8)
    log_q = gnmax_log_q(votes, 40.0)
    assert log_q[1] == pytest.approx(np.log(0.9))  # the union bound passes 1 - 1/classes: capped there
    costs = gnmax_rdp(log_q, 40.0)
    assert np.allclose(costs[1], ORDERS / 1600) and np.allclose(costs[3], ORDERS / 1600)
    assert (costs[0] <= costs[2]).all() and (costs[2] <= costs[1]).all() and costs[2][ORDERS < 20].max() < 1e-4
    assert (gnmax_rdp(np.array([-np.inf]), 40.0) == 0).all()  # an outcome the noise cannot change costs nothing
    # RDP composes by addition; epsilon at delta takes the best order
    assert epsilon(100 * costs[1], 1e-5)[0] == pytest.approx(min(100 * ORDERS / 1600 + np.log(1e5) / (ORDERS - 1)))


def test_a_client_whose_queries_leak_more_pays_more():
    defense = make_defense("proof-of-work")
    for _ in range(5):  # interleaved calls: each client's account is its own
        confident = defense.client_work_ms(_requests(100, 1), _answers(100, 0.99), None)
        ambiguous = defense.client_work_ms(_requests(100, 2), _answers(100, 0.3), None)
        assert (ambiguous >= confident).all() and (ambiguous[1:] > confident[1:]).all()  # the first: delta's term
    assert defense.epsilon(2) > 3 * defense.epsilon(1) > 0 and defense.epsilon(3) == 0.0
    assert defense.work_ms[2] > 3 * defense.work_ms[1]
    # more queries, more leakage: a client's 500th confident answer costs more than its first
    assert confident[-1] > defense.client_work_ms(_requests(1, 4), _answers(1, 0.99), None)[0]
    # the work is work_factor ms per unit of epsilon
    doubled = make_defense("proof-of-work", {"work_factor": 2.0})
    assert np.allclose(doubled.client_work_ms(_requests(10, 1), _answers(10, 0.9), None),
                       2 * make_defense("proof-of-work").client_work_ms(_requests(10, 1), _answers(10, 0.9), None))


def test_a_client_works_on_one_answer_at_a_time():
    clients = np.array([1, 1, 2, 1, 2])
    ready = np.array([0.0, 1.0, 0.0, 50.0, np.nan])
    work = np.array([10.0, 10.0, 3.0, 1.0, 5.0])
    # client 1: 0 -> 10, its second answer waits for it: 20; its third is ready after: 51; a NaN row costs nothing
    assert released_ms(clients, ready, work).tolist()[:4] == [10.0, 20.0, 3.0, 51.0]
    assert np.isnan(released_ms(clients, ready, work)[4])
    assert released_ms(clients, ready, work, free_ms=30.0)[:2].tolist() == [40.0, 50.0]
    assert released_ms(clients, ready, np.zeros(5)) is not ready and np.array_equal(
        released_ms(clients, ready, np.zeros(5)), ready, equal_nan=True)


def _run(zoo, defense: Defense, calls: int = 6):
    service = SimulatedService(zoo, defense=defense, config=FAST, seed=1, budget=600, benign_queries=200)
    pool = zoo.splits["attacker_x"]
    spec = Spec(zoo.accuracy_range[0], zoo.latency_range_ms[1])
    answers = [service.query(pool[100 * i:100 * i + 80], spec) for i in range(calls)]
    service.finish()
    return service, answers


def test_the_work_delays_the_attacker_and_the_benign_clients_and_nothing_else(tiny_zoo):
    plain, plain_answers = _run(tiny_zoo, make_defense("none"))
    priced, priced_answers = _run(tiny_zoo, make_defense("proof-of-work", {"work_factor": 5.0}))
    defense = priced.defense
    assert all(torch.equal(a, b) for a, b in zip(plain_answers, priced_answers))  # answers are not touched
    assert plain.attacker_work_ms == 0.0
    assert priced.attacker_work_ms == pytest.approx(defense.work_ms[priced.attacker_id])
    # a call ends when the attacker has worked on all its answers, one at a time: its work is in its wall time (the
    # work on an answer overlaps the rows the attacker is still sending at its pace)
    assert priced.clock >= priced.attacker_work_ms > 1000 and priced.clock > plain.clock + 1000
    # benign traffic alone (an attacker who waits on its work sends later, so the queues would differ)
    (plain, _), (priced, _) = (_run(tiny_zoo, make_defense(name, params), calls=0) for name, params in (
        ("none", {}), ("proof-of-work", {"work_factor": 5.0})))
    defense = priced.defense
    before, after = plain.benign_outcome(), priced.benign_outcome()
    assert np.array_equal(before["served"], after["served"]) and np.array_equal(before["arrival"], after["arrival"])
    extra = after["latency"] - before["latency"]  # the queues saw the same requests: the difference is the work
    assert (extra > 0).all()
    for client in priced.benign_ids.tolist():
        mine = after["client"] == client
        assert extra[mine].sum() >= defense.work_ms[client] - 1e-6


def test_a_proof_of_work_cell_reports_the_attacker_s_time_and_the_benign_cost(tiny_zoo):
    attack = PluginSpec("psml", (("epochs", 1), ("min_steps", 10)))
    rows = {}
    for defense in (PluginSpec("none"), PluginSpec("proof-of-work", (("work_factor", 5.0),))):
        grid = GridConfig("pow", "fmnist-tiny", "infaas-slo", ("rank:2",), (attack,), (defense,), (300,), (0,), 200,
                          "test")
        row = run_cell(tiny_zoo, grid, Cell("rank:2", attack, defense, 300, 0, FAST))
        assert row.status == "ok", row.error
        rows[defense.name] = row
    plain, priced = rows["none"], rows["proof-of-work"]
    assert plain.attacker_work_s == 0.0 and priced.attacker_work_s > 0.5
    assert priced.attacker_time_s >= priced.attacker_work_s
    assert priced.attacker_time_s > plain.attacker_time_s
    assert priced.latency_p50_ms > plain.latency_p50_ms and priced.latency_overhead > 0.5
    assert priced.goodput < plain.goodput and priced.fidelity == plain.fidelity
    assert plain.latency_overhead == pytest.approx(0.0, abs=1e-12)


class BadWork(Defense):
    def client_work_ms(self, requests, answers, rng):
        return -np.ones(len(requests))


def test_a_malformed_price_fails_with_one_line(tiny_zoo):
    server = Frontend(tiny_zoo, defense=BadWork(), rng=np.random.default_rng(0))
    with pytest.raises(DefenseError, match=r"^defense '[^']*' client_work_ms\(\) must return None or 3 finite ms "
                                           r">= 0, one per answered request, got [^\n]*$"):
        server.query(tiny_zoo.splits["attacker_x"][:3], Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1]))


def test_the_live_server_holds_each_answer_for_its_work(tiny_zoo):
    async def latency(defense) -> tuple[np.ndarray, float]:
        service = LiveService(tiny_zoo, defense=defense, keys={"k": ApiKey(None, True)}, policy="infaas")
        await service.start()
        try:
            spec = Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1])
            started = time.perf_counter()
            answer = await service.query("k", tiny_zoo.splits["attacker_x"][:20], spec)
            return answer.latency_ms, (time.perf_counter() - started) * 1000
        finally:
            await service.stop()

    torch.set_num_threads(1)
    defense = make_defense("proof-of-work", {"work_factor": 20.0})
    priced, waited = asyncio.run(latency(defense))
    [work] = defense.work_ms.values()
    assert waited >= work and priced.max() >= work and (np.diff(np.sort(priced)) > 0).all()


def test_the_deployable_defenses_grid_defines_proof_of_work_at_two_strengths():
    grid = load_grid("deployable-defenses")
    labels = {cell.defense_plugin.label for cell in grid.cells()}
    assert {"proof-of-work(work_factor=1.0)", "proof-of-work(work_factor=10.0)"} <= labels
