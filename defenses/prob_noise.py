"""``prob-noise``: Gaussian noise on the answers' probabilities."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import Allowed, Defense, register_defense


@register_defense("prob-noise")
class ProbNoise(Defense):
    """Adds independent N(0, sigma) noise to every probability, clips at 0 and renormalises.

    A row whose every entry falls to 0 answers the one-hot vector of its original top class. The
    noise is fresh on every query, so repeating a query and averaging recovers the answer (the
    price is budget). Unlike the other output defenses it can change the top class, more often the
    closer the top two classes are: benign users get wrong labels now and then. The same transform
    as ART's ``GaussianNoise`` postprocessor, whose all-zero rows divide by zero. ``sigma = 0``
    leaves answers unchanged.
    """

    strength = "sigma"
    deterministic = False
    defaults = {"sigma": 0.05}
    allowed = {"sigma": Allowed(minimum=0)}

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        sigma = float(self.params["sigma"])
        if sigma == 0:
            return probabilities
        y = probabilities.double()
        noise = torch.from_numpy(rng.normal(0.0, sigma, size=tuple(y.shape)))
        noisy = (y + noise).clamp(min=0.0)
        empty = noisy.sum(dim=1) == 0
        if empty.any():
            noisy[empty] = torch.zeros_like(y[empty]).scatter_(1, y[empty].argmax(dim=1, keepdim=True), 1.0)
        return (noisy / noisy.sum(dim=1, keepdim=True)).to(probabilities.dtype)
