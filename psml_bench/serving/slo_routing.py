"""SLO-aware routing: the ``infaas-slo`` policy, which routes each request on the latency each model is predicted
to give it now, and the simulated workers' view it routes on.

INFaaS (Romero et al., USENIX ATC 2021) picks, per query, the cheapest model variant that meets the
query's accuracy and latency requirements, judging latency from the variant's profiled batch latency
*and its current load*. Here a model's cost is its batch-1 routing latency (the compute one request
takes on the profile), so the cost order is: lowest routing latency first, ties broken by the lower
accuracy (the same order the queue-blind ``infaas`` policy uses). For each request, in arrival order:

1. every model's latency for this request is predicted from that model's queue and batches in
   progress, with the batch-latency fit of the committed profile (:meth:`SimulatedQueues.predict`
   in cells, :class:`~psml_bench.serving.live.LiveQueues` on the live server);
2. among the models that meet the accuracy floor and are predicted to meet the latency bound, the
   first in the cost order serves it;
3. if none is, either the request is rejected at admission (``admission = "reject"``, as Clockwork
   does for requests that cannot meet their SLO: it costs no service time and counts as an SLO miss),
   or INFaaS's fallback serves it: the most accurate model predicted within the bound (ties: the
   faster predicted), else the model predicted fastest (ties: the more accurate).

A defense's ``reroute`` then sees that one request with the models meeting its spec by prediction as
the candidates, and the request joins the queue of the model that serves it before the next request is
routed, so each decision sees the ones before it. One implementation routes the simulated and the live
service: each hands :meth:`InfaasSloPolicy.route_online` a *queues* object with two methods,
``predict(position, bound_ms) -> per-model latency`` (the state a request arriving at that position's
arrival time finds) and ``commit(position, model, bound_ms)`` (it joins that model's queue; ``-1``:
rejected).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import numpy as np

from ..contract.registries import POLICIES
from .policies import InfaasPolicy
from .simulator import BatchingSimulator


class Queues(Protocol):
    """What online routing needs of a service's workers (see the module docstring)."""

    def predict(self, position: int, bound_ms: float) -> Sequence[float]: ...

    def commit(self, position: int, model: int, bound_ms: float) -> None: ...


Reroute = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A defense's ``reroute`` on one request: ([the policy's choice], [[per model, whether it is a candidate]]) ->
[the model that serves it]."""


@POLICIES.register("infaas-slo")
class InfaasSloPolicy(InfaasPolicy):
    """INFaaS's selection on predicted latency: the cheapest model meeting the floor and predicted to meet the bound.

    With no queue state (an idle service, or the *requested* model of a spec) it decides as ``infaas``:
    every model's predicted latency is then its routing latency. See the module docstring.
    """

    queue_aware = True

    def route_online(self, accuracy: np.ndarray, latency_ms: np.ndarray, min_accuracy: np.ndarray,
                     max_latency_ms: np.ndarray, queues: Queues, positions: np.ndarray | None = None,
                     reroute: Reroute | None = None, reject: bool = False) -> np.ndarray:
        """Route requests one at a time in order (``positions``: theirs in what ``queues`` knows, default
        0, 1, ...); return the menu index per request (``-1``: rejected)."""
        positions = np.arange(len(min_accuracy)) if positions is None else np.asarray(positions)
        accuracies = [float(a) for a in accuracy]
        models = range(len(accuracies))
        cost_order = np.lexsort((accuracy, latency_ms)).tolist()
        by_accuracy = np.lexsort((latency_ms, -np.asarray(accuracy))).tolist()
        served = np.empty(len(min_accuracy), dtype=np.int64)
        for i, (floor, bound, position) in enumerate(zip(min_accuracy.tolist(), max_latency_ms.tolist(),
                                                          positions.tolist())):
            predicted = queues.predict(position, bound)
            choice = next((m for m in cost_order if accuracies[m] >= floor and predicted[m] <= bound), -1)
            if choice < 0 and not reject:
                choice = next((m for m in by_accuracy if predicted[m] <= bound), -1)
                if choice < 0:
                    choice = min(models, key=lambda m: (predicted[m], -accuracies[m]))
            if choice >= 0 and reroute is not None:
                candidates = [[accuracies[m] >= floor and predicted[m] <= bound for m in models]]
                choice = int(reroute(np.array([choice]), np.array(candidates))[0])
            queues.commit(position, choice, bound)
            served[i] = choice
        return served


class SimulatedQueues:
    """Online routing's view of a :class:`BatchingSimulator`: request ``position`` arrives at ``arrival_ms[position]``.

    ``before(time_ms)`` runs first on each prediction (a cell's service routes every benign request
    arriving earlier); the simulator is then brought up to the arrival (:meth:`BatchingSimulator.advance`).
    ``models``: the simulator's model index of each menu index the policy routes on (default the same).
    The request joins its model's queue with its deadline, arrival plus the bound it was routed on
    (deadline-aware batching); ``ids[position]`` is its simulator id (``-1``: not queued) and
    ``rejected[position]`` whether the policy rejected it.
    """

    def __init__(self, simulator: BatchingSimulator, arrival_ms: np.ndarray,
                 before: Callable[[float], None] | None = None, models: Sequence[int] | None = None):
        self.simulator, self.arrival, self.before = simulator, np.asarray(arrival_ms, dtype=float).tolist(), before
        self.models = None if models is None else [int(m) for m in models]
        self.ids = np.full(len(self.arrival), -1, dtype=np.int64)
        self.rejected = np.zeros(len(self.arrival), dtype=bool)

    def predict(self, position: int, bound_ms: float) -> list[float]:
        time_ms = self.arrival[position]
        if self.before is not None:
            self.before(time_ms)
        self.simulator.advance(time_ms)
        predicted = self.simulator.predict_latency(time_ms, bound_ms)
        return predicted if self.models is None else [predicted[m] for m in self.models]

    def commit(self, position: int, model: int, bound_ms: float) -> None:
        if model < 0:
            self.rejected[position] = True
            return
        time_ms = self.arrival[position]
        target = model if self.models is None else self.models[model]
        self.ids[position] = self.simulator.add_one(time_ms, target, time_ms + bound_ms)


def simulate_routing(policy, accuracy: np.ndarray, latency_ms: np.ndarray, min_accuracy: np.ndarray,
                     max_latency_ms: np.ndarray, arrival_ms: np.ndarray, simulator: BatchingSimulator,
                     reject: bool = False, pinned: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Route requests (arriving in order at ``arrival_ms``) with no defense on ``simulator`` and serve them all;
    return (menu index per request, ``-1`` where rejected; latency per request, ``inf`` where rejected or dropped).

    A queue-aware policy routes online; a queue-blind one routes every request at once, as the service of a
    cell does with it. ``pinned``: (arrival times, models, latency bounds) of requests that share the workers
    without being routed (an attacker's rows, on the models its own specs select). Every request joins its
    queue with its deadline (arrival plus bound).
    """
    n = len(arrival_ms)
    pinned_times, pinned_models, pinned_bounds = (np.asarray(a) for a in pinned) if pinned is not None else \
        (np.empty(0), np.empty(0, dtype=np.int64), np.empty(0))
    order = np.argsort(pinned_times, kind="stable")
    pinned_times, pinned_models = pinned_times.astype(float)[order], pinned_models.astype(np.int64)[order]
    pinned_deadlines = pinned_times + pinned_bounds.astype(float)[order]
    if getattr(policy, "queue_aware", False):
        added = 0

        def add_pinned(until_ms: float) -> None:
            nonlocal added
            stop = int(np.searchsorted(pinned_times, until_ms, side="left"))
            if stop > added:
                simulator.add(pinned_times[added:stop], pinned_models[added:stop], pinned_deadlines[added:stop])
                added = stop

        queues = SimulatedQueues(simulator, arrival_ms, add_pinned)
        served = policy.route_online(accuracy, latency_ms, min_accuracy, max_latency_ms, queues, reject=reject)
        add_pinned(math.inf)
        ids = queues.ids
    else:
        served = policy.select(accuracy, latency_ms, min_accuracy, max_latency_ms)[0]
        ids = simulator.add(np.concatenate([arrival_ms, pinned_times]),
                            np.concatenate([served, pinned_models]).astype(np.int64),
                            np.concatenate([np.asarray(arrival_ms) + max_latency_ms, pinned_deadlines]))[:n]
    simulator.finish()
    latency = np.full(n, math.inf)
    kept = ids >= 0
    latency[kept] = simulator.completion_of(ids[kept]) - np.asarray(arrival_ms)[kept]
    return served, latency
