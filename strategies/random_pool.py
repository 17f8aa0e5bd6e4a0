"""``random``: random pool sampling (Knockoff Nets, Orekondy et al. 2019; Copycat CNN, Correia-Silva et al. 2018)."""

from __future__ import annotations

import numpy as np

from psml_bench import Knowledge, QuerySession, Strategy, SurrogateConfig, register_strategy, sample_pool


@register_strategy("random")
class RandomPool(Strategy):
    """Distinct pool inputs drawn uniformly at random, all at once (the default)."""

    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        session.query_pool(sample_pool(knowledge, session.remaining, rng))
