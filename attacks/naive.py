"""``naive``: extraction through the service without fingerprinting."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import (SURROGATE_DEFAULTS, Allowed, Attack, Knowledge, Spec, SurrogateConfig, Target, extract,
                        register_attack)


@register_attack("naive")
class Naive(Attack):
    """Queries the service without knowing which spec reaches the victim.

    ``specs = "random"`` draws each query's spec uniformly from the advertised ranges, so the
    answers come from a mix of models; ``specs = "fixed"`` sends every query with the centre
    of the advertised ranges (a single guess).
    """

    defaults = {**SURROGATE_DEFAULTS, "specs": "random"}
    allowed = {"specs": Allowed(choices=("random", "fixed"))}

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        config = SurrogateConfig.from_params(self.params)
        ranges = knowledge.spec_range
        if self.params["specs"] == "random":
            specs = ranges.sample(budget, rng)
        else:
            specs = Spec(sum(ranges.accuracy) / 2, sum(ranges.latency_ms) / 2)
        return extract(target, knowledge, specs, budget, rng, config)
