"""``random-routing``: a moving target, some queries served by a random model meeting the spec."""

from __future__ import annotations

import numpy as np

from psml_bench import Allowed, Defense, register_defense


@register_defense("random-routing")
class RandomRouting(Defense):
    """Now and then serves a random model meeting the spec instead of the policy's choice.

    With probability ``probability`` per query, the model is drawn uniformly from the candidates,
    the models meeting the spec the policy saw; a query whose spec no model meets keeps the policy's
    choice. An attacker that pins the victim's region of the spec space still receives answers from
    every model meeting that spec, mixed in at random, so its training set is polluted and its
    fingerprints blur. ``probability = 0`` is the undefended service.

    Benign clients lose no goodput, since every candidate meets their spec, but they lose latency:
    the policy already serves the fastest model meeting the spec, so any other candidate is slower.
    """

    strength = "probability"
    deterministic = False
    defaults = {"probability": 0.5}
    allowed = {"probability": Allowed(minimum=0, maximum=1)}

    def reroute(self, served: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=bool)
        # both draws happen for every query, so a seed gives the same stream at every probability
        switch = rng.random(len(served)) < float(self.params["probability"])
        position = rng.random(len(served))
        counts = candidates.sum(axis=1)
        nth = np.floor(position * counts)  # 0-based rank of the drawn candidate within its row
        drawn = np.argmax(np.cumsum(candidates, axis=1) > nth[:, None], axis=1)
        return np.where(switch & (counts > 0), drawn, served)
