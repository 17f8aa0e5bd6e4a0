"""Deterministic discrete-event simulation of model workers with FIFO queues and dynamic batching.

The clock is simulated and counts milliseconds. Each of ``M`` models has one FIFO queue served by
``R_m`` identical workers (replicas; default one); a request is an arrival time, a model index and
a deadline (default ``+inf``), and a model's requests are served in order of arrival (ties: in
order of insertion). Models do not share workers, so each queue evolves alone.

Batching rule (as in Triton's dynamic batcher, Clockwork and INFaaS), with ``B = max_batch`` and
``W = max_wait_ms``. Whenever a model's queue is non-empty, its next batch is dispatched at::

    d = max(F, min(a + W, f, max(a, D - S(B))))

where ``F`` is when the model's earliest-free worker became free (the completion of its previous
batch; ``-inf`` before the first), ``a`` is the arrival of the oldest waiting request, ``f`` the
arrival of the B-th oldest waiting request (the moment the queue reaches B requests; ``+inf``
while fewer than B have been added), ``D`` the oldest waiting request's deadline and
``S(b) = intercept + slope * b`` the service time of a batch of ``b``. The batch is the oldest
waiting requests with arrival ``<= d``, at most B of them, and goes to that earliest-free worker.
So a worker waits for the batch to fill, but dispatches no later than W after the oldest request
arrived, nor later than the last moment at which even a full batch would still finish by the
oldest request's deadline (Clockwork's rule: a batch never waits its oldest request past its
SLO), or as soon as a worker is free if that is later. With a ``timeout_ms`` T, a request that
would be dispatched later than T after its arrival is dropped instead (its completion is ``inf``;
it takes no service time) and the rule is applied again to the next one: the overload protection
of real servers (Triton's queue timeout, Clockwork's dropping of requests that can no longer meet
their SLO), which also keeps an overloaded simulation finite. With ``B = 1`` and one worker this
is a FIFO single server. Every request of a batch completes at ``d + S(b)``; a request's latency
is its completion minus its arrival. ``R`` workers serve up to ``R`` times a single worker's rate.

Incremental use: requests may be added at any time, provided each arrives after the last batch
its model already dispatched (a request arriving at or before that dispatch would have joined
it); ``add`` refuses any other. ``completion()`` dispatches the batches a set of requests needs;
the serving system instead steps models one batch at a time in global time order
(:meth:`BatchingSimulator.next_dispatch_ms`, :meth:`BatchingSimulator.dispatch`), adding the
requests that arrive before each dispatch first. Either way the results equal a one-shot run.
Online routing (a policy that looks at the queues) brings the simulation up to each arrival
(:meth:`BatchingSimulator.advance`), asks what each model would give a request arriving then
(:meth:`BatchingSimulator.predict_latency`) and adds it where the policy sends it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Sequence

import numpy as np

from ..contract.errors import ConfigError

# Up to this many requests, joining a model's pending queue one list.insert at a time beats a
# numpy merge of the whole pending tail.
_INSERT_ONE_BY_ONE = 64


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching parameters shared by every model's worker."""

    max_batch: int = 8
    max_wait_ms: float = 2.0
    timeout_ms: float | None = None

    def __post_init__(self) -> None:
        if self.timeout_ms is not None and (isinstance(self.timeout_ms, bool) or not isinstance(self.timeout_ms, Real)
                                            or not self.timeout_ms > 0):
            raise ConfigError(f"BatchingConfig.timeout_ms must be None or a number > 0, got {self.timeout_ms!r}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, Integral) or self.max_batch < 1:
            raise ConfigError(f"BatchingConfig.max_batch must be an integer >= 1, got {self.max_batch!r}")
        if (isinstance(self.max_wait_ms, bool) or not isinstance(self.max_wait_ms, Real)
                or not math.isfinite(self.max_wait_ms) or self.max_wait_ms < 0):
            raise ConfigError(f"BatchingConfig.max_wait_ms must be a finite number >= 0, got {self.max_wait_ms!r}")


@dataclass
class _Queue:
    """One model's requests sorted by (arrival, id); those before ``head`` have been served.
    ``workers`` holds when each of its workers is free."""

    times: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    deadlines: list[float] = field(default_factory=list)
    head: int = 0
    workers: list[float] = field(default_factory=lambda: [-math.inf])
    dispatched_at: float = -math.inf


def _service_arrays(intercept_ms: np.ndarray, slope_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    intercept = np.asarray(intercept_ms, dtype=float)
    slope = np.asarray(slope_ms, dtype=float)
    if intercept.ndim != 1 or intercept.shape != slope.shape or len(intercept) == 0:
        raise ConfigError(f"intercept_ms and slope_ms must be non-empty 1-D arrays of one length, "
                          f"got shapes {intercept.shape} and {slope.shape}")
    if not (np.isfinite(intercept).all() and np.isfinite(slope).all() and (intercept >= 0).all()
            and (slope >= 0).all() and (intercept + slope > 0).all()):
        # A zero service time would let a batch complete at its dispatch, when a request added
        # at that instant could still have joined it; incremental runs rely on it being positive.
        raise ConfigError("intercept_ms and slope_ms must be finite and >= 0, with intercept + slope > 0 per model")
    return intercept, slope


def _replica_counts(replicas: Sequence[int] | None, models: int) -> list[int]:
    counts = [1] * models if replicas is None else list(replicas)
    if len(counts) != models or any(isinstance(r, bool) or not isinstance(r, Integral) or r < 1 for r in counts):
        raise ConfigError(f"replicas must be {models} integers >= 1 (workers per model), got {list(counts)!r}")
    return [int(r) for r in counts]


def _dispatch_time(times: list[float], deadlines: list[float], head: int, count: int, max_batch: int,
                   max_wait: float, full_ms: float, free: float) -> float:
    """The batching rule (module docstring): when the batch led by the waiting request at ``head`` is dispatched.

    ``times`` and ``deadlines`` are the queue's, its first ``count`` requests known; ``full_ms`` is a full batch's
    service time ``S(B)`` and ``free`` when the earliest-free worker is free. Stepping, advancing and predicting
    all dispatch by this one function (it runs once per batch, on Python floats: numpy scalars would cost more).
    """
    oldest = times[head]
    dispatch = oldest + max_wait
    filled = head + max_batch - 1
    if filled < count and times[filled] < dispatch:
        dispatch = times[filled]
    latest = deadlines[head] - full_ms
    if latest < dispatch:  # Clockwork's rule: no wait past the oldest request's deadline
        dispatch = latest if latest > oldest else oldest
    return free if free > dispatch else dispatch


class BatchingSimulator:
    """FIFO queues with dynamic batching, ``replicas[m]`` workers for model m (default 1), simulated batch by batch."""

    def __init__(self, intercept_ms: np.ndarray, slope_ms: np.ndarray, config: BatchingConfig | None = None,
                 replicas: Sequence[int] | None = None):
        self._intercept, self._slope = _service_arrays(intercept_ms, slope_ms)
        self.config = config if config is not None else BatchingConfig()
        self.replicas = _replica_counts(replicas, len(self._intercept))
        self._queues = [_Queue(workers=[-math.inf] * r) for r in self.replicas]
        self._full_ms = [float(a) + float(s) * self.config.max_batch for a, s in zip(self._intercept, self._slope)]
        self._committed = -math.inf
        self._count = 0
        self._arrival = np.empty(0)
        self._model = np.empty(0, dtype=np.int64)
        self._completion = np.empty(0)
        self._batch = np.empty(0, dtype=np.int64)

    @property
    def num_models(self) -> int:
        """Number of models."""
        return len(self._queues)

    @property
    def committed_ms(self) -> float:
        """Latest completion of any dispatched batch; added requests must not arrive earlier."""
        return self._committed

    @property
    def arrival_ms(self) -> np.ndarray:
        """Arrival time of every added request, indexed by request id (a copy)."""
        return self._arrival[:self._count].copy()

    @property
    def model(self) -> np.ndarray:
        """Model index of every added request, indexed by request id (a copy)."""
        return self._model[:self._count].copy()

    @property
    def completion_ms(self) -> np.ndarray:
        """Completion time per request id; NaN while not yet served (a copy)."""
        return self._completion[:self._count].copy()

    @property
    def dropped(self) -> np.ndarray:
        """Per request id, whether it was dropped (waited past ``timeout_ms``)."""
        return np.isinf(self._completion[:self._count])

    @property
    def batch_size(self) -> np.ndarray:
        """Size of the batch each request was served in; 0 while not yet served (a copy)."""
        return self._batch[:self._count].copy()

    def add(self, times: np.ndarray, models: np.ndarray, deadlines: np.ndarray | None = None) -> np.ndarray:
        """Adds requests arriving at ``times`` (ms) for ``models``, to finish by ``deadlines`` (ms; default
        none); returns their ids, in order."""
        times = np.asarray(times, dtype=float).ravel()
        models = np.asarray(models).ravel()
        deadlines = np.full(len(times), math.inf) if deadlines is None else np.asarray(deadlines, dtype=float).ravel()
        if times.shape != models.shape or times.shape != deadlines.shape:
            raise ValueError(f"times, models and deadlines differ in length ({len(times)}, {len(models)}, "
                             f"{len(deadlines)})")
        if np.isnan(deadlines).any():
            raise ValueError("deadlines must not be NaN")
        if not np.isfinite(times).all():
            raise ValueError("arrival times must be finite")
        if len(models) and (not np.issubdtype(models.dtype, np.integer) or models.min() < 0
                            or models.max() >= self.num_models):
            raise ValueError(f"model indices must be integers in [0, {self.num_models})")
        if len(times):
            last_dispatch = np.array([q.dispatched_at for q in self._queues])[models.astype(np.int64)]
            late = times <= last_dispatch
            if late.any():
                first_late = int(np.flatnonzero(late)[0])
                raise ValueError(f"arrival {times[first_late]!r} ms is at or before model {int(models[first_late])}'s "
                                 f"last dispatch at {last_dispatch[first_late]!r} ms: a request must arrive after "
                                 "every batch its model already dispatched")
        first, n = self._count, len(times)
        ids = np.arange(first, first + n, dtype=np.int64)
        self._reserve(first + n)
        self._arrival[first:first + n] = times
        self._model[first:first + n] = models
        self._completion[first:first + n] = np.nan
        self._batch[first:first + n] = 0
        self._count += n
        # lexsort is stable: within a model, equal times keep their (ascending) ids.
        order = np.lexsort((times, models))
        sorted_models = models[order]
        bounds = np.flatnonzero(np.diff(sorted_models)) + 1
        for group in np.split(order, bounds) if n else ():
            self._enqueue(self._queues[int(models[group[0]])], times[group], ids[group], deadlines[group])
        return ids

    def add_one(self, time_ms: float, model: int, deadline_ms: float = math.inf) -> int:
        """Adds one request (the online router's path: the checks of :meth:`add` for one request); returns its id."""
        queue = self._queues[model]
        if not time_ms > queue.dispatched_at or not math.isfinite(time_ms):
            raise ValueError(f"arrival {time_ms!r} ms must be finite and after model {model}'s last dispatch at "
                             f"{queue.dispatched_at!r} ms")
        request = self._count
        self._reserve(request + 1)
        self._arrival[request], self._model[request], self._completion[request] = time_ms, model, math.nan
        self._batch[request] = 0
        self._count += 1
        if not queue.times or time_ms >= queue.times[-1]:
            queue.times.append(time_ms)
            queue.ids.append(request)
            queue.deadlines.append(deadline_ms)
        else:
            position = bisect_right(queue.times, time_ms, queue.head)
            queue.times.insert(position, time_ms)
            queue.ids.insert(position, request)
            queue.deadlines.insert(position, deadline_ms)
        return request

    def advance(self, until_ms: float) -> None:
        """Dispatches, on every model, each batch due before ``until_ms`` (the state a request arriving then finds)."""
        for model, queue in enumerate(self._queues):
            if queue.head < len(queue.times) and queue.times[queue.head] < until_ms:
                self._advance(model, len(queue.times), until_ms)

    def predict_latency(self, time_ms: float, bound_ms: float = math.inf) -> list[float]:
        """Per model, the latency a request arriving at ``time_ms`` with latency bound ``bound_ms`` would get
        there if no other request arrived: the batching rule run forward over the requests already queued
        (those arrived by ``time_ms``) and the batches in progress, with the batch-latency fit.

        Call :meth:`advance` to ``time_ms`` first; ``inf`` where the request would be dropped.
        """
        max_batch, max_wait, timeout = self.config.max_batch, float(self.config.max_wait_ms), self.config.timeout_ms
        deadline = time_ms + bound_ms
        predicted = []
        for model, queue in enumerate(self._queues):
            intercept, slope, full = float(self._intercept[model]), float(self._slope[model]), self._full_ms[model]
            workers = queue.workers[:] if len(queue.workers) > 1 else None
            free = queue.workers[0] if workers is None else min(workers)
            stop = bisect_right(queue.times, time_ms, queue.head)
            times = queue.times[queue.head:stop] + [time_ms]
            deadlines = queue.deadlines[queue.head:stop] + [deadline]
            head, count = 0, len(times)
            latency = math.inf  # stays so if the request would be dropped
            while head < count:
                dispatch = _dispatch_time(times, deadlines, head, count, max_batch, max_wait, full, free)
                if timeout is not None and dispatch - times[head] > timeout:
                    head += 1
                    continue
                end = bisect_right(times, dispatch, head, min(head + max_batch, count))
                done = dispatch + intercept + slope * (end - head)
                if end == count:
                    latency = done - time_ms
                    break
                if workers is None:
                    free = done
                else:
                    workers[workers.index(free)] = done
                    free = min(workers)
                head = end
            predicted.append(latency)
        return predicted

    def completion(self, ids: np.ndarray) -> np.ndarray:
        """Simulates just far enough for requests ``ids`` to complete; returns their completion times."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return np.empty(ids.shape)
        if (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self._count):
            raise ValueError(f"request ids must be integers in [0, {self._count})")
        flat = ids.ravel()
        waiting = flat[np.isnan(self._completion[flat])]
        if waiting.size:
            # Per model, serving the latest asked request in (arrival, id) order serves the others.
            order = np.lexsort((waiting, self._arrival[waiting], self._model[waiting]))
            last = order[np.r_[np.flatnonzero(np.diff(self._model[waiting[order]])), len(order) - 1]]
            for request in waiting[last].tolist():
                queue = self._queues[int(self._model[request])]
                position = bisect_left(queue.times, float(self._arrival[request]), queue.head)
                while queue.ids[position] != request:  # only equal arrival times lie between
                    position += 1
                self._advance(int(self._model[request]), position + 1)
        return self._completion[flat].reshape(ids.shape)

    def completion_of(self, ids: np.ndarray) -> np.ndarray:
        """Completion time of requests ``ids`` as simulated so far (NaN: not yet served; ``inf``: dropped)."""
        return self._completion[ids].copy()

    def model_of(self, ids: np.ndarray) -> np.ndarray:
        """Model index of requests ``ids``."""
        return self._model[ids].copy()

    def last_dispatch_ms(self, model: int) -> float:
        """When ``model`` last dispatched a batch or dropped a request (``-inf``: never)."""
        return self._queues[model].dispatched_at

    def pending(self, model: int) -> int:
        """Requests queued on ``model`` and not yet dispatched."""
        queue = self._queues[model]
        return len(queue.times) - queue.head

    def next_dispatch_ms(self, model: int) -> float:
        """When ``model`` dispatches its next batch if no further request arrives first (``inf``: none queued)."""
        queue = self._queues[model]
        if queue.head >= len(queue.times):
            return math.inf
        return self._next_batch(queue, model)[0]

    def dispatch(self, model: int) -> None:
        """Dispatches ``model``'s next batch (callers add every request arriving before it first)."""
        queue = self._queues[model]
        if queue.head < len(queue.times):
            self._advance(model, queue.head + 1)

    def finish(self) -> None:
        """Serves every request still queued."""
        for model, queue in enumerate(self._queues):
            self._advance(model, len(queue.times))

    def _reserve(self, size: int) -> None:
        if size <= len(self._arrival):
            return
        capacity = max(size, 2 * len(self._arrival), 1024)
        for name in ("_arrival", "_model", "_completion", "_batch"):
            old = getattr(self, name)
            grown = np.empty(capacity, dtype=old.dtype)
            grown[:self._count] = old[:self._count]
            setattr(self, name, grown)

    @staticmethod
    def _enqueue(queue: _Queue, times: np.ndarray, ids: np.ndarray, deadlines: np.ndarray) -> None:
        if not queue.times or times[0] >= queue.times[-1]:
            # The common case (benign requests in time order, attacker requests after them): new
            # ids are larger than every queued one, so appending keeps (arrival, id) order.
            queue.times.extend(times.tolist())
            queue.ids.extend(ids.tolist())
            queue.deadlines.extend(deadlines.tolist())
        elif len(times) <= _INSERT_ONE_BY_ONE:
            for time, request, deadline in zip(times.tolist(), ids.tolist(), deadlines.tolist()):
                position = bisect_right(queue.times, time, queue.head)
                queue.times.insert(position, time)
                queue.ids.insert(position, request)
                queue.deadlines.insert(position, deadline)
        else:
            tail_times = np.concatenate([np.array(queue.times[queue.head:], dtype=float), times])
            tail_ids = np.concatenate([np.array(queue.ids[queue.head:], dtype=np.int64), ids])
            tail_deadlines = np.concatenate([np.array(queue.deadlines[queue.head:], dtype=float), deadlines])
            order = np.lexsort((tail_ids, tail_times))
            queue.times[queue.head:] = tail_times[order].tolist()
            queue.ids[queue.head:] = tail_ids[order].tolist()
            queue.deadlines[queue.head:] = tail_deadlines[order].tolist()

    def _advance(self, model: int, stop: int, before: float = math.inf) -> None:
        """Dispatches batches of ``model`` until its first ``stop`` queued requests are served, or the
        next batch is due at or after ``before``."""
        queue = self._queues[model]
        times, deadlines, head, workers = queue.times, queue.deadlines, queue.head, queue.workers
        count = len(times)
        if head >= stop:
            return
        max_batch, max_wait = self.config.max_batch, float(self.config.max_wait_ms)
        intercept, slope, full = float(self._intercept[model]), float(self._slope[model]), self._full_ms[model]
        start, sizes, completions = head, [], []
        dispatch, last_dispatch, latest_done = -math.inf, queue.dispatched_at, self._committed
        single = len(workers) == 1
        free = workers[0] if single else min(workers)
        # The hot loop runs once per batch on Python floats: numpy scalars would cost more here.
        timeout = self.config.timeout_ms
        while head < stop:
            dispatch = _dispatch_time(times, deadlines, head, count, max_batch, max_wait, full, free)
            if dispatch >= before:
                break
            last_dispatch = dispatch
            if timeout is not None and dispatch - times[head] > timeout:
                sizes.append(0)
                completions.append(math.inf)
                head += 1
                continue
            end = bisect_right(times, dispatch, head, min(head + max_batch, count))
            done = dispatch + intercept + slope * (end - head)
            if single:
                workers[0] = free = done
            else:
                workers[workers.index(free)] = done
                free = min(workers)
            if done > latest_done:
                latest_done = done
            sizes.append(end - head)
            completions.append(done)
            head = end
        if head == start:
            return
        served = np.array(queue.ids[start:head], dtype=np.int64)
        per_request = np.maximum(sizes, 1)  # a dropped request is a batch of none, one entry wide
        self._completion[served] = np.repeat(completions, per_request)
        self._batch[served] = np.repeat(sizes, per_request)
        queue.head, queue.dispatched_at = head, last_dispatch
        self._committed = latest_done

    def _next_batch(self, queue: _Queue, model: int) -> tuple[float, int]:
        """(dispatch time, end position) of ``queue``'s next batch, by the module's batching rule (the
        time at which its oldest request is dropped instead, if it timed out)."""
        times, head, count = queue.times, queue.head, len(queue.times)
        max_batch = self.config.max_batch
        dispatch = _dispatch_time(times, queue.deadlines, head, count, max_batch, float(self.config.max_wait_ms),
                                  self._full_ms[model], min(queue.workers))
        return dispatch, bisect_right(times, dispatch, head, min(head + max_batch, count))


def saturation_capacity(intercept_ms: np.ndarray, slope_ms: np.ndarray, shares: np.ndarray, max_batch: int,
                        replicas: Sequence[int] | None = None) -> float:
    """Total arrival rate (requests/ms) at which the busiest model saturates under a request mix.

    Model m serves at most ``replicas[m] * max_batch / (intercept_ms[m] + slope_ms[m] * max_batch)``
    requests per ms (full batches back to back on each of its workers) and receives a fraction
    ``shares[m]`` of the traffic, so the saturation capacity is the minimum over models with
    ``shares[m] > 0`` of that rate divided by ``shares[m]``. Shares are normalised to sum to one.
    It bounds the rate any routing of that mix sustains, not the rate at which requests meet their
    latency bounds (:mod:`psml_bench.serving.capacity`).
    """
    intercept, slope = _service_arrays(intercept_ms, slope_ms)
    BatchingConfig(max_batch=max_batch)  # validates max_batch
    workers = np.array(_replica_counts(replicas, len(intercept)), dtype=float)
    shares = np.asarray(shares, dtype=float)
    if shares.shape != intercept.shape or not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
        raise ConfigError(f"shares must be {len(intercept)} finite non-negative numbers with a positive sum")
    shares = shares / shares.sum()
    used = shares > 0
    per_model = workers[used] * max_batch / (intercept[used] + slope[used] * max_batch)
    return float(np.min(per_model / shares[used]))


def poisson_arrivals(rate_per_ms: float, n: int, rng: np.random.Generator, start: float = 0.0) -> np.ndarray:
    """Arrival times (ms) of the first ``n`` events of a Poisson process of ``rate_per_ms`` after ``start``."""
    if not (math.isfinite(rate_per_ms) and rate_per_ms > 0):
        raise ConfigError(f"rate_per_ms must be a finite number > 0, got {rate_per_ms!r}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n!r}")
    return start + np.cumsum(rng.exponential(1.0 / rate_per_ms, size=n))
