"""``reverse-sigmoid``: deceptive perturbation of the answers (Lee et al. 2019)."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import Allowed, Defense, register_defense

CLIP = 1e-6


@register_defense("reverse-sigmoid")
class ReverseSigmoid(Defense):
    """Subtracts the reverse-sigmoid perturbation from every answer and renormalises.

    With ``s`` the sigmoid and ``s^-1(y) = log(y / (1 - y))`` (``y`` clipped to [1e-6, 1 - 1e-6]
    inside the logarithm), each probability ``y`` becomes ``y - r`` with
    ``r = beta * (s(gamma * s^-1(y)) - 1/2)``; negative results are set to 0 and every row is
    divided by its sum (Lee et al., "Defending Against NN Model Stealing Attacks Using Deceptive
    Perturbations", IEEE S&P Workshops 2019, arXiv:1806.00054; ART's ``ReverseSigmoid`` also clips
    at 1 before normalising, which changes answers only when ``beta > 1``). The perturbation pushes
    large probabilities down and small ones up, so the answers' gradients mislead a surrogate
    trained on them. ``beta`` (the strength) is the perturbation's magnitude, ``gamma`` its
    convergence.

    The top class is usually kept but not guaranteed: ``y -> y - r`` is increasing near 1/2 only
    while ``beta * gamma < 1`` and is decreasing for tiny ``y`` when ``gamma < 1``, so a weak top
    class (below 0.28 at the defaults) next to a near-zero class can lose the argmax. At the
    defaults every test-split answer of the ``fmnist-tiny`` models keeps its argmax. Benign users see
    flattened confidences (the defaults bring the mean top probability of those answers to 0.19).
    """

    strength = "beta"
    defaults = {"beta": 0.7, "gamma": 0.4}
    allowed = {"beta": Allowed(minimum=0), "gamma": Allowed(minimum=0, exclusive_minimum=True)}

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        beta, gamma = float(self.params["beta"]), float(self.params["gamma"])
        y = probabilities.double()
        clipped = y.clamp(CLIP, 1 - CLIP)
        perturbation = beta * (torch.sigmoid(gamma * torch.log(clipped / (1 - clipped))) - 0.5)
        perturbed = (y - perturbation).clamp(min=0.0)
        total = perturbed.sum(dim=1, keepdim=True)
        empty = (total == 0).squeeze(1)
        if empty.any():  # a row perturbed to nothing answers its top class
            top = y[empty].argmax(dim=1, keepdim=True)
            perturbed[empty] = torch.zeros_like(y[empty]).scatter_(1, top, 1.0)
            total = perturbed.sum(dim=1, keepdim=True)
        return (perturbed / total).to(probabilities.dtype)
