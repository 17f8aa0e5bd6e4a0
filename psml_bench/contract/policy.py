"""The routing policy's interface: choose a model per query from the menu."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Policy(ABC):
    """Chooses a model for each query from the menu."""

    name: str = ""

    @abstractmethod
    def select(self, accuracy: np.ndarray, latency_ms: np.ndarray, min_accuracy: np.ndarray,
               max_latency_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (menu index per query, whether the query's spec was feasible)."""
