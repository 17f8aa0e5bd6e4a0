"""The evaluation inputs kept out of the attacker's queries: count queries that repeat an input a cell is scored on.

A cell scores the surrogate on the zoo's test split, and the splits are rebuilt exactly from the
packaged config and the public dataset, so an attack could query the victim on the very inputs it
is scored on (embedded in its own source, say) and train on them. The server sees every query: an
:class:`EvalInputGuard` counts the attacker's queries that equal, or nearly equal, a scored input.

*Nearly equal* means a per-pixel root-mean-square distance of at most :data:`NEAR_RMS` on inputs in
[0, 1]: far above the 8-bit rounding of one image saved twice (about 0.002) and small noise added to
dodge an exact match, far below the distance between two distinct natural images (the nearest test
image to any attacker-pool image of ``fmnist-tiny`` is 0.063 RMS away; between test images, 0.071).
A query that also nearly equals an input of the attacker's own pool is not counted: the pool is the
attacker's to query, and a dataset may hold the same image in two splits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEAR_RMS = 0.02
"""Per-pixel RMS distance (inputs in [0, 1]) at or below which two inputs count as the same image."""

POOL_SIDE = 4
"""Side of the average-pooling window of the cheap pre-filter (a lower bound on the distance)."""

CHUNK = 512


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """Inputs averaged over non-overlapping POOL_SIDE x POOL_SIDE windows, flattened (x is (N, C, H, W))."""
    if x.ndim != 4 or min(x.shape[-2:]) < POOL_SIDE:
        return x.flatten(1)
    return F.avg_pool2d(x, POOL_SIDE).flatten(1)


class _Reference:
    """A set of inputs to look queries up in: each query's nearest-distance test, with a pooled pre-filter."""

    def __init__(self, inputs: torch.Tensor):
        self.inputs = inputs.detach().float().cpu()
        self.flat = self.inputs.flatten(1)
        self.pooled = _pooled(self.inputs)
        self.radius = NEAR_RMS * math.sqrt(self.flat.shape[1])
        # ||pool(a) - pool(b)|| <= ||a - b|| / POOL_SIDE for non-overlapping windows (Cauchy-Schwarz), so
        # nothing within ``radius`` is lost by the pre-filter
        self.pooled_radius = self.radius / (POOL_SIDE if self.pooled.shape[1] != self.flat.shape[1] else 1)

    def near(self, queries: torch.Tensor) -> torch.Tensor:
        """Per query row (same shape as the reference's rows), whether some reference input is within the radius."""
        found = torch.zeros(len(queries), dtype=torch.bool)
        if not len(self.flat) or not len(queries):
            return found
        queries = queries.detach().float().cpu()
        flat, pooled = queries.flatten(1), _pooled(queries)
        for start in range(0, len(queries), CHUNK):
            candidates = torch.cdist(pooled[start:start + CHUNK], self.pooled) <= self.pooled_radius * (1 + 1e-6)
            rows, refs = torch.nonzero(candidates, as_tuple=True)
            if len(rows):
                distance = (flat[start + rows] - self.flat[refs]).norm(dim=1)
                hit = rows[distance <= self.radius * (1 + 1e-6)]
                found[start + hit] = True
        return found


class EvalInputGuard:
    """Counts the queries that repeat an input the cell is scored on (see the module docstring).

    Args:
        scored: the inputs the cell scores surrogates on (the test split).
        allowed: inputs the attacker may query anyway (its own pool); a query near one of them is not counted.
    """

    def __init__(self, scored: torch.Tensor, allowed: torch.Tensor | None = None):
        self._scored = _Reference(scored)
        self._allowed = _Reference(allowed) if allowed is not None else None
        self.count = 0

    def observe(self, inputs: torch.Tensor) -> int:
        """Look at one call's inputs; return how many of them repeat a scored input (added to :attr:`count`)."""
        if inputs.ndim != self._scored.inputs.ndim or tuple(inputs.shape[1:]) != tuple(self._scored.inputs.shape[1:]):
            return 0
        near = self._scored.near(inputs)
        if near.any() and self._allowed is not None:
            rows = torch.nonzero(near).flatten()
            near[rows[self._allowed.near(inputs[rows])]] = False
        repeated = int(near.sum())
        self.count += repeated
        return repeated
