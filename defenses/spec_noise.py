"""``spec-noise``: the PSML defense, noise on the client's spec before model selection."""

from __future__ import annotations

import math

import numpy as np

from psml_bench import Allowed, Defense, SpecRange, register_defense

DISTRIBUTIONS = ("gaussian", "laplace")


@register_defense("spec-noise")
class SpecNoise(Defense):
    """Adds zero-mean noise, Gaussian or Laplace, to both spec fields before the policy sees them.

    ``scale`` is the noise's standard deviation as a fraction of each advertised range's width,
    whatever the ``distribution``: with accuracy advertised in [0.70, 0.96], ``scale = 0.02``
    perturbs the accuracy floor by 0.0052 (half a point) standard deviation, and the latency bound
    likewise. Equal ``scale`` therefore means equal variance; the Laplace noise has the scale
    ``b = scale * width / sqrt(2)``. The noisy spec is clipped to the advertised ranges. Benign
    clients pay for the noise in goodput; an attacker loses the ability to pin a narrow region of
    the spec space.

    With the Laplace distribution the defense is the Laplace mechanism on each spec field: taking
    the field's whole advertised width as its sensitivity, one query's noisy field is
    epsilon-differentially private with ``epsilon = width / b = sqrt(2) / scale`` (``scale = 0.1``:
    epsilon 14.1; the default 0.02: 70.7). A query's two fields together cost ``2 * epsilon``, and
    ``q`` queries ``q`` times that by basic composition (a client repeating one spec averages the
    noise away).
    """

    strength = "scale"
    deterministic = False
    defaults = {"scale": 0.02, "distribution": "gaussian"}
    allowed = {"scale": Allowed(minimum=0), "distribution": Allowed(choices=DISTRIBUTIONS)}

    def perturb_spec(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray, spec_range: SpecRange,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = float(self.params["scale"])
        accuracy_width = spec_range.accuracy[1] - spec_range.accuracy[0]
        latency_width = spec_range.latency_ms[1] - spec_range.latency_ms[0]
        if self.params["distribution"] == "laplace":
            # a Laplace(b) variable has standard deviation b * sqrt(2)
            noisy_accuracy = min_accuracy + rng.laplace(0.0, scale * accuracy_width / math.sqrt(2),
                                                        size=min_accuracy.shape)
            noisy_latency = max_latency_ms + rng.laplace(0.0, scale * latency_width / math.sqrt(2),
                                                         size=max_latency_ms.shape)
            return noisy_accuracy, noisy_latency
        noisy_accuracy = min_accuracy + rng.normal(0.0, scale * accuracy_width, size=min_accuracy.shape)
        noisy_latency = max_latency_ms + rng.normal(0.0, scale * latency_width, size=max_latency_ms.shape)
        return noisy_accuracy, noisy_latency
