"""Service v2 on the tiny zoo: benign clients on a simulated clock, defenses that see and refuse requests."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import tiny_grid
from psml_bench import ConfigError, Defense, Spec
from psml_bench.bench.cell import run_cell
from psml_bench.contract.errors import DefenseError
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec, load_grid
from psml_bench.contract.registries import DEFENSES, make_defense
from psml_bench.serving.service import (PROCESS_POOL_ANSWERS, PoolAnswers, PoolAnswersCache, ServiceConfig,
                                        SimulatedService, service_times)
from psml_bench.serving.frontend import Frontend, target_for

SMALL = (("epochs", 1), ("min_steps", 10))


def _grid(benign_queries: int = 200) -> GridConfig:
    naive = PluginSpec("naive", SMALL)
    return GridConfig("svc", "fmnist-tiny", "infaas", ("rank:2",), (naive,), (PluginSpec("none"),), (60,), (0,),
                      benign_queries, "test")


def _calls(zoo, count: int = 6):
    """A fixed sequence of attacker calls: pool inputs, a synthetic input, specs across the range."""
    rng = np.random.default_rng(9)
    (a_lo, a_hi), (l_lo, l_hi) = zoo.accuracy_range, zoo.latency_range_ms
    calls = []
    for i in range(count):
        n = int(rng.integers(1, 40))
        inputs = zoo.splits["attacker_x"][torch.from_numpy(rng.choice(len(zoo.splits["attacker_x"]), n))]
        if i == 2:
            inputs = torch.rand(n, *zoo.input_shape, generator=torch.Generator().manual_seed(i))
        specs = [Spec(float(a), float(b)) for a, b in zip(rng.uniform(a_lo, a_hi, n), rng.uniform(l_lo, l_hi, n))]
        calls.append((inputs, specs))
    return calls


def test_pool_answers_equal_a_live_forward_pass(tiny_zoo):
    """Bit-identical to a live pass over the same batches on one thread; float rounding only otherwise."""
    answers = PoolAnswers.of(tiny_zoo)
    pool = tiny_zoo.splits["attacker_x"]
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for index, entry in enumerate(tiny_zoo.menu):
            server = Frontend(tiny_zoo, defense=make_defense("none"), rng=rng)
            assert torch.equal(answers.probabilities[entry.id][:1024],
                               server.forward(pool[:1024], np.full(1024, index)))
            for size in (1, 7, 300):
                rows = torch.from_numpy(rng.choice(len(pool), size, replace=False))
                live = server.forward(pool[rows], np.full(size, index))
                cached = answers.probabilities[entry.id][rows]
                assert (cached - live).abs().max() < 1e-5 and torch.equal(cached.argmax(1), live.argmax(1))
    finally:
        torch.set_num_threads(threads)


def test_pool_answers_are_opened_once_per_owner_with_the_same_numbers(tiny_zoo):
    """A service takes its pool answers from the owner it is given (default: the process's); owners share none."""
    owner, other = PoolAnswersCache(), PoolAnswersCache()
    services = [SimulatedService(tiny_zoo, defense=make_defense("none"), config=ServiceConfig(), seed=seed, budget=10,
                                 benign_queries=10, pool_answers=cache)
                for seed, cache in ((0, owner), (1, owner), (2, other))]
    assert services[0].answers is services[1].answers is owner.get(tiny_zoo)
    assert services[2].answers is other.get(tiny_zoo) and services[2].answers is not services[0].answers
    assert PoolAnswers.of(tiny_zoo) is PROCESS_POOL_ANSWERS.get(tiny_zoo) is not services[0].answers
    for model_id, probabilities in services[0].answers.probabilities.items():
        assert torch.equal(probabilities, services[2].answers.probabilities[model_id])
        assert torch.equal(probabilities, PoolAnswers.of(tiny_zoo).probabilities[model_id])


@pytest.mark.parametrize("name", sorted(set(DEFENSES.names()) - {"none"}) + ["none"])
def test_every_defense_answers_the_attacker_as_without_benign_traffic(tiny_zoo, name):
    """Ported with identical numbers: under the queue-blind policy, the attacker's answers under load 0.8 with
    8 clients equal the single-client server's, call by call (same defense randomness stream). The SLO-aware
    policy routes on the queues, so there the answers depend on the load by design."""
    cls = DEFENSES.get(name)
    alone = Frontend(tiny_zoo, defense=cls(), rng=np.random.default_rng([3, 2]), budget=500)
    service = SimulatedService(tiny_zoo, defense=cls(), config=ServiceConfig(load=0.8), seed=3, budget=500,
                               benign_queries=300, policy="infaas")
    for inputs, specs in _calls(tiny_zoo):
        expected = alone.query(inputs, specs)
        got = service.query(inputs, specs)
        assert torch.equal(expected.nan_to_num(-1), got.nan_to_num(-1))
    np.testing.assert_array_equal(alone.log.served_ids(), service.log.served_ids())
    service.finish()
    assert len(service.benign_outcome()["refused"]) >= 300


def test_same_cell_twice_gives_identical_rows(tiny_zoo):
    grid = _grid()
    cell = Cell("rank:2", grid.attacks[0], PluginSpec("spec-noise"), 60, 0, ServiceConfig(load=0.9))
    first, second = run_cell(tiny_zoo, grid, cell), run_cell(tiny_zoo, grid, cell)
    assert first.status == "ok", first.error
    stored = [json.dumps(replace(row, wall_s=None).as_dict(), sort_keys=True) for row in (first, second)]
    assert stored[0] == stored[1]  # as the cell file stores it, but for its wall clock
    assert first.benign_requests >= 200 and 0 < first.goodput <= 1
    assert first.latency_p99_ms >= first.latency_p50_ms > 0


def test_load_costs_latency_and_goodput(tiny_zoo):
    grid = _grid(400)
    rows = [run_cell(tiny_zoo, grid, Cell("rank:2", grid.attacks[0], PluginSpec("none"), 60, 0,
                                          ServiceConfig(load=load))) for load in (0.2, 0.95)]
    assert rows[1].latency_p99_ms > rows[0].latency_p99_ms
    assert rows[1].goodput < rows[0].goodput
    assert rows[0].spec_goodput == pytest.approx(1.0)  # feasible specs, undefended: routing meets them all
    assert rows[0].latency_overhead == pytest.approx(0.0) and rows[0].benign_accuracy_drop == 0.0


def test_latency_is_visible_only_when_the_cell_says_so(tiny_zoo):
    for visible in (False, True):
        service = SimulatedService(tiny_zoo, defense=make_defense("none"),
                                   config=ServiceConfig(latency_visible=visible), seed=0, budget=50, benign_queries=50)
        target = target_for(service)
        spec = Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1])
        target.query(tiny_zoo.splits["attacker_x"][:4], spec)
        if visible:
            intercept, slope = service_times(tiny_zoo)
            assert target.last_latency_ms.shape == (4,)
            assert (target.last_latency_ms >= float((intercept + slope).min()) - 1e-9).all()
        else:
            assert target.last_latency_ms is None
        assert target.last_refused.tolist() == [False] * 4


class BlockEveryone(Defense):
    """Blocks each client at its first request."""

    def admit(self, requests, rng):
        for client in np.unique(requests.clients):
            self.block(int(client))
        return np.zeros(len(requests), dtype=bool)


class BadMask(Defense):
    def admit(self, requests, rng):
        return np.ones(len(requests) + 1)


@pytest.fixture
def hostile_defenses():
    DEFENSES.add("block-everyone", BlockEveryone, source="test")
    DEFENSES.add("bad-mask", BadMask, source="test")
    yield
    DEFENSES._entries.pop("block-everyone")
    DEFENSES._entries.pop("bad-mask")


def test_a_defense_that_blocks_everyone_refuses_all_and_detects_the_attacker(tiny_zoo, hostile_defenses):
    grid = _grid()
    row = run_cell(tiny_zoo, grid, Cell("rank:2", grid.attacks[0], PluginSpec("block-everyone"), 60, 0))
    assert row.status == "ok", row.error
    assert row.refused_benign == 1.0 and row.goodput == 0.0 and row.false_positive_clients == 1.0
    assert row.detected == 1.0 and row.queries_to_detection >= 1 and row.queries == 60
    assert row.victim_hit_rate == 0.0
    assert math.isnan(row.latency_p50_ms)


def test_a_malformed_refusal_mask_fails_the_cell_with_one_clear_message(tiny_zoo, hostile_defenses):
    grid = _grid()
    row = run_cell(tiny_zoo, grid, Cell("rank:2", grid.attacks[0], PluginSpec("bad-mask"), 60, 0))
    assert row.status == "failed"
    assert "admit() must return None or a boolean array" in row.error
    service = SimulatedService(tiny_zoo, defense=BadMask(), config=ServiceConfig(), seed=0, budget=10,
                               benign_queries=10)
    with pytest.raises(DefenseError, match="admit"):
        service.query(tiny_zoo.splits["attacker_x"][:2], Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1]))


@pytest.mark.parametrize("field, value, message", [
    ("load", 0, "load must be a number in \\(0, 2\\]"),
    ("load", -0.5, "load must be a number in \\(0, 2\\]"),
    ("load", float("nan"), "load must be a number in \\(0, 2\\]"),
    ("load", 2.5, "load must be a number in \\(0, 2\\]"),
    ("benign_clients", 0, "benign_clients must be an integer >= 1"),
    ("attacker_rate", 0.0, "attacker_rate must be a finite number > 0"),
    ("max_batch", 0, "max_batch must be an integer >= 1"),
    ("timeout", -1.0, "timeout must be a finite number > 0"),
])
def test_bad_service_parameters_are_one_line_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ServiceConfig(**{field: value})


def test_a_grid_with_a_bad_load_fails_to_load_naming_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nseeds = [0]\n'
                    '[[blocks]]\nname = "b"\nbudgets = [10]\nattacks = [{ name = "naive" }]\n'
                    'defenses = [{ name = "none" }]\nservice = { load = [0.5, 2.5] }\n')
    with pytest.raises(ConfigError, match=r"bad.toml: field 'blocks.0.service': service load must be"):
        load_grid(path)


def test_a_load_sweep_makes_one_cell_per_load(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('name = "sweep"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nseeds = [0]\n'
                    '[service]\nbenign_clients = 4\n'
                    '[[blocks]]\nname = "b"\nbudgets = [10]\nattacks = [{ name = "naive" }]\n'
                    'defenses = [{ name = "none" }]\nservice = { load = [0.5, 0.8] }\n')
    cells = load_grid(path).cells()
    assert [(c.service.load, c.service.benign_clients) for c in cells] == [(0.5, 4), (0.8, 4)]


def test_requests_an_overloaded_worker_drops_come_back_refused_and_cost_budget(tiny_zoo):
    # a timeout far below one batch's service time, and the attacker's rows arriving in a burst: whatever
    # queues behind a batch is dropped
    service = SimulatedService(tiny_zoo, defense=make_defense("none"),
                               config=ServiceConfig(load=1.0, timeout=0.01, attacker_rate=1e4), seed=0, budget=200,
                               benign_queries=100)
    target = target_for(service)
    answers = target.query(tiny_zoo.splits["attacker_x"][:200],
                           Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1]))
    refused = target.last_refused
    assert refused.any() and not refused.all()
    assert torch.isnan(answers[refused]).all() and torch.isfinite(answers[~refused]).all()
    assert target.remaining_budget == 0
    assert (service.log.served_ids() == -1).sum() == int(refused.sum())
    service.finish()
    assert len(service.benign_outcome()["latency"]) >= 100


def test_benign_clients_send_distinct_inputs_from_disjoint_shares(tiny_zoo):
    """Users upload new images: no client repeats an input before it has sent its whole share, no two clients
    share an input (the pool is dealt into disjoint shares), and a client past its share starts it again."""
    service = SimulatedService(tiny_zoo, defense=make_defense("none"), config=ServiceConfig(benign_clients=8), seed=4,
                               budget=10, benign_queries=2600)
    service.query(tiny_zoo.splits["attacker_x"][:10], Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1]))
    service.finish()
    outcome = service.benign_outcome()
    share = len(tiny_zoo.splits["attacker_x"]) // 8  # 250 on fmnist-tiny's 2,000-image pool
    owner: dict[int, int] = {}
    restarted = 0
    for client in np.unique(outcome["client"]).tolist():
        rows = outcome["pool_row"][outcome["client"] == client].tolist()
        assert len(set(rows[:share])) == min(len(rows), share)  # no repeat within the first pass
        assert set(rows[share:]) <= set(rows[:share])  # the second pass is the same share
        restarted += len(rows) > share
        for row in rows:
            assert owner.setdefault(row, client) == client  # disjoint shares
    assert restarted > 0  # 2,600 requests over 8 clients: some pass their share of 250

    row = run_cell(tiny_zoo, _grid(), Cell("rank:2", _grid().attacks[0], PluginSpec("none"), 60, 0))
    assert row.benign_requests / 8 < share and row.benign_repeats == 0.0


def test_the_preflight_says_when_defended_benign_clients_will_repeat_inputs(tiny_zoo, tmp_path):
    """Each benign client sends about budget / attacker_rate requests; past its share of the pool it repeats inputs,
    which the run tells before computing a defended cell (an undefended one has no watcher)."""
    from psml_bench.bench.preflight import repeating_benign_inputs
    share = len(tiny_zoo.splits["attacker_x"]) // 8
    grid = _grid()
    row = run_cell(tiny_zoo, grid, Cell("rank:2", grid.attacks[0], PluginSpec("none"), 2 * share, 0))
    per_client = ServiceConfig().benign_requests_per_client(2 * share, grid.benign_queries)
    assert per_client == 2 * share and row.benign_requests / 8 >= per_client * 0.9
    assert row.benign_repeats >= 0.4  # 1 - share / per_client = 0.5, give or take the clients' draw
    over = load_grid(tiny_grid(tmp_path / "over.toml", budget=2 * share, defense="none",
                               defenses=('{ name = "spec-noise" }',)))
    noised = [cell for cell in over.cells() if cell.defense.name == "spec-noise"]
    note, = repeating_benign_inputs(over, {"fmnist-tiny": tiny_zoo.card}, over.cells())
    assert note.startswith(f"{len(noised)} of the cells to compute put a defense before benign clients who each send "
                           f"about {2 * share} requests or more, above their share of {share} distinct inputs")
    within = load_grid(tiny_grid(tmp_path / "within.toml", budget=share // 2, defense="none",
                                 defenses=('{ name = "spec-noise" }',)))
    assert repeating_benign_inputs(within, {"fmnist-tiny": tiny_zoo.card}, within.cells()) == ()
    undefended = [cell for cell in over.cells() if cell.defense.name == "none"]
    assert repeating_benign_inputs(over, {"fmnist-tiny": tiny_zoo.card}, undefended) == ()
