"""A client's specification and the spec ranges a service advertises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import interval, spec_values


@dataclass(frozen=True)
class Spec:
    """A client's specification: the least accuracy and the most latency it accepts."""

    min_accuracy: float
    max_latency_ms: float

    def __post_init__(self) -> None:
        spec_values(self)


@dataclass(frozen=True)
class SpecRange:
    """The spec ranges a service advertises: accuracy in [lo, hi], latency in [lo, hi] ms."""

    accuracy: tuple[float, float]
    latency_ms: tuple[float, float]

    def __post_init__(self) -> None:
        interval("spec range accuracy", self.accuracy)
        interval("spec range latency_ms", self.latency_ms)

    def clip(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.clip(min_accuracy, *self.accuracy), np.clip(max_latency_ms, *self.latency_ms))

    def sample(self, n: int, rng: np.random.Generator) -> list[Spec]:
        """``n`` specs drawn uniformly from the advertised ranges."""
        accuracy, latency = rng.uniform(*self.accuracy, size=n), rng.uniform(*self.latency_ms, size=n)
        return [Spec(float(a), float(lat)) for a, lat in zip(accuracy, latency)]
