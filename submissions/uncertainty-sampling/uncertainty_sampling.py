"""``uncertainty-sampling``: an active-learning extraction attack (worked example of a submitted attack).

It spends ``warmup`` of the budget on random pool inputs, trains a first surrogate on the
answers, then spends the rest on the pool inputs that surrogate is least sure about (highest
predictive entropy) and trains the final surrogate on every answer. It does not fingerprint: it
sends every query with one spec, the top of the advertised accuracy range for ``rank:1`` (the
service's fallback for an infeasible spec serves its most accurate model) and the centre of the
advertised ranges otherwise.

Like every plugin it imports only the public API of ``psml_bench``.
"""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import (SURROGATE_DEFAULTS, Attack, Knowledge, Spec, Surrogate, SurrogateConfig, Target,
                        query_batched, sample_pool, train_surrogate)


class UncertaintySampling(Attack):
    """Random warm-up queries, then the pool inputs the first surrogate is least sure about."""

    version = "1.0.0"
    defaults = {**SURROGATE_DEFAULTS, "warmup": 0.5}

    def _spec(self, knowledge: Knowledge) -> Spec:
        (a_lo, a_hi), (l_lo, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
        if knowledge.rank == 1:
            return Spec(a_hi, l_hi)
        return Spec((a_lo + a_hi) / 2, (l_lo + l_hi) / 2)

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> Surrogate:
        warmup = float(self.params["warmup"])
        if not 0.0 < warmup <= 1.0:
            raise ValueError(f"uncertainty-sampling: warmup must be in (0, 1], got {warmup}")
        config = SurrogateConfig.from_params(self.params)
        spec = self._spec(knowledge)
        first = sample_pool(knowledge, max(1, int(budget * warmup)), rng)
        inputs = knowledge.pool[first]
        answers = query_batched(target, inputs, spec)
        rest = budget - len(first)
        if rest <= 0:
            return train_surrogate(inputs, answers, knowledge, config, rng)
        surrogate = train_surrogate(inputs, answers, knowledge, config, rng)
        unseen = torch.ones(len(knowledge.pool), dtype=torch.bool)
        unseen[first] = False
        candidates = torch.nonzero(unseen).flatten()
        with torch.no_grad():
            probabilities = torch.cat([torch.softmax(surrogate(knowledge.pool[candidates[i:i + 1024]]), dim=1)
                                       for i in range(0, len(candidates), 1024)])
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
        chosen = candidates[torch.argsort(entropy, descending=True, stable=True)[:rest]]
        inputs = torch.cat([inputs, knowledge.pool[chosen]])
        answers = torch.cat([answers, query_batched(target, knowledge.pool[chosen], spec)])
        return train_surrogate(inputs, answers, knowledge, config, rng)
