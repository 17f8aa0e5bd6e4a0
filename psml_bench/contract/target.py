"""The attacker's view of a service: the target handle and what it knows besides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .checks import knowledge_fields
from .spec import Spec, SpecRange


class Target:
    """The attacker's handle on a service: send queries, read the remaining budget. Nothing else.

    :attr:`remaining_budget` is the server's own count, the one budget figure an attack needs
    (the ``budget`` passed to ``Attack.run`` is its value before the first query). After each
    :meth:`query`, :attr:`last_refused` says which rows the service refused (their answers are
    NaN; they still cost budget) and, where the service shows it, :attr:`last_latency_ms` the
    latency each row took (a timing side channel).
    """

    __slots__ = ("_query", "_remaining", "_refused", "_latency", "_reported")

    def __init__(self, query: Callable[..., tuple | torch.Tensor], remaining: Callable[[], int | None]):
        """``query(inputs, spec, purpose)`` returns (answers, refused, latency or None), optionally followed by the
        server's remaining budget after the query, or just the answers; ``remaining()`` asks the server for its
        count (used until a query has reported it)."""
        self._query = query
        self._remaining = remaining
        self._refused = torch.zeros(0, dtype=torch.bool)
        self._latency: torch.Tensor | None = None
        self._reported: tuple[int | None] | None = None

    def query(self, inputs: torch.Tensor, spec: Spec | Sequence[Spec], *, purpose: str = "extract") -> torch.Tensor:
        """Class probabilities for each input row, served under ``spec`` (one Spec or one per row).

        ``purpose`` labels the queries in the server's count (``"fingerprint"`` or ``"extract"``).
        A refused row's answer is NaN.

        Raises:
            BudgetExhausted: the query would go past the budget; nothing of it was served.
            InvalidQueryError: malformed inputs or a spec outside the advertised ranges.
        """
        reply = self._query(inputs, spec, purpose)
        if isinstance(reply, tuple):
            answers, self._refused, self._latency = reply[:3]
            if len(reply) > 3:  # the server's count after this query, sent with its answers
                self._reported = (reply[3],)
        else:  # a query callable of protocol 2: answers only
            answers, self._latency = reply, None
            self._refused = ~torch.isfinite(answers).all(dim=1)
        return answers

    @property
    def remaining_budget(self) -> int | None:
        """The queries the server will still answer (``None``: no budget), as the server counts them."""
        return self._reported[0] if self._reported is not None else self._remaining()

    @property
    def last_refused(self) -> torch.Tensor:
        """Per row of the last query, whether the service refused it (``bool`` tensor)."""
        return self._refused

    @property
    def last_latency_ms(self) -> torch.Tensor | None:
        """Per row of the last query, its latency in ms, where the service shows it (else ``None``)."""
        return self._latency


@dataclass(frozen=True)
class Knowledge:
    """Everything the attacker knows besides the target handle (docs/protocol.md, section 2).

    Attributes:
        input_shape: shape of one input (C, H, W); inputs are floats in [0, 1].
        num_classes: number of output classes.
        spec_range: the advertised spec ranges.
        pool: unlabeled inputs the attacker may query (disjoint from the zoo's training and test data).
        role: the model to steal, ``rank:k`` = the k-th most accurate model the service offers.
        menu: the per-model (accuracy, latency) menu, only in scenarios where it is public.
        latency_visible: whether each answer comes with its observed latency (``Target.last_latency_ms``).
        device: where :func:`psml_bench.train_surrogate` trains (the device the harness runs the cell on;
            ``cpu`` unless the run asked for another).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    spec_range: SpecRange
    pool: torch.Tensor
    role: str
    menu: tuple[tuple[float, float], ...] | None = None
    latency_visible: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        knowledge_fields(self)

    @property
    def rank(self) -> int:
        """k of the target role ``rank:k``."""
        return int(self.role.split(":")[1])
