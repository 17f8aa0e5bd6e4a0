"""The extraction strategy's interface: which inputs an extraction queries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from .parameters import Plugin
from .session import QuerySession
from .surrogate_config import SurrogateConfig
from .target import Knowledge


class Strategy(Plugin, ABC):
    """An extraction strategy: chooses which inputs an extraction queries.

    ``collect`` sends the queries through the session; :func:`extract` then trains the final
    surrogate (the attack's :class:`SurrogateConfig`) on everything collected, unless ``collect``
    returns a surrogate it trained itself (a strategy whose training is part of the method, as
    DFME's student is): then that is the extraction's surrogate. Randomness comes only from the
    given generator.
    """

    kind: ClassVar[str] = "strategy"

    @abstractmethod
    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> torch.nn.Module | None:
        """Send ``session.remaining`` queries (fewer only when the pool runs out of new inputs).

        Returns:
            ``None`` to have :func:`extract` train the final surrogate on everything collected (every
            pool strategy), or a :class:`~psml_bench.Surrogate` (in eval mode, on the CPU) the strategy
            trained itself, which :func:`extract` returns instead.
        """
