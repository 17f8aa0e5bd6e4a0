"""A cell's multi-tenant service on a simulated clock: benign clients, the attacker, model workers under load.

Protocol version 4 (docs/protocol.md, section 4). :class:`SimulatedService`, the simulated-clock counterpart of
:class:`~psml_bench.serving.live.LiveService`, hosts the zoo behind two front ends
(:class:`~psml_bench.serving.frontend.Frontend`: policy and defense), the attacker's and the benign clients', which
share one defense instance, and ``replicas`` workers per model sharing a FIFO queue with deadline-aware dynamic
batching (:mod:`psml_bench.serving.simulator`). Its clients are the attacker and ``benign_clients`` benign clients,
each with an opaque id shuffled per cell. Benign requests
arrive as a Poisson process of total rate ``load`` times the service's capacity at the SLO
(:mod:`psml_bench.serving.capacity`), each from a client drawn uniformly, with an input from the attacker's pool
split and a spec drawn like the benign workload. The attacker is a closed-loop client: each
``Target.query`` call arrives at once, its rows reach the queues at its pace (``attacker_rate`` times one
benign client's rate), and the next call arrives no earlier than the previous one's answers. A defense
that prices answers in client compute (``client_work_ms``) delays each answer until its client, working
on one answer at a time, has done that work (:func:`~psml_bench.serving.frontend.released_ms`).

Every request passes the defense in arrival order (benign requests that arrived before an attacker
call, or before a batch dispatch it waits on, first). ``infaas-slo`` routes each request on arrival on
the queues' state (:mod:`psml_bench.serving.slo_routing`); ``infaas`` routes a batch at once. No host clock.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .capacity import CapacityCache, batch_service_times, capacity_problem
from ..common.device import intra_op_threads
from ..contract.errors import ConfigError
from ..zoo.profiling import reference_profile_path
from ..common.metrics import benign_specs
from ..contract.requests import Requests
from .frontend import Frontend, Served, opaque_client_ids, released_ms
from ..contract.spec import Spec
from .config import ServiceConfig
from .simulator import BatchingSimulator
from .slo_routing import SimulatedQueues, simulate_routing
from ..zoo.model_zoo import Zoo

BENIGN_CHUNK = 1024
CAPACITY_FILE = "capacity_at_slo.json"
POOL_ANSWERS = "pool_predictions.safetensors"


def service_times(zoo: Zoo) -> tuple[np.ndarray, np.ndarray]:
    """Per menu model, the (intercept, slope) in ms of its batch service time ``intercept + slope * batch``.

    The level is the routing latency (a lone request takes exactly what the policy routes on);
    the shape, i.e. what a larger batch costs, is the per-batch linear fit of the routing profile,
    else of the zoo's committed CPU profile (``profiles/<zoo>-cpu.json``), with a negative
    intercept clipped to 0. A model without any fit costs its routing latency per request
    (no batching gain).
    """
    return batch_service_times(zoo.menu, (zoo.profile_path, reference_profile_path(f"{zoo.name}-cpu.json")))


def slo_capacity(zoo: Zoo, policy: str, config: ServiceConfig, capacities: CapacityCache | None = None) -> float:
    """Requests per ms: the undefended service's capacity at the SLO under ``policy`` and ``config`` (its workers,
    batching, admission, target; :mod:`psml_bench.serving.capacity`), from ``capacities`` (default: the zoo's file).

    Raises:
        ConfigError: ``replicas`` names a model the zoo does not serve, or no load meets the SLO target."""
    frontend = Frontend(zoo, defense=None, rng=np.random.default_rng(0), policy=policy)
    problem = capacity_problem(frontend, *service_times(zoo), config.replica_counts([e.id for e in frontend.menu]),
                               config.batching(frontend.spec_range.latency_ms[1]), config.admission == "reject",
                               config.slo_target)
    return (capacities if capacities is not None else CapacityCache(zoo.directory / CAPACITY_FILE)).get(problem)


class PoolAnswers:
    """Every zoo model's answers on the attacker's pool split, computed once per zoo and kept on disk.

    Benign requests are answered from here. They are the outputs of a forward pass over the pool
    in batches of ``FORWARD_BATCH`` on one thread, bit-identical to a live pass over the same
    batches; a live pass over other batch compositions differs by float rounding only (at most
    3.2e-7 on the fmnist-compact zoo, no argmax changed; ``tests/test_service.py``), so the attacker's own
    queries keep their live forward pass, exactly as without benign traffic.

    On a GPU they are computed there, once per owner (:class:`PoolAnswersCache`), and kept in memory only: a
    GPU's rounding is its own, so the file holds the CPU's answers alone.
    """

    def __init__(self, zoo: Zoo, device: torch.device | str = "cpu"):
        device = torch.device(device)
        path = zoo.directory / POOL_ANSWERS
        ids = [e.id for e in zoo.menu]
        stored = load_file(str(path)) if path.is_file() and device.type == "cpu" else {}
        if set(stored) != set(ids):
            stored = {model_id: self.compute(zoo, model_id, device) for model_id in ids}
            if device.type == "cpu":
                _save_atomically(path, stored)
        self.probabilities = stored

    @staticmethod
    @torch.no_grad()
    def compute(zoo: Zoo, model_id: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """``model_id``'s answers on the whole pool, as a cell's one thread computes them on ``device``."""
        frontend = Frontend(zoo, defense=None, rng=np.random.default_rng(0), model_ids=[model_id], device=device)
        pool = zoo.splits["attacker_x"]
        with intra_op_threads(1):
            return frontend.forward(pool, np.zeros(len(pool), dtype=np.int64))

    @staticmethod
    def of(zoo: Zoo, device: torch.device | str = "cpu", cache: PoolAnswersCache | None = None) -> PoolAnswers:
        """The zoo's pool answers on ``device``, loaded or computed once per ``cache`` (default: the process's,
        :data:`PROCESS_POOL_ANSWERS`)."""
        return (PROCESS_POOL_ANSWERS if cache is None else cache).get(zoo, device)


class PoolAnswersCache:
    """The pool answers an owner (a run, a process) has opened, by (zoo directory, device kind).

    A memo of a pure function: the answers depend only on the zoo's weights and the device's kind, so sharing an
    owner changes no number, it only spares loading (on a GPU, computing) them again.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], PoolAnswers] = {}

    def get(self, zoo: Zoo, device: torch.device | str = "cpu") -> PoolAnswers:
        """The zoo's pool answers on ``device``, opened on this owner's first request for them."""
        key = (str(zoo.directory), torch.device(device).type)
        if key not in self._open:
            self._open[key] = PoolAnswers(zoo, device)
        return self._open[key]


PROCESS_POOL_ANSWERS = PoolAnswersCache()
"""The owner of callers that pass none (:meth:`PoolAnswers.of`, a :class:`SimulatedService` without
``pool_answers``), kept for the process. A run's cells do not use it: each
:class:`~psml_bench.bench.context.RunContext` owns its own, which :func:`~psml_bench.bench.cell.run_cell` passes to
the cell's service. Callers that pass none: the runner's
precompute of the answers file before its workers start (``run_grid``), the serving curves' benign-only services
(:mod:`psml_bench.bench.serving_curves`), benchmarks and tests. A memo of a pure function, so which owner opened
the answers changes no number."""


def _save_atomically(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` to ``path`` through a rename (two workers may write it at once); keep quiet
    about a read-only zoo cache (the caller keeps them in memory)."""
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass


class _DistinctInputs:
    """Each benign client's inputs: distinct images from its own share of the pool, like a user's uploads.

    The pool's rows are shuffled once per cell (seeded) and dealt to the clients round-robin, so the
    shares are disjoint and each holds ``pool_size // clients`` rows or one more. A client sends its
    share in that shuffled order, so it repeats no input until it has sent all of its share; only then
    does it start the share again in a fresh order (the documented policy for a stream longer than
    the share; see docs/protocol.md, section 4).
    """

    def __init__(self, clients: int, pool_size: int, seed: int):
        order = np.random.default_rng([seed, 7]).permutation(pool_size)
        self.shares = [order[c::clients] for c in range(clients)]
        self.sent = np.zeros(clients, dtype=np.int64)
        self.seed = seed
        self._rounds: dict[tuple[int, int], np.ndarray] = {}

    def _row(self, client: int, count: int) -> int:
        share = self.shares[client]
        round_, offset = divmod(count, len(share))
        if round_ == 0:
            return int(share[offset])
        if (client, round_) not in self._rounds:
            self._rounds[(client, round_)] = np.random.default_rng([self.seed, 7, client, round_]).permutation(share)
        return int(self._rounds[(client, round_)][offset])

    def next_rows(self, which: np.ndarray) -> np.ndarray:
        """The pool rows of the next requests, the i-th from client index ``which[i]``."""
        rows = np.empty(len(which), dtype=np.int64)
        for i, client in enumerate(which.tolist()):
            rows[i] = self._row(client, int(self.sent[client]))
            self.sent[client] += 1
        return rows


class _BenignStream:
    """The benign requests of a cell, generated lazily in fixed chunks (so the stream does not depend
    on how far it is read)."""

    def __init__(self, rate_per_ms: float, clients: np.ndarray, pool_size: int, frontend: Frontend, seed: int):
        self.rate, self.clients, self.pool_size, self.frontend = rate_per_ms, clients, pool_size, frontend
        self._arrivals = np.random.default_rng([seed, 6])
        self._specs = np.random.default_rng([seed, 3])
        self.times, self.client, self.pool_row = np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        self.min_accuracy, self.max_latency = np.empty(0), np.empty(0)
        self.routed = 0
        self._inputs = _DistinctInputs(len(clients), pool_size, seed)

    def _extend(self) -> None:
        last = self.times[-1] if len(self.times) else 0.0
        gaps = self._arrivals.exponential(1.0 / self.rate, BENIGN_CHUNK)
        which = self._arrivals.integers(len(self.clients), size=BENIGN_CHUNK)
        client = self.clients[which]
        rows = self._inputs.next_rows(which)
        specs = benign_specs(self.frontend._accuracy, self.frontend._latency, self.frontend.spec_range,
                             BENIGN_CHUNK, self._specs)
        self.times = np.concatenate([self.times, last + np.cumsum(gaps)])
        self.client = np.concatenate([self.client, client])
        self.pool_row = np.concatenate([self.pool_row, rows])
        self.min_accuracy = np.concatenate([self.min_accuracy, [s.min_accuracy for s in specs]])
        self.max_latency = np.concatenate([self.max_latency, [s.max_latency_ms for s in specs]])

    def time_of(self, index: int) -> float:
        """Arrival time of the stream's request ``index`` (0-based), generated if need be."""
        while len(self.times) <= index:
            self._extend()
        return float(self.times[index])

    def next_time(self) -> float:
        """Arrival time of the next request not yet routed."""
        while self.routed >= len(self.times):
            self._extend()
        return float(self.times[self.routed])

    def take_until(self, time_ms: float) -> slice:
        """The requests arriving at or before ``time_ms`` not yet routed (marked routed)."""
        while self.next_time() <= time_ms and self.times[-1] <= time_ms:
            self._extend()
        end = int(np.searchsorted(self.times, time_ms, side="right"))
        taken = slice(self.routed, max(end, self.routed))
        self.routed = taken.stop
        return taken


class SimulatedService:
    """The attacker's and the benign clients' service of one cell on the simulated clock (see the module docstring).

    The attacker's front end (:attr:`attacker_frontend`) counts its budget and keeps its hidden log; the benign
    clients' (:attr:`benign_frontend`) routes and answers the benign stream. Both call the same defense instance.

    Args:
        zoo: the built zoo.
        defense: the cell's defense instance (one for every client).
        config: load, clients and batching.
        seed: the cell's seed.
        budget: the attacker's query budget (counted at its front end).
        policy: the routing policy.
        benign_queries: the fewest benign requests the cell sends; the benign stream also runs at
            least as long as the attacker does.
        victim_id: for an attack with ``access = "victim"``, the one model its queries reach (it
            still shares that model's workers with the benign clients).
        device: where the models' forward passes run.
        capacities: where the capacity at the SLO is looked up (:func:`slo_capacity`; it may raise ConfigError).
        attacker_identities: the opaque client ids the attacker's rows are spread over, round-robin in the
            order it sends them (a Sybil attacker; the budget still counts them all together).
        pool_answers: the owner of the zoos' pool answers (default: the process's, :data:`PROCESS_POOL_ANSWERS`).
    """

    def __init__(self, zoo: Zoo, *, defense, config: ServiceConfig, seed: int, budget: int,
                 policy: str = "infaas-slo", benign_queries: int = 1000, victim_id: str | None = None,
                 device: torch.device | str = "cpu", capacities: CapacityCache | None = None,
                 attacker_identities: int = 1, pool_answers: PoolAnswersCache | None = None):
        self.zoo, self.config, self.benign_queries = zoo, config, benign_queries
        reject = config.admission == "reject"
        self.benign_frontend = Frontend(zoo, defense=defense, rng=np.random.default_rng([seed, 4]), policy=policy,
                                        device=device, reject=reject)
        self.attacker_frontend = Frontend(zoo, defense=defense, rng=np.random.default_rng([seed, 2]), budget=budget,
                                          model_ids=[victim_id] if victim_id else None, policy=policy, device=device,
                                          reject=reject)
        self.defense = defense
        self.online = self.benign_frontend.policy.queue_aware
        benign_menu = [e.id for e in self.benign_frontend.menu]
        self.menu_index = np.array([benign_menu.index(e.id) for e in self.attacker_frontend.menu])
        intercept, slope = service_times(zoo)
        self.intercept, self.slope = intercept, slope
        self.batching = config.batching(self.benign_frontend.spec_range.latency_ms[1])
        self.replicas = config.replica_counts([e.id for e in self.benign_frontend.menu])
        self.capacity_per_ms = slo_capacity(zoo, policy, config, capacities)
        rate = config.load * self.capacity_per_ms
        if isinstance(attacker_identities, bool) or not isinstance(attacker_identities, int) or attacker_identities < 1:
            raise ConfigError(f"attacker_identities must be an integer >= 1, got {attacker_identities!r}")
        ids = opaque_client_ids(seed, config.benign_clients + attacker_identities)
        self.attacker_id, self.benign_ids = int(ids[0]), ids[1:config.benign_clients + 1]
        # a Sybil attacker's other ids follow the benign ones: with one identity, every id is as before
        self.attacker_ids = np.concatenate([ids[:1], ids[config.benign_clients + 1:]])
        self._attacker_rows = 0
        self.attacker_work_ms = 0.0  # the client-side compute the attacker's answers cost it (proof of work)
        self.attacker_detected_at: int | None = None  # the attacker's requests, all ids, when one was first detected
        self.answers = PoolAnswers.of(zoo, device, pool_answers)
        self.benign = _BenignStream(rate, self.benign_ids, len(zoo.splits["attacker_x"]), self.benign_frontend,
                                    seed)
        self.attacker_pace_ms = config.benign_clients / (config.attacker_rate * rate)
        self.simulator = BatchingSimulator(intercept, slope, self.batching, self.replicas)
        self.clock = 0.0
        self._benign: list[tuple[slice, Served, np.ndarray, np.ndarray]] = []  # (rows, served, sim ids, rejected)
        self._attacker_requests: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # arrival, requested, bound
        self.detections: dict[int, int] = {}  # client -> its requests sent when first detected
        self._sent: dict[int, int] = {}
        self.last_refused = torch.zeros(0, dtype=torch.bool)
        self.last_latency_ms: torch.Tensor | None = None

    # --- the attacker's side ----------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self.attacker_frontend.used

    @property
    def remaining(self) -> int | None:
        return self.attacker_frontend.remaining

    @property
    def log(self):
        return self.attacker_frontend.log

    @property
    def spec_range(self):
        return self.attacker_frontend.spec_range

    @property
    def menu(self):
        return self.attacker_frontend.menu

    def pool_answers(self, pool_rows: np.ndarray, served: np.ndarray) -> torch.Tensor:
        """The answers of the models at menu indices ``served`` to the pool inputs at ``pool_rows``."""
        menu = self.benign_frontend.menu
        result = torch.empty(len(served), self.zoo.num_classes)
        for index in np.unique(served):
            chosen = np.flatnonzero(served == index)
            result[torch.from_numpy(chosen)] = self.answers.probabilities[menu[index].id][
                torch.from_numpy(pool_rows[chosen])]
        return result

    def query(self, inputs, spec: Spec | Sequence[Spec], purpose: str = "extract") -> torch.Tensor:
        """One attacker call: arrives now on the clock, is served, and moves the clock past its answers."""
        now = self.clock
        requests = self.attacker_frontend.check(inputs, spec, self.attacker_id, now)
        if len(self.attacker_ids) > 1:  # round-robin over the attacker's identities, across calls
            turn = (self._attacker_rows + np.arange(len(requests))) % len(self.attacker_ids)
            requests = replace(requests, clients=self.attacker_ids[turn])
        self._attacker_rows += len(requests)
        n = len(requests)
        self._route_benign(now)
        # the call's rows reach the model queues at the attacker's pace, from now on; a queue-aware policy
        # routes each when it arrives, after the benign requests arriving before it
        arrivals = now + np.arange(n) * self.attacker_pace_ms
        queues = SimulatedQueues(self.simulator, arrivals, self._route_benign, self.menu_index) if self.online else None
        # a live forward pass, as alone
        served = self.attacker_frontend.serve(requests, self.attacker_frontend.rng, queues=queues)
        self._note_detections(requests)
        answered = np.flatnonzero(~served.refused)
        self._attacker_requests.append((arrivals, self.menu_index[served.requested], requests.max_latency_ms))
        latency = torch.full((n,), float("nan"), dtype=torch.float64)
        done = now
        if len(answered):
            sim_ids = queues.ids[answered] if queues is not None else self.simulator.add(
                arrivals[answered], self.menu_index[served.served[answered]],
                arrivals[answered] + requests.max_latency_ms[answered])
            completion = self._complete(sim_ids)
            finished = np.isfinite(completion)
            if served.work_ms[answered].any():  # the defense prices answers in client compute (proof of work)
                completion = released_ms(requests.clients[answered], completion, served.work_ms[answered], now)
                self.attacker_work_ms += float(served.work_ms[answered][finished].sum())
            latency[torch.from_numpy(answered[finished])] = torch.from_numpy(
                (completion - arrivals[answered])[finished])
            # the call is over when its last row came back or was dropped (a drop is decided when
            # its worker would have dispatched it)
            decided = max(self.simulator.last_dispatch_ms(int(m)) for m in np.unique(self.simulator.model_of(sim_ids)))
            done = max(float(completion[finished].max()) if finished.any() else now,
                       float(np.nextafter(decided, math.inf)))  # strictly after: a batch at t takes arrivals at t
            if not finished.all():  # dropped by an overloaded worker: answered as refused
                lost = answered[~finished]
                refused, served_ids, answers = served.refused.copy(), served.served.copy(), served.answers.clone()
                refused[lost], served_ids[lost] = True, -1
                answers[torch.from_numpy(lost)] = float("nan")
                served = replace(served, refused=refused, served=served_ids, answers=answers)
        self.attacker_frontend.record(served, purpose)
        self.clock = max(now + n * self.attacker_pace_ms, done)
        self.last_refused = torch.from_numpy(served.refused.copy())
        self.last_latency_ms = latency if self.config.latency_visible else None
        return served.answers

    def _complete(self, ids: np.ndarray) -> np.ndarray:
        """Step the workers holding ``ids`` batch by batch, in time order, routing benign arrivals first."""
        simulator = self.simulator
        models = simulator.model_of(ids)
        while True:
            completion = simulator.completion_of(ids)
            open_models = sorted({int(m) for m in models[np.isnan(completion)]})
            if not open_models:
                return completion
            model = min(open_models, key=simulator.next_dispatch_ms)
            dispatch = simulator.next_dispatch_ms(model)
            if self.benign.next_time() <= dispatch:
                self._route_benign(dispatch)
                continue
            simulator.dispatch(model)

    # --- the benign side ----------------------------------------------------------------------------

    def _route_benign(self, until_ms: float) -> None:
        """Route every benign request arriving at or before ``until_ms`` (in arrival order) and queue it."""
        if self.benign.next_time() > until_ms:
            return
        taken = self.benign.take_until(until_ms)
        stream = self.benign
        rows = stream.pool_row[taken]
        requests = Requests(stream.client[taken], self.zoo.splits["attacker_x"][torch.from_numpy(rows)],
                            stream.min_accuracy[taken], stream.max_latency[taken], stream.times[taken])
        queues = SimulatedQueues(self.simulator, requests.arrival_ms) if self.online else None
        served = self.benign_frontend.serve(requests, self.benign_frontend.rng,
                                            lambda positions, models: self.pool_answers(rows[positions], models),
                                            queues)
        self._note_detections(requests)
        if queues is not None:
            sim_ids, rejected = queues.ids, queues.rejected
        else:
            answered = np.flatnonzero(~served.refused)
            sim_ids, rejected = np.full(len(rows), -1, dtype=np.int64), np.zeros(len(rows), dtype=bool)
            sim_ids[answered] = self.simulator.add(requests.arrival_ms[answered], served.served[answered],
                                                   requests.arrival_ms[answered] + requests.max_latency_ms[answered])
        self._benign.append((taken, served, sim_ids, rejected))

    def _note_detections(self, requests: Requests) -> None:
        clients, counts = np.unique(requests.clients, return_counts=True)
        for client, count in zip(clients.tolist(), counts.tolist()):
            self._sent[client] = self._sent.get(client, 0) + count
        for client in self.defense.detected:
            if client not in self.detections:
                self.detections[client] = self._sent.get(client, 0)
                if self.attacker_detected_at is None and client in self.attacker_ids:
                    self.attacker_detected_at = sum(self._sent.get(int(c), 0) for c in self.attacker_ids)

    def finish(self) -> None:
        """Send the rest of the benign stream (at least ``benign_queries`` requests, and until the
        attacker's last answer), then serve everything still queued."""
        self._route_benign(max(self.clock, self.benign.time_of(self.benign_queries - 1)))
        self.simulator.finish()

    # --- metrics -----------------------------------------------------------------------------------

    def benign_outcome(self) -> dict[str, np.ndarray]:
        """Per benign request, after :meth:`finish`: what happened to it (harness only)."""
        stream = self.benign
        taken = [t for t, _, _, _ in self._benign]
        index = np.concatenate([np.arange(t.start, t.stop) for t in taken]) if taken else np.empty(0, dtype=np.int64)
        served = [s for _, s, _, _ in self._benign]
        sim_ids = np.concatenate([i for _, _, i, _ in self._benign]) if taken else np.empty(0, dtype=np.int64)
        rejected = np.concatenate([r for _, _, _, r in self._benign]) if taken else np.empty(0, dtype=bool)
        completion = np.full(len(sim_ids), np.nan)
        completion[sim_ids >= 0] = self.simulator.completion_of(sim_ids[sim_ids >= 0])
        completion[rejected] = math.inf  # rejected at admission: an SLO miss, counted with the dropped
        work = np.concatenate([s.work_ms for s in served]) if served else np.empty(0)
        completion = released_ms(stream.client[index], completion, work)  # unchanged where the defense prices nothing
        refused = np.concatenate([s.refused for s in served]) if served else np.empty(0, dtype=bool)
        return {
            "client": stream.client[index], "pool_row": stream.pool_row[index], "arrival": stream.times[index],
            "min_accuracy": stream.min_accuracy[index], "max_latency": stream.max_latency[index],
            "refused": refused & ~rejected,
            "served": np.concatenate([s.served for s in served]) if served else np.empty(0, dtype=np.int64),
            "requested": np.concatenate([s.requested for s in served]) if served else np.empty(0, dtype=np.int64),
            "meets_spec": np.concatenate([s.meets_spec for s in served]) if served else np.empty(0, dtype=bool),
            "answers": torch.cat([s.answers for s in served]) if served else torch.empty(0, self.zoo.num_classes),
            "raw": torch.cat([s.raw for s in served]) if served else torch.empty(0, self.zoo.num_classes),
            "latency": completion - stream.times[index],
        }

    def undefended_run(self, outcome: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per benign request, (the model that serves it, -1 if rejected; its latency) had the same benign
        requests, at the same times, been routed by the same policy with no defense, beside the attacker's
        rows on the models their own specs select."""
        pinned = tuple(np.concatenate([r[i] for r in self._attacker_requests]) if self._attacker_requests
                       else np.empty(0) for i in range(3))
        simulator = BatchingSimulator(self.intercept, self.slope, self.batching, self.replicas)
        frontend = self.benign_frontend
        return simulate_routing(frontend.policy, frontend._accuracy, frontend._latency, outcome["min_accuracy"],
                                outcome["max_latency"], outcome["arrival"], simulator, frontend.reject, pinned)
