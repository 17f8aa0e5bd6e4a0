"""The batching simulator against queueing theory, hand-made traces and a literal reading of its rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psml_bench.contract.errors import ConfigError
from psml_bench.serving.simulator import BatchingConfig, BatchingSimulator, poisson_arrivals, saturation_capacity


def reference(times, models, intercept, slope, config):
    """The batching rule of the module docstring, read literally, in O(n^2): (completion, batch size)."""
    completion, size = np.full(len(times), np.nan), np.zeros(len(times), dtype=int)
    for model in range(len(intercept)):
        waiting = sorted((t, i) for i, t in enumerate(times) if models[i] == model)
        free_at = -math.inf
        while waiting:
            oldest = waiting[0][0]
            full = waiting[config.max_batch - 1][0] if len(waiting) >= config.max_batch else math.inf
            dispatch = max(free_at, min(oldest + config.max_wait_ms, full))
            batch = [i for t, i in waiting if t <= dispatch][:config.max_batch]
            free_at = dispatch + intercept[model] + slope[model] * len(batch)
            completion[batch], size[batch] = free_at, len(batch)
            waiting = waiting[len(batch):]
    return completion, size


def one_shot(times, models, intercept, slope, config):
    simulator = BatchingSimulator(intercept, slope, config)
    simulator.add(times, models)
    simulator.finish()
    return simulator


def stepped(simulator, times, models, deadlines):
    """The serving system's use: dispatch the earliest batch, adding the requests that arrive before it first; each
    batch leaves (or its oldest request is dropped) when ``next_dispatch_ms`` said."""
    added = 0
    while True:
        next_model = min(range(simulator.num_models), key=simulator.next_dispatch_ms)
        dispatch = simulator.next_dispatch_ms(next_model)
        arriving = np.searchsorted(times, dispatch, side="right") if np.isfinite(dispatch) else len(times)
        if arriving > added:
            step = max(arriving - added, 1) if np.isfinite(dispatch) else min(50, len(times) - added)
            simulator.add(times[added:added + step], models[added:added + step], deadlines[added:added + step])
            added += step
            continue
        if not np.isfinite(dispatch):
            return simulator
        simulator.dispatch(next_model)
        assert simulator.last_dispatch_ms(next_model) == dispatch


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_fifo_waiting_time_matches_md1(rho):
    service_ms, n, warm_up = 2.0, 200_000, 20_000
    times = poisson_arrivals(rho / service_ms, n, np.random.default_rng(7))
    simulator = one_shot(times, np.zeros(n, dtype=int), [service_ms], [0.0], BatchingConfig(max_batch=1))
    waiting = (simulator.completion_ms - times - service_ms)[warm_up:]
    assert (simulator.batch_size == 1).all()
    assert waiting.min() > -1e-9  # only rounding: nobody is served before arriving
    assert waiting.mean() == pytest.approx(rho * service_ms / (2 * (1 - rho)), rel=0.05)


def test_saturated_batching_throughput():
    intercept, slope, max_batch = 1.5, 0.25, 8
    n = 16_000
    times = np.sort(np.random.default_rng(3).uniform(0.0, 10.0, n))  # far faster than service
    simulator = one_shot(times, np.zeros(n, dtype=int), [intercept], [slope], BatchingConfig(max_batch, 2.0))
    completion = simulator.completion_ms
    assert (simulator.batch_size == max_batch).all()
    throughput = (n - max_batch) / (completion[-1] - completion[max_batch - 1])
    assert throughput == pytest.approx(max_batch / (intercept + slope * max_batch), rel=0.01)


def test_lone_request_waits_max_wait_and_full_batch_goes_at_once():
    simulator = BatchingSimulator([1.0], [0.5], BatchingConfig(max_batch=8, max_wait_ms=2.0))
    lone = simulator.add([10.0], [0])
    assert simulator.completion(lone)[0] == pytest.approx(10.0 + 2.0 + 1.5)
    group = simulator.add(np.full(8, 20.0), np.zeros(8, dtype=int))
    assert simulator.completion(group) == pytest.approx(np.full(8, 20.0 + 1.0 + 0.5 * 8))
    assert (simulator.batch_size == [1] + [8] * 8).all()


def test_hand_trace_with_busy_worker():
    # max_batch 2, wait 1, service 2 + 1 per request. Request 0 (t=0) waits until 1 and is served
    # alone until 4; 1, 2 (t=1.5, 2) form the next batch at 4 (until 8); 3 (t=3) is still alone
    # at 8: the worker is free and its wait is over, so it leaves at once.
    simulator = one_shot([0.0, 1.5, 2.0, 3.0], [0, 0, 0, 0], [2.0], [1.0], BatchingConfig(2, 1.0))
    assert simulator.completion_ms.tolist() == [4.0, 8.0, 8.0, 11.0]
    assert simulator.batch_size.tolist() == [1, 2, 2, 1]


@pytest.mark.parametrize("max_batch, max_wait_ms", [(1, 0.0), (3, 0.0), (4, 2.5), (8, 40.0)])
def test_matches_literal_rule_with_ties(max_batch, max_wait_ms):
    rng = np.random.default_rng(max_batch)
    times = rng.integers(0, 300, 400).astype(float)  # integer times force ties
    models = rng.integers(0, 3, 400)
    intercept, slope, config = [2.0, 0.0, 5.0], [1.0, 3.0, 0.5], BatchingConfig(max_batch, max_wait_ms)
    expected_completion, expected_size = reference(times, models, intercept, slope, config)
    simulator = one_shot(times, models, intercept, slope, config)
    np.testing.assert_allclose(simulator.completion_ms, expected_completion)
    np.testing.assert_array_equal(simulator.batch_size, expected_size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_use_equals_one_shot(seed):
    rng = np.random.default_rng(seed)
    intercept, slope, config = [1.0, 2.0, 0.5], [0.3, 0.1, 0.6], BatchingConfig(4, 1.5)
    benign_times = np.round(poisson_arrivals(1.5, 3000, rng), 1)  # rounding makes ties
    benign_models = rng.integers(0, 3, 3000)
    chunks = np.array_split(rng.permutation(3000), 3)  # unsorted, out of order across chunks
    simulator = BatchingSimulator(intercept, slope, config)
    added = [(benign_times[chunk], benign_models[chunk]) for chunk in chunks]
    for times, models in added:
        simulator.add(times, models)
    now, answers = 0.0, {}
    while now < benign_times.max():
        count = int(rng.integers(1, 40))
        times = np.sort(now + np.round(rng.exponential(2.0, count), 1))
        models = rng.integers(0, 3, count)
        if rng.random() < 0.1:
            times = np.full(count, now)  # a burst exactly at the committed time
        ids = simulator.add(times, models)
        added.append((times, models))
        asked = ids[rng.random(count) < 0.5] if rng.random() < 0.5 else ids
        asked = asked if len(asked) else ids[-1:]
        if rng.random() < 0.2:
            asked = np.concatenate([asked, rng.integers(0, len(simulator.arrival_ms), 3)])
        answer = simulator.completion(asked)
        assert not np.isnan(answer).any()
        answers.update(zip(asked.tolist(), answer.tolist()))
        assert simulator.committed_ms >= answer.max()
        now = max(simulator.committed_ms, now) + float(rng.exponential(5.0))
    simulator.finish()
    whole = one_shot(np.concatenate([t for t, _ in added]), np.concatenate([m for _, m in added]), intercept, slope,
                     config)
    np.testing.assert_array_equal(simulator.completion_ms, whole.completion_ms)
    np.testing.assert_array_equal(simulator.batch_size, whole.batch_size)
    assert all(whole.completion_ms[i] == c for i, c in answers.items())
    expected_completion, _ = reference(whole.arrival_ms, whole.model, intercept, slope, config)
    np.testing.assert_allclose(whole.completion_ms, expected_completion)


def test_add_at_or_before_the_models_last_dispatch_raises():
    simulator = BatchingSimulator([1.0, 1.0], [1.0, 1.0], BatchingConfig(2, 1.0))
    simulator.add([0.0, 50.0], [0, 1])
    assert simulator.completion([0])[0] == pytest.approx(3.0)  # dispatched at 1.0 (max wait)
    assert np.isnan(simulator.completion_ms[1])  # model 1 was not simulated
    assert simulator.committed_ms == pytest.approx(3.0)
    with pytest.raises(ValueError, match="last dispatch"):
        simulator.add([1.0], [0])  # it would have joined the batch dispatched at 1.0
    simulator.add([1.5], [0])  # after the dispatch: it queues
    simulator.add([2.5], [1])  # model 1 has dispatched nothing yet
    assert simulator.completion([2, 3]).tolist() == pytest.approx([5.0, 5.5])  # queued behind the first batch; max wait
    with pytest.raises(ValueError, match="model indices"):
        simulator.add([10.0], [2])


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch": 0}, "max_batch must be an integer >= 1, got 0"),
    ({"max_batch": 2.5}, "max_batch must be an integer >= 1, got 2.5"),
    ({"max_batch": True}, "max_batch must be an integer >= 1, got True"),
    ({"max_wait_ms": -1.0}, "max_wait_ms must be a finite number >= 0, got -1.0"),
    ({"max_wait_ms": math.nan}, "max_wait_ms must be a finite number >= 0, got nan"),
])
def test_bad_batching_config(kwargs, message):
    with pytest.raises(ConfigError, match=f"^BatchingConfig.{message}$"):
        BatchingConfig(**kwargs)


def test_bad_service_times():
    with pytest.raises(ConfigError, match="one length"):
        BatchingSimulator([1.0, 2.0], [1.0], BatchingConfig())
    with pytest.raises(ConfigError, match="intercept \\+ slope > 0"):
        BatchingSimulator([0.0], [0.0], BatchingConfig())
    with pytest.raises(ConfigError, match=">= 0"):
        BatchingSimulator([-1.0], [2.0], BatchingConfig())


def test_saturation_capacity_of_two_models():
    # model 0: 8 / (2 + 0.5*8) = 4/3 per ms, model 1: 8 / (4 + 1*8) = 2/3 per ms.
    # With 3/4 of traffic to model 0 it saturates at (4/3)/(3/4) = 16/9 < (2/3)/(1/4) = 8/3.
    assert saturation_capacity([2.0, 4.0], [0.5, 1.0], [0.75, 0.25], 8) == pytest.approx(16 / 9)
    assert saturation_capacity([2.0, 4.0], [0.5, 1.0], [0.25, 0.75], 8) == pytest.approx(8 / 9)
    assert saturation_capacity([2.0, 4.0], [0.5, 1.0], [1.0, 0.0], 8) == pytest.approx(4 / 3)
    with pytest.raises(ConfigError, match="shares"):
        saturation_capacity([2.0, 4.0], [0.5, 1.0], [0.0, 0.0], 8)


def test_poisson_arrivals_are_seeded_with_the_right_rate():
    first = poisson_arrivals(0.5, 20_000, np.random.default_rng(11), start=100.0)
    again = poisson_arrivals(0.5, 20_000, np.random.default_rng(11), start=100.0)
    np.testing.assert_array_equal(first, again)
    assert first[0] > 100.0 and (np.diff(first) > 0).all()
    assert np.diff(first).mean() == pytest.approx(2.0, rel=0.03)


def test_stepping_batches_in_time_order_matches_a_one_shot_run():
    """The serving system's use: dispatch the earliest batch, adding requests that arrive before it first."""
    rng = np.random.default_rng(3)
    intercept, slope = np.array([1.0, 0.5, 2.0]), np.array([0.2, 0.1, 0.5])
    config = BatchingConfig(4, 0.5)
    times = np.sort(rng.uniform(0, 200, 2000))
    models = rng.integers(0, 3, 2000)
    simulator = stepped(BatchingSimulator(intercept, slope, config), times, models, np.full(len(times), math.inf))
    whole = one_shot(times, models, intercept, slope, config)
    np.testing.assert_array_equal(simulator.completion_ms, whole.completion_ms)
    assert simulator.pending(0) == simulator.pending(1) == simulator.pending(2) == 0


@pytest.mark.parametrize("timeout_ms", [None, 6.0])
def test_stepping_predicting_and_one_shot_dispatch_alike_with_deadlines_replicas_and_a_timeout(timeout_ms):
    """Each batch leaves (or its oldest request is dropped) when ``next_dispatch_ms`` said; a request's predicted
    latency is what it gets when nothing else arrives first; the stepped run is the one-shot run."""
    rng = np.random.default_rng(11)
    intercept, slope, replicas = np.array([1.0, 0.5, 2.0]), np.array([0.2, 0.1, 0.5]), [1, 2, 3]
    config = BatchingConfig(4, 1.5, timeout_ms)
    times = np.sort(np.round(rng.uniform(0, 150, 1500), 1))  # rounding makes ties
    models = rng.integers(0, 3, 1500)
    deadlines = np.where(rng.random(1500) < 0.3, math.inf, times + rng.uniform(1, 25, 1500))
    simulator = stepped(BatchingSimulator(intercept, slope, config, replicas), times, models, deadlines)
    whole = BatchingSimulator(intercept, slope, config, replicas)
    whole.add(times, models, deadlines)
    whole.finish()
    np.testing.assert_array_equal(simulator.completion_ms, whole.completion_ms)
    assert whole.dropped.any() == (timeout_ms is not None)
    alone = BatchingSimulator(intercept, slope, config, replicas)
    alone.add(times[:-1], models[:-1], deadlines[:-1])
    alone.advance(times[-1])
    predicted = alone.predict_latency(float(times[-1]), float(deadlines[-1] - times[-1]))[int(models[-1])]
    assert whole.completion_ms[-1] - times[-1] == predicted


def test_requests_past_the_timeout_are_dropped_without_taking_service_time():
    simulator = BatchingSimulator([10.0], [0.0], BatchingConfig(1, 0.0, timeout_ms=15.0))
    simulator.add([0.0, 1.0, 2.0, 30.0], [0, 0, 0, 0])
    simulator.finish()
    # 0 serves 0-10; 1 waits 9 (serves 10-20); 2 would wait 18 > 15: dropped; 30 finds the worker free
    assert simulator.completion_ms.tolist() == [10.0, 20.0, math.inf, 40.0]
    assert simulator.dropped.tolist() == [False, False, True, False]
    assert simulator.batch_size.tolist() == [1, 1, 0, 1]
    with pytest.raises(ConfigError, match="timeout_ms"):
        BatchingConfig(timeout_ms=0)
