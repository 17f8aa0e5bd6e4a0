"""``psml``: fingerprint the service to find a spec that reaches the victim, then extract.

The PSML attack (arXiv 2307.01292) without knowing the menu:

1. Probe: query ``candidates`` pool inputs once under a lax spec and keep the one with the
   most uncertain answer; different models answer it with visibly different probabilities.
2. Sweep: with the latency bound at its advertised maximum (every model fast enough), query
   the probe at ``grid`` minimum-accuracy levels. Under a latency-first policy the served
   model changes exactly where the accuracy floor passes a frontier model's accuracy, so
   identical answers mark one model's region of the spec space.
3. Refine: bisect between neighbouring levels answered by different models, down to
   ``tolerance`` in accuracy, finding every boundary (and any model hidden in between).
4. Rank the distinct models by where they sit on the accuracy axis (the top one is the most
   accurate: rank:1), pick the target role's region and send every remaining query with the
   spec at its centre, the point deepest inside it.

The fingerprint's cost adapts to the budget: when ``candidates + grid`` exceeds
``fingerprint_share`` of the budget, both shrink by the same factor (at least 4 candidates and 6
levels) and the bisection stops earlier (``tolerance`` divided by that factor), so a small budget
keeps most of its queries for extraction. Budgets of 400 and more (at the defaults) are unaffected.

Each observation repeats the probe ``repeats`` times and keeps the most frequent answer, so
a randomised service can be fingerprinted at proportional cost. All fingerprint queries are
sent with ``purpose="fingerprint"`` and counted by the server.

``adaptive = true`` is the attacker that expects spec noise (or any randomised routing):

5. Latency: at the region's centre, bisect the latency bound down to where the target stops
   answering, which locates the target's latency.
6. Estimate, by ``trials`` repeated probes per candidate, how often each candidate spec (3
   accuracy floors from the region's centre to just below its top, times 3 latency bounds
   between the target's latency and the advertised maximum) reaches the target, and extract
   through the best one. A floor near the top of the region keeps downward noise inside it,
   and a latency bound below the next more accurate model's latency turns upward noise into
   an infeasible spec whose fallback is again the target. The search (about ``7 * repeats +
   9 * trials`` queries) is skipped, keeping the region's centre, when it would leave less than
   half the budget for extraction.
7. ``requery = true``: send every extraction input twice and keep only answers whose two
   replies agree (the same model answered both; with a hit rate above one half that is most
   likely the target), falling back to all first replies if fewer than a tenth agree. The
   second replies count against the budget like any query. Requery samples the pool at random
   (it ignores ``strategy``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import torch

from psml_bench import (SURROGATE_DEFAULTS, Attack, Knowledge, Spec, SurrogateConfig, Target, extract,
                        query_batched, register_attack, sample_pool, train_surrogate)

log = logging.getLogger(__name__)

# answers of one model to one input differ only by float noise across batch compositions
SAME_ANSWER = 1e-4


class _Fingerprinter:
    """Observes which model (by answer signature) serves the probe at a given accuracy floor."""

    def __init__(self, target: Target, probe: torch.Tensor, max_latency: float, repeats: int):
        self.target, self.probe, self.max_latency, self.repeats = target, probe, max_latency, repeats
        self.signatures: list[torch.Tensor] = []
        self.observations: list[tuple[float, int]] = []

    def _identify(self, answer: torch.Tensor) -> int:
        for index, signature in enumerate(self.signatures):
            if float((signature - answer).abs().max()) < SAME_ANSWER:
                return index
        self.signatures.append(answer)
        return len(self.signatures) - 1

    def answers(self, spec: Spec, repeats: int) -> Counter:
        """How often each model (by signature) answered ``repeats`` probes under ``spec``."""
        answers = self.target.query(self.probe.expand(repeats, *self.probe.shape[1:]), spec, purpose="fingerprint")
        return Counter(self._identify(answer) for answer in answers)

    def observe(self, min_accuracy: float, max_latency: float | None = None) -> int:
        """The model answering most often at this accuracy floor (latency bound: the advertised maximum)."""
        counts = self.answers(Spec(float(min_accuracy), self.max_latency if max_latency is None else max_latency),
                              self.repeats)
        model = max(counts, key=lambda m: (counts[m], -m))
        if max_latency is None:
            self.observations.append((float(min_accuracy), model))
        return model

    def bisect(self, low: float, low_model: int, high: float, high_model: int, tolerance: float) -> None:
        if high - low <= tolerance:
            return
        middle = (low + high) / 2
        model = self.observe(middle)
        if model != low_model:
            self.bisect(low, low_model, middle, model, tolerance)
        if model != high_model:
            self.bisect(middle, model, high, high_model, tolerance)


def rank_regions(observations: list[tuple[float, int]], low: float, high: float) -> list[tuple[int, float, float]]:
    """Distinct models with their widest region ``(model, lo, hi)``, most accurate first.

    Models are ordered by the median accuracy floor at which they answered: under a
    latency-first policy a higher floor reaches a more accurate model.
    """
    ordered = sorted(observations)
    runs: list[tuple[int, float, float]] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i][1] != ordered[start][1]:
            lo = low if start == 0 else (ordered[start - 1][0] + ordered[start][0]) / 2
            hi = high if i == len(ordered) else (ordered[i - 1][0] + ordered[i][0]) / 2
            runs.append((ordered[start][1], lo, hi))
            start = i
    by_model: dict[int, list[float]] = {}
    for level, model in ordered:
        by_model.setdefault(model, []).append(level)
    widest = {}
    for model, lo, hi in runs:
        if model not in widest or hi - lo > widest[model][1] - widest[model][0]:
            widest[model] = (lo, hi)
    models = sorted(by_model, key=lambda m: -float(np.median(by_model[m])))
    return [(m, *widest[m]) for m in models]


@register_attack("psml")
class Psml(Attack):
    """Fingerprinting (sweep + bisection of the accuracy floor), then extraction through the found spec."""

    defaults = {**SURROGATE_DEFAULTS, "grid": 24, "tolerance": 0.002, "repeats": 1, "candidates": 16,
                "adaptive": False, "trials": 16, "requery": False, "fingerprint_share": 0.1}

    def sweep_plan(self, budget: int) -> tuple[int, int, float]:
        """Probe candidates, sweep levels and bisection tolerance for ``budget``: the parameters, scaled down
        (tolerance up) when probe and sweep alone would take more than ``fingerprint_share`` of the budget."""
        candidates, levels = int(self.params["candidates"]), int(self.params["grid"])
        tolerance = float(self.params["tolerance"])
        scale = float(self.params["fingerprint_share"]) * budget / (candidates + levels)
        if scale >= 1:
            return candidates, levels, tolerance
        return max(4, math.ceil(candidates * scale)), max(6, math.ceil(levels * scale)), tolerance / max(scale, 0.1)

    def fingerprint(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> Spec:
        """Find the spec deepest inside the target role's region (adaptive: the one reaching it most often)."""
        (a_lo, a_hi), (_, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
        n_candidates, n_levels, tolerance = self.sweep_plan(budget)
        candidates = knowledge.pool[sample_pool(knowledge, n_candidates, rng)]
        answers = target.query(candidates, Spec(a_lo, l_hi), purpose="fingerprint")
        entropy = -(answers * answers.clamp_min(1e-12).log()).sum(dim=1)
        probe = candidates[int(entropy.argmax())].unsqueeze(0)
        fingerprinter = _Fingerprinter(target, probe, l_hi, int(self.params["repeats"]))
        levels = np.linspace(a_lo, a_hi, n_levels)
        models = [fingerprinter.observe(level) for level in levels]
        for i in range(len(levels) - 1):
            if models[i] != models[i + 1]:
                fingerprinter.bisect(levels[i], models[i], levels[i + 1], models[i + 1], tolerance)
        regions = rank_regions(fingerprinter.observations, a_lo, a_hi)
        rank = knowledge.rank
        if rank > len(regions):
            log.warning("psml: found %d models but the target is rank:%d; taking the least accurate found",
                        len(regions), rank)
        model, lo, hi = regions[min(rank, len(regions)) - 1]
        if not self.params["adaptive"]:
            return Spec((lo + hi) / 2, l_hi)
        search_cost = 7 * int(self.params["repeats"]) + 9 * int(self.params["trials"])
        remaining = target.remaining_budget
        if remaining is not None and remaining - search_cost < budget / 2:
            log.warning("psml adaptive: %d queries left of %d, too few for the spec search; using the region's centre",
                        remaining, budget)
            return Spec((lo + hi) / 2, l_hi)
        return self._best_spec(fingerprinter, model, lo, hi, knowledge)

    def _best_spec(self, fingerprinter: _Fingerprinter, model: int, lo: float, hi: float, knowledge: Knowledge) -> Spec:
        """Steps 5 and 6: the candidate spec that most often reaches ``model``, estimated by repeated probes."""
        l_lo, l_hi = knowledge.spec_range.latency_ms
        centre = (lo + hi) / 2
        low, high = l_lo, l_hi  # the target answers at l_hi; find the least bound where it still does
        while high - low > 0.01 * (l_hi - l_lo):
            middle = (low + high) / 2
            if fingerprinter.observe(centre, middle) == model:
                high = middle
            else:
                low = middle
        floors = [lo + f * (hi - lo) for f in (0.5, 0.8, 0.95)]
        bounds = [high + g * (l_hi - high) for g in (0.25, 0.5, 1.0)]
        trials = int(self.params["trials"])
        hits = {(a, l): fingerprinter.answers(Spec(a, l), trials)[model] for a in floors for l in bounds}
        (a, l), best = max(hits.items(), key=lambda item: item[1])
        log.info("psml adaptive: spec (%.4f, %.2f ms) reached the target in %d of %d probes", a, l, best, trials)
        return Spec(a, l)

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        spec = self.fingerprint(target, knowledge, budget, rng)
        remaining = target.remaining_budget
        remaining = budget if remaining is None else remaining
        config = SurrogateConfig.from_params(self.params)
        if not self.params["requery"]:
            return extract(target, knowledge, spec, remaining, rng, config)
        inputs = knowledge.pool[sample_pool(knowledge, remaining // 2, rng)]
        first = query_batched(target, inputs, spec)
        second = query_batched(target, inputs, spec)
        agree = (first - second).abs().amax(dim=1) < SAME_ANSWER
        keep = agree if agree.float().mean() >= 0.1 else torch.ones_like(agree)
        log.info("psml requery: %d of %d answers agree", int(agree.sum()), len(inputs))
        return train_surrogate(inputs[keep], first[keep], knowledge, config, rng)


@register_attack("psml-adaptive")
class PsmlAdaptive(Psml):
    """psml expecting spec noise: majority-vote fingerprinting, then the spec that reaches the target most often."""

    defaults = {**Psml.defaults, "adaptive": True, "repeats": 3, "grid": 12, "trials": 8}
