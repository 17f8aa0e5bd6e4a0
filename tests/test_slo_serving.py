"""Protocol 4's serving model: deadline-aware batching, replicas, SLO-aware routing, capacity at the SLO, bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import numpy as np
import pytest
import torch

import psml_bench.serving.capacity as capacity_module
from psml_bench.serving.capacity import (CapacityCache, CapacityProblem, attainment, committed_capacity_problem,
                                         search_capacity)
from psml_bench.bench.cell import run_cell
from psml_bench.contract.errors import ConfigError, PsmlError
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec, load_grid
from psml_bench.serving.live import ApiKey, LiveService
from psml_bench.zoo.lock import checkout_lock, read_locks
from psml_bench.contract.registries import POLICIES, make_defense
from psml_bench.serving.service import ServiceConfig
from psml_bench.contract.spec import Spec
from psml_bench.serving.simulator import BatchingConfig, BatchingSimulator, saturation_capacity
from psml_bench.serving.slo_routing import SimulatedQueues

# Test accuracy of each model as the committed leaderboard's lock records it (leaderboard/zoos.json, written from the
# zoo cards by the run that computed the leaderboard): these zoos are not built here, their committed profiles are.
_LOCKS = read_locks(checkout_lock())
ACCURACY = {zoo: {m.id: m.accuracy for m in _LOCKS[zoo].models} for zoo in ("fmnist", "fmnist-compact")}


def zoo_problem(zoo: str, policy: str, reject: bool = False) -> CapacityProblem:
    """The capacity problem of a zoo's committed profiles (its config's margins, the default service)."""
    return committed_capacity_problem(zoo, ACCURACY[zoo], policy, reject)


# --- deadline-aware batching -----------------------------------------------------------------------------

def test_a_batch_never_waits_its_oldest_request_past_its_deadline():
    # service 2 + 1 per request, max batch 4 (a full batch takes 6), wait up to 50: a lone request with
    # deadline 10 leaves at 10 - 6 = 4 (not at 50), one without a deadline waits the full 50
    simulator = BatchingSimulator([2.0], [1.0], BatchingConfig(max_batch=4, max_wait_ms=50.0))
    ids = simulator.add([0.0, 100.0], [0, 0], [10.0, math.inf])
    simulator.finish()
    assert simulator.completion_ms.tolist() == [4.0 + 3.0, 150.0 + 3.0]
    # a second request arriving before that latest start joins the batch; the batch still ends by the deadline
    simulator = BatchingSimulator([2.0], [1.0], BatchingConfig(max_batch=4, max_wait_ms=50.0))
    simulator.add([0.0, 3.0], [0, 0], [10.0, 60.0])
    simulator.finish()
    assert simulator.completion_ms.tolist() == [8.0, 8.0] and (simulator.completion_ms <= 10.0).all()
    # a deadline already too close to make: served at once, not held
    simulator = BatchingSimulator([2.0], [1.0], BatchingConfig(max_batch=4, max_wait_ms=50.0))
    simulator.add([0.0], [0], [1.0])
    simulator.finish()
    assert simulator.completion_ms.tolist() == [3.0]
    assert len(ids) == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_the_deadline_rule_gives_the_same_run_stepped_online_as_one_shot(seed):
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 300, 600))
    models, deadlines = rng.integers(0, 2, 600), times + rng.uniform(2, 30, 600)
    config = BatchingConfig(4, 5.0)
    whole = BatchingSimulator([1.0, 2.0], [0.5, 0.3], config, [1, 2])
    whole.add(times, models, deadlines)
    whole.finish()
    online = BatchingSimulator([1.0, 2.0], [0.5, 0.3], config, [1, 2])
    for t, m, d in zip(times.tolist(), models.tolist(), deadlines.tolist()):
        online.advance(t)
        online.add_one(t, m, d)
    online.finish()
    np.testing.assert_array_equal(online.completion_ms, whole.completion_ms)


# --- replicas ----------------------------------------------------------------------------------------------

def test_replicas_serve_side_by_side_and_scale_saturated_throughput():
    simulator = BatchingSimulator([2.0], [1.0], BatchingConfig(max_batch=1), replicas=[2])
    simulator.add([0.0, 0.0, 0.0], [0, 0, 0])
    simulator.finish()
    assert simulator.completion_ms.tolist() == [3.0, 3.0, 6.0]  # two workers at once, the third waits
    n, config = 16_000, BatchingConfig(8, 2.0)
    times = np.sort(np.random.default_rng(3).uniform(0.0, 10.0, n))
    throughput = []
    for workers in (1, 3):
        simulator = BatchingSimulator([1.5], [0.25], config, [workers])
        simulator.add(times, np.zeros(n, dtype=int))
        simulator.finish()
        throughput.append(n / simulator.completion_ms.max())
    assert throughput[1] == pytest.approx(3 * throughput[0], rel=0.01)
    assert saturation_capacity([1.5], [0.25], [1.0], 8, [3]) == pytest.approx(3 * saturation_capacity([1.5], [0.25],
                                                                                                       [1.0], 8))


def test_prediction_equals_the_completion_when_nothing_else_arrives():
    rng = np.random.default_rng(5)
    simulator = BatchingSimulator([1.0, 3.0], [0.4, 0.2], BatchingConfig(4, 1.0, timeout_ms=40.0), [1, 2])
    t = 0.0
    for _ in range(300):
        t += float(rng.exponential(0.6))
        simulator.advance(t)
        model, bound = int(rng.integers(0, 2)), float(rng.uniform(3, 20))
        predicted = simulator.predict_latency(t, bound)[model]
        probe = BatchingSimulator([1.0, 3.0], [0.4, 0.2], simulator.config, [1, 2])
        probe._queues = [dataclasses.replace(q, times=list(q.times), ids=list(q.ids), deadlines=list(q.deadlines),
                                             workers=list(q.workers)) for q in simulator._queues]
        probe._reserve(simulator._count + 1)
        probe._count = simulator._count
        request = probe.add_one(t, model, t + bound)
        probe.finish()
        assert probe.completion_ms[request] - t == pytest.approx(predicted)
        simulator.add_one(t, model, t + bound)


# --- SLO-aware routing --------------------------------------------------------------------------------------

def test_the_slo_aware_policy_takes_the_cheapest_model_predicted_to_meet_the_bound():
    policy = POLICIES.get("infaas-slo")()
    accuracy, latency = np.array([0.7, 0.8, 0.9]), np.array([1.0, 2.0, 4.0])

    class Fixed:
        def __init__(self, predicted):
            self.predicted, self.committed = predicted, []

        def predict(self, position, bound):
            return self.predicted

        def commit(self, position, model, bound):
            self.committed.append(model)

    def route(predicted, floor, bound, reject=False):
        return int(policy.route_online(accuracy, latency, np.array([floor]), np.array([bound]), Fixed(predicted),
                                       reject=reject)[0])

    assert route([1.0, 2.0, 4.0], 0.75, 5.0) == 1  # idle: as infaas
    assert route([1.0, 6.0, 4.0], 0.75, 5.0) == 2  # the cheap one is busy: the next that meets both
    assert route([1.0, 6.0, 7.0], 0.75, 5.0) == 0  # none meets both: the most accurate within the bound
    assert route([9.0, 6.0, 7.0], 0.75, 5.0) == 1  # none within the bound: the fastest predicted
    assert route([9.0, 6.0, 7.0], 0.75, 5.0, reject=True) == -1
    assert policy.select(accuracy, latency, np.array([0.75]), np.array([5.0]))[0].tolist() == [1]


@pytest.mark.parametrize("zoo", ["fmnist", "fmnist-compact"])
def test_slo_aware_routing_beats_queue_blind_routing_at_every_load(zoo):
    aware, blind = zoo_problem(zoo, "infaas-slo"), zoo_problem(zoo, "infaas")
    saturation = blind.saturation()
    for load in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8):  # fractions of the saturation rate, 5000 requests each
        slo, queue_blind = (attainment(p, load * saturation, 5000) for p in (aware, blind))
        assert slo.attainment > queue_blind.attainment, (load, slo.attainment, queue_blind.attainment)


def test_online_routing_sees_each_decision_before_the_next():
    # three requests at once, each only meetable on model 0 or 1 (bound 2.5, service 2): the second goes to
    # model 1 because model 0 is busy with the first; the third can meet its bound nowhere: fallback
    simulator = BatchingSimulator([2.0, 2.0], [0.0, 0.0], BatchingConfig(max_batch=1))
    queues = SimulatedQueues(simulator, np.array([0.0, 0.1, 0.2]))
    policy = POLICIES.get("infaas-slo")()
    served = policy.route_online(np.array([0.8, 0.8]), np.array([2.0, 2.0]), np.full(3, 0.8), np.full(3, 2.5),
                                 queues)
    assert served.tolist() == [0, 1, 0]


# --- capacity at the SLO ----------------------------------------------------------------------------------

def test_capacity_is_the_highest_rate_meeting_the_target_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(capacity_module, "CAPACITY_REQUESTS", 4000)
    problem = zoo_problem("fmnist-compact", "infaas-slo")
    searches = []
    cache = CapacityCache(tmp_path / "capacity.json")
    rate = cache.get(problem, lambda p: searches.append(p) or search_capacity(p))
    assert attainment(problem, rate).attainment >= 0.99
    assert attainment(problem, 1.1 * rate).attainment < 0.99
    assert 0 < rate < problem.saturation()
    assert CapacityCache(tmp_path / "capacity.json").get(problem, lambda p: pytest.fail("searched twice")) == rate
    assert len(searches) == 1
    # more workers serve more at the SLO
    doubled = dataclasses.replace(problem, replicas=(2,) * 5)
    assert search_capacity(doubled) > 2 * rate


def test_a_service_that_misses_its_bounds_even_when_idle_is_one_clear_line():
    problem = zoo_problem("fmnist-compact", "infaas-slo")
    slow = list(problem.intercept_ms)
    slow[4] *= 3  # resnet18 serves three times slower than the profile the router believes
    with pytest.raises(ConfigError, match="^no load meets SLO attainment 0.99: "
                                          ".* model 'resnet18' meets by the profile miss") as error:
        search_capacity(dataclasses.replace(problem, intercept_ms=tuple(slow)))
    assert "\n" not in str(error.value)


# --- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("replicas", 0, "replicas must be an integer >= 1"),
    ("replicas", {"resnet34": 0}, "replicas must be an integer >= 1"),
    ("slo_target", -0.5, "slo_target must be a number in \\(0, 1\\]"),
    ("slo_target", math.nan, "slo_target must be a number in \\(0, 1\\]"),
    ("admission", "drop", "admission must be 'fallback' or 'reject'"),
])
def test_bad_service_config_is_one_line_at_grid_load(tmp_path, field, value, message):
    rendered = "{ resnet34 = 0 }" if isinstance(value, dict) else ("nan" if value != value else repr(value))
    path = tmp_path / "grid.toml"
    path.write_text(f'name = "t"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nseeds = [0]\n'
                    f'attacks = [{{ name = "naive" }}]\ndefenses = [{{ name = "none" }}]\nbudgets = [10]\n'
                    f'[service]\n{field} = {rendered.replace(chr(39), chr(34))}\n')
    with pytest.raises(ConfigError, match=f"field 'service': {message}") as error:
        load_grid(path)
    assert "\n" not in str(error.value)


def test_unknown_policy_is_one_line_at_grid_load(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('name = "t"\nzoo = "fmnist-tiny"\npolicy = "infaas-fast"\nvictims = ["rank:1"]\nseeds = [0]\n'
                    'attacks = [{ name = "naive" }]\ndefenses = [{ name = "none" }]\nbudgets = [10]\n')
    with pytest.raises(PsmlError, match="field 'policy': unknown policy 'infaas-fast'; did you mean 'infaas-slo'"):
        load_grid(path)


def test_replicas_naming_a_model_the_zoo_lacks_is_one_line(tiny_zoo):
    with pytest.raises(ConfigError, match="^replicas names model\\(s\\) resnet34 that the zoo does not serve"):
        ServiceConfig(replicas={"resnet34": 2}).replica_counts([e.id for e in tiny_zoo.menu])


# --- the cell's service and the live server ----------------------------------------------------------------

def test_an_undefended_slo_routed_cell_is_its_own_undefended_baseline(tiny_zoo):
    grid = GridConfig("t", "fmnist-tiny", "infaas-slo", ("rank:2",), (PluginSpec("psml"),), (PluginSpec("none"),),
                      (60,), (0,), 400, "test")
    row = run_cell(tiny_zoo, grid, Cell("rank:2", PluginSpec("psml"), PluginSpec("none"), 60, 0,
                                        ServiceConfig(load=0.95)))
    assert row.status == "ok", row.error
    assert row.benign_accuracy_drop == 0.0 and row.latency_overhead == pytest.approx(0.0, abs=1e-12)
    assert row.goodput >= 0.95 and row.refused_benign == 0.0


def test_the_live_server_spreads_a_burst_with_the_same_policy(tiny_zoo):
    async def burst(policy: str) -> set[int]:
        service = LiveService(tiny_zoo, defense=make_defense("none"), keys={"k": ApiKey(None, True)}, policy=policy)
        await service.start()
        try:
            spec = Spec(tiny_zoo.accuracy_range[0], tiny_zoo.latency_range_ms[1])
            await service.query("k", tiny_zoo.splits["attacker_x"][:600], spec)
            return set(service.frontends["k"].log.served_ids().tolist())
        finally:
            await service.stop()

    torch.set_num_threads(1)
    assert len(asyncio.run(burst("infaas"))) == 1  # queue-blind: every row on the fastest model
    assert len(asyncio.run(burst("infaas-slo"))) > 1  # its predicted queue passes the bound: others take rows
