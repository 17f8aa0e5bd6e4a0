"""The serving system: specs, routing policies, the server, and the attacker's view of it.

One input is one request is one query. Each query's spec passes the defense's
``perturb_spec``, the policy picks a model per query, queries are grouped by model for a
batched forward pass, and the defense's ``postprocess`` shapes the answers. The server logs,
hidden from attacks, which model served each query; the budget is counted per input here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._errors import BudgetExhausted, InvalidQueryError
from ._registry import Registry
from ._zoo import MenuEntry, Zoo

FORWARD_BATCH = 1024


@dataclass(frozen=True)
class Spec:
    """A client's specification: the least accuracy and the most latency it accepts."""

    min_accuracy: float
    max_latency_ms: float


@dataclass(frozen=True)
class SpecRange:
    """The spec ranges a service advertises: accuracy in [lo, hi], latency in [lo, hi] ms."""

    accuracy: tuple[float, float]
    latency_ms: tuple[float, float]

    def clip(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.clip(min_accuracy, *self.accuracy), np.clip(max_latency_ms, *self.latency_ms))

    def sample(self, n: int, rng: np.random.Generator) -> list[Spec]:
        """``n`` specs drawn uniformly from the advertised ranges."""
        accuracy = rng.uniform(*self.accuracy, size=n)
        latency = rng.uniform(*self.latency_ms, size=n)
        return [Spec(float(a), float(l)) for a, l in zip(accuracy, latency)]


class Policy(ABC):
    """Chooses a model for each query from the menu."""

    name: str = ""

    @abstractmethod
    def select(self, accuracy: np.ndarray, latency_ms: np.ndarray, min_accuracy: np.ndarray,
               max_latency_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (menu index per query, whether the query's spec was feasible)."""


POLICIES: Registry[type[Policy]] = Registry("policy", Policy)


@POLICIES.register("infaas")
class InfaasPolicy(Policy):
    """INFaaS-style selection.

    Feasible spec: among models with accuracy >= min_accuracy and latency <= max_latency_ms,
    the lowest-latency one (ties: the lower accuracy). Infeasible spec (an SLO miss): the most
    accurate model within the latency bound (ties: the faster), else the fastest model.
    """

    def select(self, accuracy, latency_ms, min_accuracy, max_latency_ms):
        within_latency = latency_ms[None, :] <= max_latency_ms[:, None]
        feasible_models = within_latency & (accuracy[None, :] >= min_accuracy[:, None])
        feasible = feasible_models.any(axis=1)
        by_speed = np.lexsort((accuracy, latency_ms))           # fastest first, then less accurate
        by_accuracy = np.lexsort((latency_ms, -accuracy))       # most accurate first, then faster
        first_feasible = by_speed[np.argmax(feasible_models[:, by_speed], axis=1)]
        best_within = by_accuracy[np.argmax(within_latency[:, by_accuracy], axis=1)]
        fastest = np.lexsort((-accuracy, latency_ms))[0]
        fallback = np.where(within_latency.any(axis=1), best_within, fastest)
        return np.where(feasible, first_feasible, fallback), feasible


def _spec_arrays(spec: Spec | Sequence[Spec], n: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(spec, Spec):
        return np.full(n, float(spec.min_accuracy)), np.full(n, float(spec.max_latency_ms))
    specs = list(spec)
    if len(specs) != n or not all(isinstance(s, Spec) for s in specs):
        raise InvalidQueryError(f"spec must be one Spec or a sequence of {n} Specs (one per input)")
    return (np.array([s.min_accuracy for s in specs], dtype=float),
            np.array([s.max_latency_ms for s in specs], dtype=float))


@dataclass
class QueryLog:
    """The server's hidden record: per query, the model that served it and why it was sent."""

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


class Server:
    """A zoo behind a policy and a defense, answering per-input queries within a budget.

    Args:
        zoo: the built zoo.
        model_ids: the models this service offers (default: the whole zoo).
        policy: registered policy name.
        defense: the defense whose hooks run around routing.
        budget: the number of queries the client may send (``None``: unlimited).
        rng: randomness of the defense.
    """

    def __init__(self, zoo: Zoo, *, defense, rng: np.random.Generator, model_ids: Sequence[str] | None = None,
                 policy: str = "infaas", budget: int | None = None):
        self.zoo = zoo
        self.menu: tuple[MenuEntry, ...] = tuple(
            e for e in zoo.menu if model_ids is None or e.id in set(model_ids))
        self.spec_range = SpecRange(zoo.accuracy_range, zoo.latency_range_ms)
        self.policy = POLICIES.get(policy)()
        self.defense = defense
        self.budget = budget
        self.rng = rng
        self.log = QueryLog()
        self._accuracy = np.array([e.accuracy for e in self.menu])
        self._latency = np.array([e.latency_ms for e in self.menu])

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
        return inputs

    def _check_specs(self, min_accuracy: np.ndarray, max_latency: np.ndarray) -> None:
        (a_lo, a_hi), (l_lo, l_hi) = self.spec_range.accuracy, self.spec_range.latency_ms
        bad_accuracy = ~np.isfinite(min_accuracy) | (min_accuracy < a_lo) | (min_accuracy > a_hi)
        bad_latency = ~np.isfinite(max_latency) | (max_latency < l_lo) | (max_latency > l_hi)
        if bad_accuracy.any():
            raise InvalidQueryError(f"spec min_accuracy {min_accuracy[bad_accuracy][0]} is outside the advertised "
                                    f"range [{a_lo}, {a_hi}]")
        if bad_latency.any():
            raise InvalidQueryError(f"spec max_latency_ms {max_latency[bad_latency][0]} is outside the advertised "
                                    f"range [{l_lo}, {l_hi}]")

    def route(self, min_accuracy: np.ndarray, max_latency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the defense's spec hook, the policy and the defense's reroute; return (menu index, meets spec)."""
        noisy_accuracy, noisy_latency = self.defense.perturb_spec(min_accuracy, max_latency, self.spec_range, self.rng)
        noisy_accuracy, noisy_latency = self.spec_range.clip(np.asarray(noisy_accuracy, dtype=float),
                                                             np.asarray(noisy_latency, dtype=float))
        served, _ = self.policy.select(self._accuracy, self._latency, noisy_accuracy, noisy_latency)
        candidates = (self._accuracy[None, :] >= noisy_accuracy[:, None]) & \
            (self._latency[None, :] <= noisy_latency[:, None])
        served = np.asarray(self.defense.reroute(served, candidates, self.rng), dtype=np.int64)
        if served.shape != min_accuracy.shape or ((served < 0) | (served >= len(self.menu))).any():
            raise ValueError(f"defense '{self.defense.name}' rerouted to models outside the menu")
        # an SLO miss is judged against what the client asked for, not the perturbed spec
        meets = (self._accuracy[served] >= min_accuracy) & (self._latency[served] <= max_latency)
        return served, meets

    def requested(self, min_accuracy: np.ndarray, max_latency: np.ndarray) -> np.ndarray:
        """The model the policy picks for the client's own spec, with no defense."""
        return self.policy.select(self._accuracy, self._latency, min_accuracy, max_latency)[0]

    @torch.no_grad()
    def query(self, inputs, spec: Spec | Sequence[Spec], purpose: str = "extract", *, with_raw: bool = False):
        """Answer one query per input row; return an (N, num_classes) tensor of probabilities.

        ``with_raw`` (harness only, never on the attacker's handle) also returns the served models'
        answers before the defense's ``postprocess``.
        """
        inputs = self._check_inputs(inputs)
        n = inputs.shape[0]
        min_accuracy, max_latency = _spec_arrays(spec, n)
        self._check_specs(min_accuracy, max_latency)
        if self.budget is not None and self.used + n > self.budget:
            raise BudgetExhausted(f"query of {n} inputs exceeds the remaining budget of {self.budget - self.used} "
                                  f"(budget {self.budget}); nothing was served")
        served, meets = self.route(min_accuracy, max_latency)
        outputs = torch.empty(n, self.zoo.num_classes)
        for index in np.unique(served):
            rows = torch.from_numpy(np.flatnonzero(served == index))
            model = self.zoo.model(self.menu[index].id)
            batch = inputs[rows]
            outputs[rows] = torch.cat([F.softmax(model(batch[i:i + FORWARD_BATCH]), dim=1)
                                       for i in range(0, len(batch), FORWARD_BATCH)])
        self.log.served.append(served)
        self.log.requested.append(self.requested(min_accuracy, max_latency))
        self.log.meets_spec.append(meets)
        self.log.purposes.append((purpose, n))
        answers = self.defense.postprocess(outputs, self.rng)
        return (answers, outputs) if with_raw else answers


class Target:
    """The attacker's handle on a service: send queries, read the remaining budget. Nothing else."""

    __slots__ = ("_query", "_remaining")

    def __init__(self, query: Callable[..., torch.Tensor], remaining: Callable[[], int | None]):
        self._query = query
        self._remaining = remaining

    def query(self, inputs: torch.Tensor, spec: Spec | Sequence[Spec], *, purpose: str = "extract") -> torch.Tensor:
        """Class probabilities for each input row, served under ``spec`` (one Spec or one per row).

        ``purpose`` labels the queries in the server's count (``"fingerprint"`` or ``"extract"``).

        Raises:
            BudgetExhausted: the query would go past the budget; nothing of it was served.
            InvalidQueryError: malformed inputs or a spec outside the advertised ranges.
        """
        return self._query(inputs, spec, purpose)

    @property
    def remaining_budget(self) -> int | None:
        return self._remaining()


@dataclass(frozen=True)
class Knowledge:
    """Everything the attacker knows besides the target handle (DESIGN.md section 2).

    Attributes:
        input_shape: shape of one input (C, H, W); inputs are floats in [0, 1].
        num_classes: number of output classes.
        spec_range: the advertised spec ranges.
        pool: unlabeled inputs the attacker may query (disjoint from the zoo's training and test data).
        role: the model to steal, ``rank:k`` = the k-th most accurate model the service offers.
        menu: the per-model (accuracy, latency) menu, only in scenarios where it is public.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    spec_range: SpecRange
    pool: torch.Tensor
    role: str
    menu: tuple[tuple[float, float], ...] | None = None

    @property
    def rank(self) -> int:
        """k of the target role ``rank:k``."""
        return int(self.role.split(":")[1])


def target_for(server: Server) -> Target:
    """The narrow attacker-facing handle on ``server``."""
    return Target(server.query, lambda: server.remaining)
