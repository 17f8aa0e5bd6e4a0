"""``oracle``: extraction from the victim alone (the single-model setting, an upper bound)."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import SURROGATE_DEFAULTS, Attack, Knowledge, Spec, SurrogateConfig, Target, extract, register_attack


@register_attack("oracle")
class Oracle(Attack):
    """Spends the whole budget on pool samples answered by the victim itself.

    The harness connects this attack to a service that hosts only the victim
    (``access = "victim"``), so every answer comes from it whatever the spec.
    """

    access = "victim"
    defaults = dict(SURROGATE_DEFAULTS)

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
        return extract(target, knowledge, spec, budget, rng, SurrogateConfig.from_params(self.params))
