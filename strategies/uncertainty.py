"""``uncertainty``: active learning by entropy (uncertainty sampling as in ActiveThief, Pal et al. 2020)."""

from __future__ import annotations

import torch

from psml_bench import ActiveLearning, QuerySession, Surrogate, register_strategy

SCORE_BATCH = 1024


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each probability row."""
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)


@register_strategy("uncertainty")
class Uncertainty(ActiveLearning):
    """Rounds of the unqueried pool inputs an interim surrogate is least sure about (highest entropy)."""

    def select(self, surrogate: Surrogate, candidates: torch.Tensor, session: QuerySession, k: int) -> torch.Tensor:
        probabilities = torch.cat([torch.softmax(surrogate(candidates[i:i + SCORE_BATCH]), dim=1)
                                   for i in range(0, len(candidates), SCORE_BATCH)])
        return torch.argsort(entropy(probabilities), descending=True, stable=True)[:k]
