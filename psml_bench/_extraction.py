"""The extraction step shared by attacks: choose queries, send them, train a timm surrogate on the answers.

Which inputs are queried is an extraction :class:`Strategy`, a plugin (``strategies/``, one
module each, registered in :data:`STRATEGIES`). The default, ``random``, is random pool sampling
(Knockoff Nets / Copycat): inputs drawn from the attacker's unlabeled pool without replacement.
Whatever the strategy, the queries go through a :class:`QuerySession` (the attack's specs in
order, never past the query count, each pool input at most once) and the final surrogate is a
small timm model fitted to every answer (soft labels: the probability vectors; hard labels:
their argmax).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ._errors import InvalidQueryError
from ._parameters import Plugin
from ._registries import STRATEGIES
from ._serving import Knowledge, Spec, Target
from ._surrogate import Surrogate, SurrogateConfig, train_surrogate

QUERY_BATCH = 512


def sample_pool(knowledge: Knowledge, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` distinct pool indices (fewer if the pool is smaller), drawn with ``rng``."""
    n = min(n, len(knowledge.pool))
    return torch.from_numpy(np.sort(rng.choice(len(knowledge.pool), size=n, replace=False)))


def query_batched(target: Target, inputs: torch.Tensor, spec: Spec | Sequence[Spec], *,
                  purpose: str = "extract") -> torch.Tensor:
    """Query ``inputs`` in batches; one query per row."""
    answers = []
    for start in range(0, len(inputs), QUERY_BATCH):
        batch_spec = spec if isinstance(spec, Spec) else list(spec)[start:start + QUERY_BATCH]
        answers.append(target.query(inputs[start:start + QUERY_BATCH], batch_spec, purpose=purpose))
    return torch.cat(answers)


class QuerySession:
    """The queries of one extraction: at most ``n_queries``, sent under the attack's spec(s) in order.

    ``n_queries`` is what the attack allots to this extraction; the budget itself is the server's
    count (``Target.remaining_budget``), which refuses any query past it. Every answer is kept
    (:attr:`inputs`, :attr:`answers`, in the order sent) except refused ones (NaN rows); pool
    inputs are tracked so that none is queried twice.

    Args:
        spec: one spec for all queries, or a sequence with one spec per query, consumed in order.

    Attributes:
        sent: queries sent so far.
        queried: per pool input, whether it was queried.
    """

    def __init__(self, target: Target, knowledge: Knowledge, spec: Spec | Sequence[Spec], n_queries: int):
        self.target = target
        self.knowledge = knowledge
        self.n_queries = int(n_queries)
        self._spec = spec if isinstance(spec, Spec) else list(spec)
        self._inputs: list[torch.Tensor] = []
        self._answers: list[torch.Tensor] = []
        self.sent = 0
        self.queried = torch.zeros(len(knowledge.pool), dtype=torch.bool)

    @property
    def remaining(self) -> int:
        """Queries this session may still send."""
        return self.n_queries - self.sent

    @property
    def inputs(self) -> torch.Tensor:
        """Every input queried so far."""
        return torch.cat(self._inputs) if self._inputs else torch.empty(0, *self.knowledge.input_shape)

    @property
    def answers(self) -> torch.Tensor:
        """The answers (probability rows) to :attr:`inputs`."""
        return torch.cat(self._answers) if self._answers else torch.empty(0, self.knowledge.num_classes)

    def unqueried(self) -> torch.Tensor:
        """Indices of the pool inputs not queried yet, ascending."""
        return torch.nonzero(~self.queried).flatten()

    def query(self, inputs: torch.Tensor) -> torch.Tensor:
        """Query ``inputs`` (any inputs in [0, 1], e.g. synthetic ones); return their answers.

        Raises:
            InvalidQueryError: more inputs than :attr:`remaining`, or than specs left in the sequence.
        """
        n = len(inputs)
        if n > self.remaining:
            raise InvalidQueryError(f"{n} queries exceed the {self.remaining} left of this extraction's {self.n_queries}")
        if n == 0:
            return torch.empty(0, self.knowledge.num_classes)
        if isinstance(self._spec, Spec):
            spec: Spec | list[Spec] = self._spec
        else:
            spec = self._spec[self.sent:self.sent + n]
            if len(spec) < n:
                raise InvalidQueryError(f"{n} queries but only {len(spec)} specs left in the sequence")
        answers = query_batched(self.target, inputs, spec)
        answered = torch.isfinite(answers).all(dim=1)  # a refused query teaches the attacker nothing
        self._inputs.append(inputs if bool(answered.all()) else inputs[answered])
        self._answers.append(answers if bool(answered.all()) else answers[answered])
        self.sent += n
        return answers

    def query_pool(self, indices: torch.Tensor) -> torch.Tensor:
        """Query the pool inputs at ``indices``; return their answers.

        Raises:
            InvalidQueryError: an index was queried before (or appears twice).
        """
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self.queried[indices].any() or len(torch.unique(indices)) != len(indices):
            raise InvalidQueryError("pool inputs may be queried only once")
        answers = self.query(self.knowledge.pool[indices])
        self.queried[indices] = True
        return answers


class Strategy(Plugin, ABC):
    """An extraction strategy: chooses which inputs an extraction queries.

    ``collect`` sends the queries through the session; :func:`extract` then trains the final
    surrogate (the attack's :class:`SurrogateConfig`) on everything collected. Randomness comes
    only from the given generator.
    """

    kind: ClassVar[str] = "strategy"

    @abstractmethod
    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        """Send ``session.remaining`` queries (fewer only when the pool runs out of new inputs)."""


class ActiveLearning(Strategy):
    """Pool-based active learning in rounds (ActiveThief): subclasses say which candidates to pick.

    A random seed set (``seed_fraction`` of the queries), then ``rounds`` equal rounds: an
    interim surrogate, trained on every answer so far for ``round_cost`` of the final
    surrogate's steps (warm-started from the previous round's, so it stays cheap), scores a
    random subsample of the unqueried pool (``candidate_factor`` times the round's size) and
    :meth:`select` picks the round's queries among them.
    """

    defaults: ClassVar[dict[str, Any]] = {"rounds": 3, "seed_fraction": 0.25, "round_cost": 0.1,
                                          "candidate_factor": 4}

    @abstractmethod
    def select(self, surrogate: Surrogate, candidates: torch.Tensor, session: QuerySession, k: int) -> torch.Tensor:
        """Positions in ``candidates`` (inputs) of the ``k`` to query; runs under ``torch.no_grad``."""

    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        rounds = int(self.params["rounds"])
        seed = math.ceil(session.remaining * float(self.params["seed_fraction"])) if rounds > 0 else session.remaining
        session.query_pool(sample_pool(knowledge, seed, rng))
        interim = config.cheaper(float(self.params["round_cost"]), session.n_queries)
        surrogate = None
        for round_index in range(rounds):
            unqueried = session.unqueried()
            k = min(len(unqueried), math.ceil(session.remaining / (rounds - round_index)))
            if k == 0:
                break
            size = min(len(unqueried), max(k, int(self.params["candidate_factor"] * k)))
            candidates = unqueried[np.sort(rng.choice(len(unqueried), size=size, replace=False))]
            if size > k:
                surrogate = train_surrogate(session.inputs, session.answers, knowledge, interim, rng, init=surrogate)
                with torch.no_grad():
                    candidates = candidates[self.select(surrogate, knowledge.pool[candidates], session, k)]
            session.query_pool(candidates)


def extract(target: Target, knowledge: Knowledge, spec: Spec | Sequence[Spec], n_queries: int,
            rng: np.random.Generator, config: SurrogateConfig,
            extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> Surrogate:
    """Query up to ``n_queries`` inputs chosen by ``config.strategy`` under ``spec``, train a surrogate.

    Args:
        spec: one spec for all queries, or a sequence of ``n_queries`` specs, consumed in order.
        extra: answers the attack already holds (inputs, probabilities), added to the training set.
    """
    strategy = STRATEGIES.get(config.strategy)()
    session = QuerySession(target, knowledge, spec, n_queries)
    strategy.collect(session, knowledge, config, rng)
    inputs, answers = session.inputs, session.answers
    if extra is not None and len(extra[0]):
        inputs, answers = torch.cat([inputs, extra[0]]), torch.cat([answers, extra[1]])
    return train_surrogate(inputs, answers, knowledge, config, rng)
