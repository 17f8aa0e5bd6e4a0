"""``psml-timing``: psml that tells the serving models apart by the latency it observes, not by their answers.

Under a latency-first policy every frontier model has its own profile latency, and a request that
finds its model's worker idle takes exactly that long; queueing and batching beside benign
requests only ever add to it (``docs/protocol.md``, section 4). With the service's
``latency_visible = true`` the attacker reads each row's latency (``Target.last_latency_ms``) and
fingerprints the frontier without comparing answers:

1. Sweep: with the latency bound at its advertised maximum, send ``repeats`` fresh pool inputs
   (natural queries, never the same input twice) at each of ``grid`` minimum-accuracy levels and
   keep the least latency of each level.
2. Denoise: as the floor rises the policy's model can only get slower, and noise only adds, so
   the serving model's latency at a level is at most the least latency seen at that level or any
   higher one (a suffix minimum). Consecutive levels whose estimates differ by at most
   ``latency_tolerance`` (relative) are one model.
3. Rank the models' regions as psml does (``rank_regions``) and extract through the centre of the
   target role's region, with psml's extraction (any ``strategy``, soft or hard labels).

Output defenses (noise, rounding, poisoning) change no latency, so they cannot blur this
fingerprint; routing defenses (``spec-noise``, ``random-routing``) still do. Unlike psml there is
no bisection (regions are resolved to the grid's spacing) and no adaptive variant. Without visible
latency the attack stops at once with a clear error (and a grid pairing it with such a service
fails to load).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from attacks.psml import Psml, rank_regions
from psml_bench import Allowed, ConfigError, Knowledge, Spec, Target, register_attack, sample_pool

log = logging.getLogger(__name__)


def latency_models(least: np.ndarray, tolerance: float) -> tuple[np.ndarray, list[int]]:
    """Per sweep level (floors ascending), the serving model's latency estimate and a model number.

    The estimate is the suffix minimum of the least latencies; a new model starts where it rises
    by more than ``tolerance`` (relative) above the current model's, and stands only if at least
    two of its levels saw that latency (within the tolerance) themselves: a busy worker's delays
    differ from level to level, a model's own latency repeats. Otherwise its levels join the
    model below.
    """
    least = np.asarray(least, dtype=float)
    estimate = np.minimum.accumulate(least[::-1])[::-1]
    models, current = [0], estimate[0]
    for i in range(1, len(estimate)):
        starts = estimate[i] > current * (1 + tolerance)
        seen = np.abs(least[i:] - estimate[i]) <= tolerance * estimate[i]
        if starts and seen.sum() >= 2:
            current = estimate[i]
            models.append(models[-1] + 1)
        else:
            models.append(models[-1])
    return estimate, models


@register_attack("psml-timing")
class PsmlTiming(Psml):
    """psml's fingerprinting with observed latency as the serving model's signature (needs latency_visible)."""

    requires_latency = True
    # no probe and no bisection: every observation queries fresh pool inputs
    defaults = {**{k: v for k, v in Psml.defaults.items() if k not in ("candidates", "tolerance", "adaptive", "trials")},
                "grid": 24, "repeats": 3, "latency_tolerance": 0.02}
    allowed = {"latency_tolerance": Allowed(minimum=0), "grid": Allowed(minimum=2, integer=True),
               "repeats": Allowed(minimum=1, integer=True)}

    def least_latency(self, target: Target, knowledge: Knowledge, spec: Spec, rng: np.random.Generator) -> float:
        """The least latency of ``repeats`` fresh pool inputs sent under ``spec`` (inf if all were refused)."""
        inputs = knowledge.pool[sample_pool(knowledge, int(self.params["repeats"]), rng)]
        target.query(inputs, spec, purpose="fingerprint")
        latency = target.last_latency_ms
        if latency is None:
            raise ConfigError(f"attack '{self.name}' got no latencies: the service must show them (latency_visible)")
        finite = latency[torch.isfinite(latency)]
        return float(finite.min()) if len(finite) else float("inf")

    def fingerprint(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> Spec:
        """The spec at the centre of the target role's region, found by observed latency."""
        if not knowledge.latency_visible:
            raise ConfigError(f"attack '{self.name}' needs the service to show latencies: set the service's "
                              "latency_visible = true in the grid")
        (a_lo, a_hi), (_, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
        levels = np.linspace(a_lo, a_hi, int(self.params["grid"]))
        least = np.array([self.least_latency(target, knowledge, Spec(float(level), l_hi), rng) for level in levels])
        estimate, models = latency_models(least, float(self.params["latency_tolerance"]))
        # a model seen only on busy workers looks slower than it is: look again at each one's middle
        # level, and count a level's latency as the least seen at it or above, again
        for model in sorted(set(models)):
            middle = int(np.flatnonzero(np.array(models) == model)[len(np.flatnonzero(np.array(models) == model)) // 2])
            least[middle] = min(least[middle], self.least_latency(target, knowledge, Spec(float(levels[middle]), l_hi),
                                                                  rng))
        estimate, models = latency_models(np.minimum(least, estimate), float(self.params["latency_tolerance"]))
        regions = rank_regions(list(zip(levels.tolist(), models)), a_lo, a_hi)
        log.info("psml-timing: %d models at latencies %s", len(regions),
                 [round(float(estimate[models.index(m)]), 4) for m in sorted(set(models))])
        rank = knowledge.rank
        if rank > len(regions):
            log.warning("psml-timing: found %d models but the target is rank:%d; taking the least accurate found",
                        len(regions), rank)
        _, lo, hi = regions[min(rank, len(regions)) - 1]
        return Spec((lo + hi) / 2, l_hi)
