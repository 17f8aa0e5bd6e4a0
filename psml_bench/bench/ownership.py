"""The ownership test of watermarking defenses: how many watermark queries claim a suspect model.

A watermarking defense (``Defense.watermark_pairs``) keeps, per client, inputs it answered with
a keyed wrong label. A model trained without those answers agrees with a watermark label with
probability at most ``1 / (classes - 1)``: the label is drawn by the key uniformly among the
classes other than the one the service served, independently of anything such a model learnt.
The owner queries the suspect with the pairs in the order they were kept and, after each one,
runs a one-sided binomial test of the agreements so far against that chance rate; the suspect is
claimed at the first look whose p-value is at most ``FALSE_CLAIM_RATE / n_pairs`` (Bonferroni
over the looks, so the chance of ever claiming an independent model is at most
``FALSE_CLAIM_RATE``). ``ownership_queries`` is that look's number of queries.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

FALSE_CLAIM_RATE = 1e-3


def chance_agreement(num_classes: int) -> float:
    """The most an independent model agrees with keyed watermark labels: ``1 / (classes - 1)``."""
    return 1.0 / (num_classes - 1)


def ownership_queries(agrees: np.ndarray, num_classes: int, false_claim_rate: float = FALSE_CLAIM_RATE) -> float:
    """The watermark queries the owner needs to claim a model whose agreement per pair is ``agrees``; NaN: never.

    Args:
        agrees: per kept pair, in order, whether the suspect answers the watermark label.
        num_classes: classes of the task (the chance rate is ``1 / (num_classes - 1)``).
        false_claim_rate: the most often an independent model may be claimed.
    """
    agrees = np.asarray(agrees, dtype=bool)
    if not len(agrees):
        return math.nan
    looks = np.arange(1, len(agrees) + 1)
    # P(X >= k) for X ~ Binomial(n, chance), at every prefix n with k agreements
    p_values = binom.sf(np.cumsum(agrees) - 1, looks, chance_agreement(num_classes))
    claimed = np.flatnonzero(p_values <= false_claim_rate / len(agrees))
    return float(looks[claimed[0]]) if len(claimed) else math.nan
