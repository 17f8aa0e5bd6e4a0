"""The queries of one extraction: a session that never passes its query count."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .checks import generator, pool_size
from .errors import InvalidQueryError
from .spec import Spec
from .target import Knowledge, Target

QUERY_BATCH = 512


def sample_pool(knowledge: Knowledge, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` distinct pool indices (fewer if the pool is smaller), drawn with ``rng``."""
    n = min(pool_size("sample_pool's n", n), len(knowledge.pool))
    generator("sample_pool's rng", rng)
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
        self.n_queries = pool_size("n_queries", n_queries)
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
            raise InvalidQueryError(f"{n} queries exceed the {self.remaining} left of this extraction's "
                                    f"{self.n_queries}")
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
