"""The live service: the zoo behind the cells' policy and defense, per-key budgets, real dynamic batching.

The real-clock counterpart of :class:`~psml_bench.serving.service.SimulatedService`. Each API key is one
client with its own front end (:class:`~psml_bench.serving.frontend.Frontend`: its own budget and hidden log),
all sharing one defense instance and one defense generator, so the defense sees every client under its opaque id. A
query is checked, admitted and routed (and counted against the key's budget) in one step with no
``await`` in between, so concurrent queries on one key can never overspend it; the admitted rows
then wait in their model's queue. The SLO-aware policy (``infaas-slo``, the default) routes each row with
the cells' implementation (:meth:`~psml_bench.serving.slo_routing.InfaasSloPolicy.route_online`) on these real
queues: :class:`LiveQueues` predicts each model's latency from its queued inputs and its batch in
progress with the batch-latency fit the cells use (:func:`~psml_bench.serving.service.service_times`). One worker
per model takes what is queued, waiting up to
``max_wait_ms`` for a batch of up to ``max_batch`` inputs, and runs the forward pass on a pool
of ``forward_threads`` threads shared by all models; the defense's ``answer`` runs when the rows
come back. A defense that prices answers in client compute (``client_work_ms``, proof of work) has
the service hold each answer for that long, as the simulated service does (no puzzle is sent: the
wait stands for the client's work).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..contract.errors import ConfigError
from .service import service_times
from .frontend import Frontend, opaque_client_ids, released_ms
from ..contract.spec import Spec
from .simulator import BatchingConfig
from ..zoo.model_zoo import Zoo


@dataclass(frozen=True)
class ApiKey:
    """One client's key: its query budget (``None``: unlimited) and whether it is the operator's.

    The operator's own clients (a load generator) are told the accuracy of the model that served
    each row, which is what their goodput needs; no other client sees it.
    """

    budget: int | None = None
    operator: bool = False


def load_keys(path: Path) -> dict[str, ApiKey]:
    """Read a keys file: a JSON object of ``key: budget`` or ``key: {"budget": n, "operator": bool}``.

    Raises:
        ConfigError: unreadable, or a field of the wrong type (the message names file and key).
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the keys file ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: the keys file must be a non-empty JSON object of key: budget")
    keys = {}
    for key, value in raw.items():
        entry = value if isinstance(value, dict) else {"budget": value}
        budget, operator = entry.get("budget"), entry.get("operator", False)
        unknown = set(entry) - {"budget", "operator"}
        if unknown or not (budget is None or (isinstance(budget, int) and not isinstance(budget, bool)
                                              and budget >= 0)) or not isinstance(operator, bool):
            raise ConfigError(f"{path}: key '{key[:8]}...': expected a budget (integer >= 0 or null) or "
                              f"{{\"budget\": ..., \"operator\": true|false}}, got {json.dumps(value)[:80]}")
        keys[str(key)] = ApiKey(budget, operator)
    return keys


def default_keys() -> dict[str, ApiKey]:
    """One fresh operator key with no budget (for a server started without ``--keys``)."""
    return {secrets.token_urlsafe(18): ApiKey(None, operator=True)}


class _Item:
    __slots__ = ("inputs", "future")

    def __init__(self, inputs: torch.Tensor, future: asyncio.Future):
        self.inputs, self.future = inputs, future


class ModelWorker:
    """One model's queue and worker: dynamic batching on the real clock, forward passes on ``executor``'s threads."""

    def __init__(self, frontend: Frontend, index: int, limits: BatchingConfig, executor: ThreadPoolExecutor,
                 metrics: Any = None, service_ms: tuple[float, float] = (0.0, 0.0)):
        self.frontend, self.index, self.limits, self.metrics = frontend, index, limits, metrics
        self.intercept_ms, self.slope_ms = service_ms
        self.busy_until = 0.0  # perf_counter seconds when the batch in progress is predicted to finish
        self.model_id = frontend.menu[index].id
        self._items: deque[_Item] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self._thread = executor

    def submit(self, inputs: torch.Tensor) -> list[asyncio.Future]:
        """Queue ``inputs`` (in pieces of at most ``max_batch``); one future per piece, its (outputs, done time)."""
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(inputs), self.limits.max_batch):
            item = _Item(inputs[start:start + self.limits.max_batch], loop.create_future())
            self._items.append(item)
            self._queued += len(item.inputs)
            futures.append(item.future)
        self._ready.set()
        return futures

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        started = time.perf_counter()
        outputs = self.frontend.forward(batch, np.full(len(batch), self.index, dtype=np.int64))
        return outputs, started, time.perf_counter()

    async def run(self) -> None:
        """Serve the queue until cancelled."""
        loop = asyncio.get_running_loop()
        wait_s = self.limits.max_wait_ms / 1000
        while True:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
            deadline = loop.time() + wait_s
            while self._queued < self.limits.max_batch and loop.time() < deadline:
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            taken = [self._items.popleft()]
            size = len(taken[0].inputs)
            while self._items and size + len(self._items[0].inputs) <= self.limits.max_batch:
                taken.append(self._items.popleft())
                size += len(taken[-1].inputs)
            self._queued -= size
            batch = torch.cat([item.inputs for item in taken]) if len(taken) > 1 else taken[0].inputs
            self.busy_until = time.perf_counter() + self.predict_ms(size) / 1000
            try:
                outputs, started, done = await loop.run_in_executor(self._thread, self._forward, batch)
            except Exception as exc:  # noqa: BLE001 - the requests waiting on it get the error
                for item in taken:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self.busy_until = 0.0
            if self.metrics is not None:
                self.metrics.batch(self.model_id, size, done - started)
            offset = 0
            for item in taken:
                if not item.future.done():
                    item.future.set_result((outputs[offset:offset + len(item.inputs)], done))
                offset += len(item.inputs)


    def predict_ms(self, size: int) -> float:
        """The batch-latency fit's service time of a batch of ``size``."""
        return self.intercept_ms + self.slope_ms * size

    @property
    def queued(self) -> int:
        """Inputs waiting in the queue (not the batch in progress)."""
        return self._queued


class LiveQueues:
    """Online routing's view of the live workers (the queues protocol of :mod:`psml_bench.serving.slo_routing`).

    A row's predicted latency on a model is the rest of its batch in progress, then its queued inputs (and
    the rows of this query already sent there) in batches of ``max_batch``, then the batch holding the row,
    each taking the batch-latency fit's time. All rows of one query arrive together, at ``now``.
    """

    def __init__(self, workers: Sequence[ModelWorker], now: float):
        self.workers, self.now = workers, now
        self.reserved = [0] * len(workers)

    def predict(self, position: int, bound_ms: float) -> list[float]:
        predicted = []
        for worker, reserved in zip(self.workers, self.reserved):
            ahead = worker.queued + reserved
            full, rest = divmod(ahead, worker.limits.max_batch)
            busy = max(worker.busy_until - self.now, 0.0) * 1000
            predicted.append(busy + full * worker.predict_ms(worker.limits.max_batch) + worker.predict_ms(rest + 1))
        return predicted

    def commit(self, position: int, model: int, bound_ms: float) -> None:
        if model >= 0:
            self.reserved[model] += 1


@dataclass(frozen=True)
class Answer:
    """One query's answers: probabilities (NaN where refused), refusals, observed latency per row."""

    probabilities: torch.Tensor
    refused: np.ndarray
    latency_ms: np.ndarray
    served_accuracy: np.ndarray


class LiveService:
    """The zoo served to API-key clients on the real clock (see the module docstring).

    Args:
        zoo: the built zoo (routed on its profile, as in cells).
        defense: the defense instance every client shares.
        keys: API key -> its budget.
        limits: the workers' batching (the simulated service's :class:`BatchingConfig`; its
            ``timeout_ms`` must be ``None``: the live queues drop nothing).
        forward_threads: threads running forward passes, shared by every model (more than the
            cores only adds contention).
        seed: seeds the defense's generator and the clients' opaque ids.
        policy: the routing policy.
        metrics: where batches and answers are counted (``None``: nowhere).

    Raises:
        ConfigError: ``forward_threads`` below 1, or a batching timeout.
    """

    def __init__(self, zoo: Zoo, *, defense, keys: dict[str, ApiKey],
                 limits: BatchingConfig = BatchingConfig(max_batch=256, max_wait_ms=2.0), forward_threads: int = 1,
                 seed: int = 0, policy: str = "infaas-slo", metrics: Any = None):
        if isinstance(forward_threads, bool) or not isinstance(forward_threads, int) or forward_threads < 1:
            raise ConfigError(f"forward_threads must be an integer >= 1, got {forward_threads!r}")
        if limits.timeout_ms is not None:
            raise ConfigError("the live service drops no queued request: its batching has no timeout")
        self.zoo, self.defense, self.keys, self.limits, self.metrics = zoo, defense, keys, limits, metrics
        self.forward_threads = forward_threads
        self.rng = np.random.default_rng([seed, 2])
        self.client_ids = {key: int(i) for key, i in zip(keys, opaque_client_ids(seed, len(keys)))}
        self.frontends = {key: Frontend(zoo, defense=defense, rng=self.rng, budget=entry.budget, policy=policy)
                          for key, entry in keys.items()}
        # the front end of no key: the menu and spec range clients see, the workers' forward passes
        self.frontend = Frontend(zoo, defense=defense, rng=self.rng, policy=policy)
        self.workers: list[ModelWorker] = []
        self._tasks: list[asyncio.Task] = []

    def describe(self) -> dict[str, Any]:
        """What a client may know of the service (the :class:`~psml_bench.Knowledge` it can build)."""
        spec_range = self.frontend.spec_range
        return {"zoo": self.zoo.name, "input_shape": list(self.zoo.input_shape), "num_classes": self.zoo.num_classes,
                "spec_range": {"accuracy": list(spec_range.accuracy), "latency_ms": list(spec_range.latency_ms)},
                "latency_visible": True, "max_batch": self.limits.max_batch, "max_wait_ms": self.limits.max_wait_ms}

    def budget(self, key: str) -> dict[str, int | bool | None]:
        """The key's budget, queries used and remaining, and whether it is the operator's."""
        frontend = self.frontends[key]
        return {"budget": frontend.budget, "used": frontend.used, "remaining": frontend.remaining,
                "operator": self.keys[key].operator}

    async def start(self) -> None:
        """Load every model and start one worker per model."""
        for entry in self.frontend.menu:
            self.zoo.model(entry.id)
        self._executor = ThreadPoolExecutor(max_workers=self.forward_threads, thread_name_prefix="psml-forward")
        intercept, slope = service_times(self.zoo)
        self.workers = [ModelWorker(self.frontend, i, self.limits, self._executor, self.metrics, (a, b))
                        for i, (a, b) in enumerate(zip(intercept.tolist(), slope.tolist()))]
        self._tasks = [asyncio.create_task(worker.run()) for worker in self.workers]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def query(self, key: str, inputs: Any, spec: Spec | Sequence[Spec], purpose: str = "extract") -> Answer:
        """Answer one client's query.

        Raises:
            InvalidQueryError: malformed inputs or a spec outside the advertised ranges.
            BudgetExhausted: the query would go past the key's budget; nothing of it was served.
        """
        arrival = time.perf_counter()
        frontend = self.frontends[key]
        # check, admit, route and count in one step: no await until the rows are queued
        requests = frontend.check(inputs, spec, self.client_ids[key], arrival * 1000)
        inputs, n = requests.inputs, len(requests)
        queues = LiveQueues(self.workers, arrival) if frontend.policy.queue_aware else None
        served = frontend.plan(requests, self.rng, queues)
        frontend.record(served, purpose)
        rows = np.flatnonzero(~served.refused)
        latency = np.full(n, np.nan)
        pending = []
        for index in np.unique(served.served[rows]):
            positions = np.flatnonzero(served.served[rows] == index)
            futures = self.workers[index].submit(inputs[torch.from_numpy(rows[positions])])
            pending.append((positions, futures))
        produced = torch.empty(len(rows), self.zoo.num_classes)
        for positions, futures in pending:
            results = await asyncio.gather(*futures)
            produced[torch.from_numpy(positions)] = torch.cat([outputs for outputs, _ in results])
            latency[rows[positions]] = (max(done for _, done in results) - arrival) * 1000
        frontend.fill(requests, served, produced, self.rng)
        if served.work_ms.any():  # the client's work on each answer, one answer at a time, from its arrival
            released = released_ms(requests.clients, arrival * 1000 + latency, served.work_ms, arrival * 1000)
            await asyncio.sleep(max(0.0, float(np.nanmax(released)) / 1000 - time.perf_counter()))
            latency = released - arrival * 1000
        accuracy = np.array([e.accuracy for e in frontend.menu])
        served_accuracy = np.where(served.refused, np.nan, accuracy[np.maximum(served.served, 0)])
        if self.metrics is not None:
            self.metrics.answered(n - len(rows), len(rows))
        return Answer(served.answers, served.refused.copy(), latency, served_accuracy)
