"""The serving front end's request path: specs, routing policies, the defense hooks, the attacker's view.

One input is one request is one query. A batch of requests (a :class:`Requests` view: client
ids, inputs, specs, arrival times) passes the defense's ``admit`` (refusals, blocked clients),
then each admitted request's spec passes ``perturb_spec``, the policy picks a model per request,
``reroute`` may move it, requests are grouped by model for a batched forward pass, and the
defense's ``answer`` (by default its ``postprocess``) shapes the answers. The front end logs, hidden
from attacks, which model served each query; the attacker's budget is counted per input here.
When a request's answer is computed is the business of the service around the front end: the simulated
clock of a cell (:class:`~psml_bench.serving.service.SimulatedService`) or the real one
(:class:`~psml_bench.serving.live.LiveService`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..contract.checks import client_work, defense_answers, unit_interval
from ..contract.errors import BudgetExhausted, DefenseError, InvalidQueryError
from ..contract.registries import DEFENSES, POLICIES
from ..contract.requests import Requests
from ..contract.spec import Spec, SpecRange
from ..contract.target import Target
from ..zoo.model_zoo import MenuEntry, Zoo
from . import policies  # noqa: F401  (registers the built-in policies)
from .eval_guard import EvalInputGuard

FORWARD_BATCH = 1024


SPEC_SLACK = 1e-9
"""How far, relative to the bounds' size, a spec may pass an advertised bound and still count as on it: the
float rounding of a bound an attacker computed (``high + 1.0 * (26.45 - high)`` is 26.450000000000003)."""


def _outside(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    slack = SPEC_SLACK * max(1.0, abs(lo), abs(hi))
    return ~np.isfinite(values) | (values < lo - slack) | (values > hi + slack)


def _spec_arrays(spec: Spec | Sequence[Spec], n: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(spec, Spec):
        return np.full(n, float(spec.min_accuracy)), np.full(n, float(spec.max_latency_ms))
    specs = list(spec)
    if len(specs) != n or not all(isinstance(s, Spec) for s in specs):
        raise InvalidQueryError(f"spec must be one Spec or a sequence of {n} Specs (one per input)")
    return (np.array([s.min_accuracy for s in specs], dtype=float),
            np.array([s.max_latency_ms for s in specs], dtype=float))


def opaque_client_ids(seed: int, count: int) -> np.ndarray:
    """``count`` distinct opaque client ids drawn from ``seed`` (int64): nothing in an id says who a client is."""
    return np.random.default_rng([seed, 7]).choice(2**31 - 1, size=count, replace=False).astype(np.int64)


@dataclass(frozen=True)
class Served:
    """What the front end did with a batch of requests (harness only).

    Attributes:
        answers: the answers, one row per request; a refused request's row is NaN.
        raw: the served models' own outputs (before the defense's ``answer``); NaN where refused.
        refused: per request, whether it was refused (by ``admit``, its client blocked, or rejected by the policy).
        served: menu index of the model that answered (-1 where refused).
        requested: menu index of the model the client's own spec selects with no defense.
        meets_spec: whether the serving model meets the client's spec by its profile latency.
        work_ms: per request, the client-side compute its answer costs (the defense's ``client_work_ms``; 0
            where refused or where the defense prices nothing).
    """

    answers: torch.Tensor
    raw: torch.Tensor
    refused: np.ndarray
    served: np.ndarray
    requested: np.ndarray
    meets_spec: np.ndarray
    work_ms: np.ndarray


@dataclass
class QueryLog:
    """The front end's hidden record: per query, the model that served it and why it was sent."""

    served: list[np.ndarray] = field(default_factory=list)
    requested: list[np.ndarray] = field(default_factory=list)
    meets_spec: list[np.ndarray] = field(default_factory=list)
    purposes: list[tuple[str, int]] = field(default_factory=list)

    def _select(self, per_batch: list[np.ndarray], purpose: str | None) -> np.ndarray:
        chosen = [ids for ids, (p, _) in zip(per_batch, self.purposes) if purpose is None or p == purpose]
        return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)

    def served_ids(self, purpose: str | None = None) -> np.ndarray:
        """Per query (of ``purpose``, default all), the model that served it."""
        return self._select(self.served, purpose)

    def requested_ids(self, purpose: str | None = None) -> np.ndarray:
        """Per query, the model the client's own spec selects with no defense (what it asked for)."""
        return self._select(self.requested, purpose)

    def count(self, purpose: str | None = None) -> int:
        return sum(n for p, n in self.purposes if purpose is None or p == purpose)


class Frontend:
    """The serving front end: a zoo behind a policy and a defense, answering per-input queries within a budget
    and keeping the hidden query log (:class:`QueryLog`).

    Args:
        zoo: the built zoo; ``model_ids``: the models this service offers (default: the whole zoo).
        policy: registered policy name; ``reject``: a queue-aware policy rejects a request it predicts
            no model meeting its floor serves within its bound (admission control), instead of its fallback.
        defense: the defense whose hooks run around routing; ``rng``: its randomness.
        budget: the number of queries the client may send (``None``: unlimited).
        device: where the models' forward passes run (answers come back on the CPU).
    """

    def __init__(self, zoo: Zoo, *, defense, rng: np.random.Generator, model_ids: Sequence[str] | None = None,
                 policy: str = "infaas", budget: int | None = None, device: torch.device | str = "cpu",
                 reject: bool = False):
        self.zoo, self.device = zoo, torch.device(device)
        self.menu: tuple[MenuEntry, ...] = tuple(
            e for e in zoo.menu if model_ids is None or e.id in set(model_ids))
        self.spec_range = SpecRange(zoo.accuracy_range, zoo.latency_range_ms)
        self.policy = POLICIES.get(policy)()
        self.reject, self.defense, self.budget, self.rng = reject, defense, budget, rng
        self.log = QueryLog()
        self.eval_guard: EvalInputGuard | None = None
        """Counts the client's queries that repeat an input the cell is scored on (set by the cell)."""
        self._accuracy = np.array([e.accuracy for e in self.menu])
        self._latency = np.array([e.latency_ms for e in self.menu])
        self.last_refused = torch.zeros(0, dtype=torch.bool)
        self.last_latency_ms: torch.Tensor | None = None

    @property
    def used(self) -> int:
        return self.log.count()

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.used

    def menu_ids(self, indices: np.ndarray) -> list[str]:
        return [self.menu[i].id for i in indices]

    def _check_inputs(self, inputs) -> torch.Tensor:
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if not isinstance(inputs, torch.Tensor):
            raise InvalidQueryError(f"inputs must be a torch.Tensor or numpy array, got {type(inputs).__name__}")
        shape = tuple(self.zoo.input_shape)
        if inputs.ndim != len(shape) + 1 or tuple(inputs.shape[1:]) != shape or inputs.shape[0] == 0:
            raise InvalidQueryError(f"inputs must have shape (N, {', '.join(map(str, shape))}) with N >= 1, "
                                    f"got {tuple(inputs.shape)}")
        if not inputs.is_floating_point():
            raise InvalidQueryError(f"inputs must be floating point in [0, 1], got dtype {inputs.dtype}")
        inputs = inputs.float()
        if not torch.isfinite(inputs).all():
            raise InvalidQueryError("inputs contain NaN or infinite values")
        return unit_interval(inputs)

    def _check_specs(self, min_accuracy: np.ndarray, max_latency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The specs, each checked to lie in the advertised range and clipped onto it where it passes a bound
        by no more than float rounding (:data:`SPEC_SLACK`)."""
        (a_lo, a_hi), (l_lo, l_hi) = self.spec_range.accuracy, self.spec_range.latency_ms
        bad_accuracy = _outside(min_accuracy, a_lo, a_hi)
        bad_latency = _outside(max_latency, l_lo, l_hi)
        if bad_accuracy.any():
            raise InvalidQueryError(f"spec min_accuracy {min_accuracy[bad_accuracy][0]} is outside the advertised "
                                    f"range [{a_lo}, {a_hi}]")
        if bad_latency.any():
            raise InvalidQueryError(f"spec max_latency_ms {max_latency[bad_latency][0]} is outside the advertised "
                                    f"range [{l_lo}, {l_hi}]")
        return self.spec_range.clip(min_accuracy, max_latency)

    def route(self, min_accuracy: np.ndarray, max_latency: np.ndarray, rng: np.random.Generator | None = None,
              queues=None, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Apply the defense's spec hook, the policy and the defense's reroute; return (menu index, -1 where
        rejected; meets spec). Given the workers' ``queues``, a queue-aware policy routes online on them."""
        rng = self.rng if rng is None else rng
        noisy_accuracy, noisy_latency = (np.asarray(a, dtype=float) for a in self.defense.perturb_spec(
            min_accuracy, max_latency, self.spec_range, rng))
        if noisy_accuracy.shape != min_accuracy.shape or noisy_latency.shape != min_accuracy.shape:
            raise DefenseError(f"defense '{self.defense.name}' perturb_spec() must return two arrays of shape "
                               f"{min_accuracy.shape}, one spec per request, got shapes {noisy_accuracy.shape} "
                               f"and {noisy_latency.shape}")
        noisy_accuracy, noisy_latency = self.spec_range.clip(noisy_accuracy, noisy_latency)
        if queues is not None and self.policy.queue_aware:  # the defense's reroute is called per request if it has one
            own = getattr(type(self.defense), "reroute", DEFENSES.base.reroute)
            reroute = None if own is DEFENSES.base.reroute else partial(self._reroute, rng=rng)
            served = self.policy.route_online(self._accuracy, self._latency, noisy_accuracy, noisy_latency, queues,
                                              positions, reroute, self.reject)
        else:
            served, _ = self.policy.select(self._accuracy, self._latency, noisy_accuracy, noisy_latency)
            candidates = (self._accuracy[None, :] >= noisy_accuracy[:, None]) & \
                (self._latency[None, :] <= noisy_latency[:, None])
            served = self._reroute(served, candidates, rng)
        # an SLO miss is judged against what the client asked for, not the perturbed spec
        meets = (served >= 0) & (self._accuracy[served] >= min_accuracy) & (self._latency[served] <= max_latency)
        return served, meets

    def _reroute(self, served: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rerouted = np.asarray(self.defense.reroute(served, candidates, rng), dtype=np.int64)
        if rerouted.shape != served.shape or ((rerouted < 0) | (rerouted >= len(self.menu))).any():
            raise DefenseError(f"defense '{self.defense.name}' rerouted to models outside the menu")
        return rerouted

    def requested(self, min_accuracy: np.ndarray, max_latency: np.ndarray) -> np.ndarray:
        """The model the policy picks for the client's own spec, with no defense."""
        return self.policy.select(self._accuracy, self._latency, min_accuracy, max_latency)[0]

    def check(self, inputs, spec: Spec | Sequence[Spec], client: int = 0, arrival_ms: float = 0.0) -> Requests:
        """Validate one client's call; return its rows as :class:`Requests` (inputs as float, one spec per
        row), all from ``client`` arriving at ``arrival_ms``.

        Raises:
            InvalidQueryError: malformed inputs or a spec outside the advertised range.
            BudgetExhausted: the call would go past the budget (nothing of it is served).
        """
        inputs = self._check_inputs(inputs)
        n = inputs.shape[0]
        min_accuracy, max_latency = _spec_arrays(spec, n)
        min_accuracy, max_latency = self._check_specs(min_accuracy, max_latency)
        if self.budget is not None and self.used + n > self.budget:
            raise BudgetExhausted(f"query of {n} inputs exceeds the remaining budget of {self.budget - self.used} "
                                  f"(budget {self.budget}); nothing was served")
        if self.eval_guard is not None:
            self.eval_guard.observe(inputs)
        return Requests(np.full(n, client, dtype=np.int64), inputs, min_accuracy, max_latency, np.full(n, arrival_ms))

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, served: np.ndarray) -> torch.Tensor:
        """Each served model's softmax outputs on its rows, in batches of at most ``FORWARD_BATCH``."""
        outputs = torch.empty(len(inputs), self.zoo.num_classes)
        for index in np.unique(served):
            rows = torch.from_numpy(np.flatnonzero(served == index))
            model = self.zoo.model(self.menu[index].id, self.device)
            batch = inputs[rows].to(self.device)
            outputs[rows] = torch.cat([F.softmax(model(batch[i:i + FORWARD_BATCH]), dim=1).cpu()
                                       for i in range(0, len(batch), FORWARD_BATCH)])
        return outputs

    def plan(self, requests: Requests, rng: np.random.Generator, queues=None) -> Served:
        """Admit and route a batch of requests (the defense's ``admit``, spec and reroute hooks).

        Returns what will be served, with every answer still NaN: :meth:`fill` adds the answers
        of the admitted rows. :meth:`serve` does both; a live service awaits its batched forward
        passes in between.

        Raises:
            DefenseError: a malformed ``admit`` mask or ``perturb_spec`` specs, or a reroute off the menu.
        """
        n = len(requests)
        admitted = np.ones(n, dtype=bool)
        if n:
            mask = self.defense.admit(requests, rng)
            if mask is not None:
                mask = np.asarray(mask)
                if mask.shape != (n,) or mask.dtype != np.bool_:
                    raise DefenseError(f"defense '{self.defense.name}' admit() must return None or a boolean "
                                       f"array of shape ({n},), got {mask.dtype} of shape {mask.shape}")
                admitted &= mask
        blocked = self.defense.blocked
        if blocked:
            admitted &= ~np.isin(requests.clients, np.fromiter(blocked, dtype=np.int64, count=len(blocked)))
        rows = np.flatnonzero(admitted)
        answers = torch.full((n, self.zoo.num_classes), float("nan"))
        served = np.full(n, -1, dtype=np.int64)
        meets = np.zeros(n, dtype=bool)
        if len(rows):
            view = requests if len(rows) == n else requests.subset(rows)
            served[rows], meets[rows] = self.route(view.min_accuracy, view.max_latency_ms, rng, queues, rows)
        return Served(answers, answers.clone(), ~admitted | (served < 0), served,
                      self.requested(requests.min_accuracy, requests.max_latency_ms), meets, np.zeros(n))

    @torch.no_grad()
    def fill(self, requests: Requests, served: Served, produced: torch.Tensor, rng: np.random.Generator) -> None:
        """Write the admitted rows' answers into ``served``: the models' ``produced`` outputs
        (one row per admitted request, in order) through the defense's ``answer``, and the client-side work each
        costs (its ``client_work_ms``) into ``served.work_ms``."""
        rows = np.flatnonzero(~served.refused)
        if len(rows):
            view = requests if len(rows) == len(requests) else requests.subset(rows)
            served.raw[torch.from_numpy(rows)] = produced
            shaped = defense_answers(self.defense.answer(view, produced, rng), produced, self.defense.name)
            served.answers[torch.from_numpy(rows)] = shaped
            price = getattr(self.defense, "client_work_ms", None)  # a duck-typed defense may have none
            if price is not None:
                served.work_ms[rows] = client_work(price(view, shaped, rng), len(rows), self.defense.name)

    @torch.no_grad()
    def serve(self, requests: Requests, rng: np.random.Generator,
              outputs: Callable[[np.ndarray, np.ndarray], torch.Tensor] | None = None, queues=None) -> Served:
        """Pass a batch of requests through the defense and the policy; return what was served.

        Args:
            requests: the requests, in arrival order.
            rng: the defense's randomness for this batch.
            outputs: (positions in ``requests``, menu index per position) -> the served models'
                probabilities on those requests; default a live forward pass (:meth:`forward`).

            queues: the workers, for a queue-aware policy to route on (see :meth:`route`).

        Raises:
            DefenseError: as :meth:`plan`, or the defense's ``answer`` returned no tensor of one row per answered query.
        """
        served = self.plan(requests, rng, queues)
        rows = np.flatnonzero(~served.refused)
        if len(rows):
            inputs = requests.inputs if len(rows) == len(requests) else requests.inputs[torch.from_numpy(rows)]
            produced = outputs(rows, served.served[rows]) if outputs else self.forward(inputs, served.served[rows])
            self.fill(requests, served, produced, rng)
        return served

    def record(self, served: Served, purpose: str) -> None:
        """Log a client's served batch (its size counts against the budget, refused rows included)."""
        self.log.served.append(served.served)
        self.log.requested.append(served.requested)
        self.log.meets_spec.append(served.meets_spec)
        self.log.purposes.append((purpose, len(served.served)))
        self.last_refused = torch.from_numpy(served.refused.copy())

    @torch.no_grad()
    def query(self, inputs, spec: Spec | Sequence[Spec], purpose: str = "extract", *, with_raw: bool = False):
        """Answer one query per input row, from one client with no clock; return (N, num_classes) probabilities.

        Refused rows are NaN (see :attr:`last_refused`). ``with_raw`` (harness only, never on the
        attacker's handle) also returns the served models' answers before the defense's ``answer``.
        """
        requests = self.check(inputs, spec)
        served = self.serve(requests, self.rng)
        self.record(served, purpose)
        return (served.answers, served.raw) if with_raw else served.answers


def released_ms(clients: np.ndarray, ready_ms: np.ndarray, work_ms: np.ndarray,
                free_ms: float = -math.inf) -> np.ndarray:
    """When each answer reaches its client, who must first do its ``work_ms`` of client-side compute.

    Each client works on one answer at a time, in the order its answers are ready (``ready_ms``, ties in
    row order), from ``free_ms`` on: an answer is released at ``max(ready, the client's previous
    release) + work``. A row whose ``ready_ms`` is not finite (refused, dropped) costs no work and keeps
    its value; with no work at all every value is returned unchanged.
    """
    ready = np.asarray(ready_ms, dtype=float)
    released = ready.copy()
    priced = np.isfinite(ready) & (np.asarray(work_ms) > 0)
    if not priced.any():
        return released
    clients = np.asarray(clients)
    for client in np.unique(clients[priced]).tolist():
        rows = np.flatnonzero((clients == client) & np.isfinite(ready))
        busy = free_ms
        for row in rows[np.argsort(ready[rows], kind="stable")].tolist():
            busy = max(busy, ready[row]) + float(work_ms[row])
            released[row] = busy
    return released


def target_for(frontend) -> Target:
    """The narrow attacker-facing handle on ``frontend`` (a :class:`Frontend`, or a cell's
    :class:`~psml_bench.serving.service.SimulatedService`, which shows the same client face)."""

    def query(inputs, spec, purpose):
        answers = frontend.query(inputs, spec, purpose)
        return answers, frontend.last_refused, frontend.last_latency_ms

    return Target(query, lambda: frontend.remaining)
