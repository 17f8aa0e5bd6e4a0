"""The routing policy's interface: choose a model per query from the menu."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Policy(ABC):
    """Chooses a model for each query from the menu (a ``queue_aware`` one also routes online on the workers'
    predicted latency, ``route_online``: :mod:`psml_bench.serving.slo_routing`; ``select`` is its choice when idle)."""

    name: str = ""
    queue_aware: bool = False

    @abstractmethod
    def select(self, accuracy: np.ndarray, latency_ms: np.ndarray, min_accuracy: np.ndarray,
               max_latency_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (menu index per query, whether the query's spec was feasible)."""
