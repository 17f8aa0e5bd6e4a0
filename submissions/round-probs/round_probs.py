"""``round-probs``: output rounding (worked example of a submitted defense).

The service answers with class probabilities rounded to ``decimals`` decimal places and
renormalised, so every answer is still a probability vector. Fewer decimals hide more of the
served model's confidence from an attacker; benign users, who want the top class, lose nothing
(the defense does not touch routing, so goodput is unchanged). It uses no randomness, so it keeps
the default ``deterministic = True``.

Like every plugin it imports only the public API of ``psml_bench``.
"""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import Defense


class RoundProbs(Defense):
    """Rounds answers to `decimals` decimal places and renormalises them."""

    version = "1.0.0"
    strength = "decimals"
    defaults = {"decimals": 2}

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        decimals = int(self.params["decimals"])
        if decimals < 0:
            raise ValueError(f"round-probs: decimals must be >= 0, got {decimals}")
        rounded = torch.round(probabilities, decimals=decimals)
        top = probabilities.argmax(dim=1)
        empty = rounded.sum(dim=1) == 0
        rounded[empty, top[empty]] = 1.0  # every class rounded to 0: answer the top class
        return rounded / rounded.sum(dim=1, keepdim=True)
