"""The extraction strategy's interface: which inputs an extraction queries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from .parameters import Plugin
from .session import QuerySession
from .surrogate_config import SurrogateConfig
from .target import Knowledge


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
