"""``adaptive-misinformation``: misleading answers to out-of-distribution queries (Kariyappa & Qureshi, CVPR 2020)."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import Allowed, Defense, register_defense


def misinformation(probabilities: torch.Tensor) -> torch.Tensor:
    """The stand-in misinformation function: each row's probabilities reassigned in reversed rank order.

    The most likely class gets the smallest probability, the second the second smallest, and so
    on: a confident answer whose top class is the served model's least likely one and whose top
    class's mass is the row's minimum.
    """
    order = probabilities.argsort(dim=1, descending=True)
    ascending = probabilities.gather(1, order.flip(1))
    return torch.empty_like(probabilities).scatter_(1, order, ascending)


def blend_weight(score: torch.Tensor, tau: float, nu: float) -> torch.Tensor:
    """The paper's weight of the misinformation answer: ``1 / (1 + exp(nu * (score - tau)))``."""
    return torch.sigmoid(-nu * (score - tau))


@register_defense("adaptive-misinformation")
class AdaptiveMisinformation(Defense):
    """Answers ``(1 - a) * y + a * y_mis`` with ``a`` the sigmoid of how out-of-distribution the query looks.

    The out-of-distribution score is the paper's: the maximum softmax probability of the served
    model, ``s = max_k y_k``. The weight is ``a = 1 / (1 + exp(nu * (s - tau)))``: in-distribution
    queries (``s`` above the threshold ``tau``, the strength) get the true answer, OOD ones (below
    it) the misinformation answer, with steepness ``nu`` between them. The paper's misinformation
    function is a second model trained to put little probability on the true class; the stand-in
    here, which needs no training, is the deterministic rank reversal of the served answer
    (:func:`misinformation`): the served model's top class receives its smallest probability. Like
    the trained model it is confident and wrong on the served model's own label, and it is the
    same for the same input, so repeating a query reveals nothing.
    """

    strength = "tau"
    defaults = {"tau": 0.5, "nu": 1000.0}
    allowed = {"tau": Allowed(minimum=0, maximum=1), "nu": Allowed(minimum=0)}

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        y = probabilities.double()
        weight = blend_weight(y.max(dim=1).values, float(self.params["tau"]), float(self.params["nu"]))[:, None]
        return ((1 - weight) * y + weight * misinformation(y)).to(probabilities.dtype)
