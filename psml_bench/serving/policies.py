"""The built-in routing policies."""

from __future__ import annotations

import numpy as np

from ..contract.policy import Policy
from ..contract.registries import register_policy


@register_policy("infaas")
class InfaasPolicy(Policy):
    """INFaaS-style selection on routing latency alone (queue-blind). Feasible spec: the lowest-latency model meeting
    it (ties: the lower accuracy); else the most accurate within the bound (ties: the faster), else the fastest."""

    def select(self, accuracy, latency_ms, min_accuracy, max_latency_ms):
        within_latency = latency_ms[None, :] <= max_latency_ms[:, None]
        feasible_models = within_latency & (accuracy[None, :] >= min_accuracy[:, None])
        feasible = feasible_models.any(axis=1)
        by_speed = np.lexsort((accuracy, latency_ms))           # fastest first, then less accurate
        by_accuracy = np.lexsort((latency_ms, -accuracy))       # most accurate first, then faster
        first_feasible = by_speed[np.argmax(feasible_models[:, by_speed], axis=1)]
        best_within = by_accuracy[np.argmax(within_latency[:, by_accuracy], axis=1)]
        fastest = np.lexsort((-accuracy, latency_ms))[0]
        fallback = np.where(within_latency.any(axis=1), best_within, fastest)
        return np.where(feasible, first_feasible, fallback), feasible
