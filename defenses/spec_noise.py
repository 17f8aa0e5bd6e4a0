"""``spec-noise``: the PSML defense, noise on the client's spec before model selection."""

from __future__ import annotations

import numpy as np

from psml_bench import Defense, SpecRange, register_defense


@register_defense("spec-noise")
class SpecNoise(Defense):
    """Adds zero-mean Gaussian noise to both spec fields before the policy sees them.

    ``scale`` is the noise's standard deviation as a fraction of each advertised range's width:
    with accuracy advertised in [0.70, 0.96], ``scale = 0.02`` perturbs the accuracy floor by
    0.0052 (half a point) standard deviation, and the latency bound likewise. The noisy spec is
    clipped to the advertised ranges. Benign clients pay for the noise in goodput; an attacker
    loses the ability to pin a narrow region of the spec space.
    """

    strength = "scale"
    deterministic = False
    defaults = {"scale": 0.02}

    def perturb_spec(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray, spec_range: SpecRange,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = float(self.params["scale"])
        if scale < 0:
            raise ValueError(f"spec-noise: scale must be >= 0, got {scale}")
        accuracy_width = spec_range.accuracy[1] - spec_range.accuracy[0]
        latency_width = spec_range.latency_ms[1] - spec_range.latency_ms[0]
        noisy_accuracy = min_accuracy + rng.normal(0.0, scale * accuracy_width, size=min_accuracy.shape)
        noisy_latency = max_latency_ms + rng.normal(0.0, scale * latency_width, size=max_latency_ms.shape)
        return noisy_accuracy, noisy_latency
