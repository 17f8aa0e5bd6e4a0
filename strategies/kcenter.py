"""``kcenter``: active learning by k-center greedy (Sener & Savarese 2018), as in ActiveThief (Pal et al. 2020).

Distances are Euclidean between an interim surrogate's penultimate features (the classifier's input).
"""

from __future__ import annotations

import torch

from psml_bench import ActiveLearning, QuerySession, Surrogate, register_strategy

FEATURE_BATCH = 1024


def _features(surrogate: Surrogate, inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([surrogate.features(inputs[i:i + FEATURE_BATCH]) for i in range(0, len(inputs), FEATURE_BATCH)])


def k_center_greedy(points: torch.Tensor, centers: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of ``k`` rows of ``points``, each the farthest from the centers chosen so far.

    The centers start as ``centers`` (the inputs queried already); a 2-approximation of the
    k-center problem (Gonzalez 1985), the greedy core set of Sener & Savarese.
    """
    if len(centers):
        distance = torch.cat([torch.cdist(points, centers[i:i + FEATURE_BATCH]).min(dim=1).values
                              for i in range(0, len(centers), FEATURE_BATCH)]).view(-1, len(points)).min(dim=0).values
    else:
        distance = torch.full((len(points),), float("inf"))
    chosen = []
    for _ in range(k):
        position = int(distance.argmax())
        chosen.append(position)
        distance = torch.minimum(distance, torch.cdist(points, points[position:position + 1]).squeeze(1))
        distance[position] = -1.0
    return torch.tensor(chosen, dtype=torch.long)


@register_strategy("kcenter")
class KCenter(ActiveLearning):
    """Rounds of unqueried pool inputs spread out in an interim surrogate's penultimate-feature space."""

    def select(self, surrogate: Surrogate, candidates: torch.Tensor, session: QuerySession, k: int) -> torch.Tensor:
        return k_center_greedy(_features(surrogate, candidates), _features(surrogate, session.inputs), k)
