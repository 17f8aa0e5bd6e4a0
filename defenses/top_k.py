"""``top-k``: the service answers with its k most probable classes, renormalised."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import Allowed, Defense, register_defense


@register_defense("top-k")
class TopK(Defense):
    """Keeps the k largest probabilities of every answer, zeroes the rest and renormalises.

    Ties at the k-th place keep the lowest class indices. ``k = 1`` is ``label-only``; ``k`` at
    least the number of classes leaves answers unchanged. The top class and the order of the kept
    classes are preserved, so benign users who want the top class lose nothing and routing is
    untouched; the attacker loses the tail of the distribution (the "dark knowledge" that
    distillation learns from; Orekondy et al. 2019 evaluate top-k truncation against Knockoff Nets).
    Smaller ``k`` is stronger.
    """

    strength = "k"
    defaults = {"k": 3}
    allowed = {"k": Allowed(minimum=1, integer=True)}

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        k = int(self.params["k"])
        if k >= probabilities.shape[1]:
            return probabilities
        # a stable sort keeps tied classes in index order, so the lowest indices win ties
        order = torch.sort(probabilities, dim=1, descending=True, stable=True).indices
        kept = torch.zeros_like(probabilities, dtype=torch.bool).scatter_(1, order[:, :k], True)
        truncated = torch.where(kept, probabilities.double(), 0.0)
        return (truncated / truncated.sum(dim=1, keepdim=True)).to(probabilities.dtype)
