"""``spec-quantize``: each spec field snapped onto a coarse grid before model selection."""

from __future__ import annotations

import numpy as np

from psml_bench import Allowed, Defense, SpecRange, register_defense


@register_defense("spec-quantize")
class SpecQuantize(Defense):
    """Rounds both spec fields to the nearest point of a grid before the policy sees them.

    The grid of each field has spacing ``step`` times the width of its advertised range and starts
    at the range's lower end: with accuracy advertised in [0.70, 0.96] and ``step = 0.1`` the
    accuracy floor is rounded to 0.700, 0.726, 0.752, ... (halves round up). Every spec inside one
    grid cell is served alike, so an attacker cannot pin a region of the spec space narrower than a
    cell, and repeating a query teaches it nothing (the defense is deterministic). ``step = 0``
    leaves specs unchanged.

    Benign clients pay in goodput near the models' accuracy and latency values: an accuracy floor
    rounded down can be served by a model below the client's true floor, one rounded up can exceed
    every model within the latency bound (an SLO miss through the infeasible-spec fallback), and the
    latency bound likewise.
    """

    strength = "step"
    defaults = {"step": 0.1}
    allowed = {"step": Allowed(minimum=0, maximum=1)}

    def perturb_spec(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray, spec_range: SpecRange,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        step = float(self.params["step"])
        if step == 0:
            return min_accuracy, max_latency_ms
        return (_snap(min_accuracy, spec_range.accuracy, step), _snap(max_latency_ms, spec_range.latency_ms, step))


def _snap(values: np.ndarray, advertised: tuple[float, float], step: float) -> np.ndarray:
    """Nearest point of the grid ``low + k * step * width`` (halves up); the server clips the top."""
    low, high = advertised
    cell = step * (high - low)
    return low + np.floor((np.asarray(values, dtype=float) - low) / cell + 0.5) * cell
