"""``label-only``: the service answers with the top class alone, as a one-hot vector."""

from __future__ import annotations

import numpy as np
import torch

from psml_bench import Defense, register_defense


@register_defense("label-only")
class LabelOnly(Defense):
    """Replaces every answer with the one-hot vector of its most probable class.

    Per row: exactly one 1, at the lowest index among tied maxima, whatever the batch (unlike
    ART's ``ClassLabels``, which marks every batch row's argmax in every row). The attacker keeps
    only hard labels (omitting confidences is a countermeasure discussed by Tramer et al. 2016);
    benign users keep the top class and lose the confidence, and routing is untouched. No strength
    parameter.
    """

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return _one_hot_argmax(probabilities)


def _one_hot_argmax(probabilities: torch.Tensor) -> torch.Tensor:
    top = probabilities.argmax(dim=1, keepdim=True)  # the first maximum: ties go to the lowest class
    return torch.zeros_like(probabilities).scatter_(1, top, 1.0)
