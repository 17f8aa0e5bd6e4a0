"""Uncertainty over seeds: 95% t-intervals of means and of paired differences, and ranks that share ties."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` seeds with the half-width of its two-sided 95% t-interval (NaN below two seeds)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def known(self) -> bool:
        """Whether there is a mean at all (at least one seed)."""
        return self.n > 0 and not math.isnan(self.mean)

    def format(self, digits: int = 3) -> str:
        """``mean ± half-width``, just the mean with one seed, ``—`` with none."""
        if not self.known:
            return "—"
        mean = f"{round(self.mean, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"
        return mean if math.isnan(self.half_width) else f"{mean} ± {self.half_width:.{digits}f}"


NO_ESTIMATE = Estimate(math.nan, math.nan, 0)


def t_interval(values: Iterable[float]) -> Estimate:
    """The mean of ``values`` (NaNs dropped) with its 95% Student-t interval: mean ± t(0.975, n-1) s / sqrt(n)."""
    data = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if data.size == 0:
        return NO_ESTIMATE
    if data.size == 1:
        return Estimate(float(data[0]), math.nan, 1)
    quantile = float(stats.t.ppf(0.5 + CONFIDENCE / 2, data.size - 1))
    return Estimate(float(data.mean()), quantile * float(data.std(ddof=1)) / math.sqrt(data.size), int(data.size))


def paired_difference(first: Mapping[int, float], second: Mapping[int, float]) -> Estimate:
    """``first - second`` seed by seed (the seeds both have), as a t-interval of the per-seed differences.

    The same seed gives the attack, the defense and the benign clients the same randomness, so the
    per-seed difference removes what the two share (the queried inputs, the surrogate's init).
    """
    seeds = sorted(set(first) & set(second))
    return t_interval([first[s] - second[s] for s in seeds])


def shared_ranks(estimates: Sequence[Estimate]) -> list[str]:
    """Ranks, highest mean first, where an entry's rank is 1 + the number of entries whose whole interval
    lies above its own; entries with the same rank share it (shown ``=2``). Entries without a mean get ``—``.

    Without intervals (one seed) an entry is outranked by every larger mean.
    """
    def above(other: Estimate, entry: Estimate) -> bool:
        if math.isnan(other.half_width) or math.isnan(entry.half_width):
            return other.mean > entry.mean
        return other.low > entry.high

    known = [e for e in estimates if e.known]
    ranks = [1 + sum(above(other, e) for other in known) if e.known else None for e in estimates]
    counts = {r: ranks.count(r) for r in ranks if r is not None}
    return ["—" if r is None else (f"={r}" if counts[r] > 1 else str(r)) for r in ranks]
