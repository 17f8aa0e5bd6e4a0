"""Ranks from paired comparisons over seeds, with Holm's correction, and how much pairing narrows intervals.

Every entry of one ranked table (the attacks of one (victim, defense, budget, load), or the defense
families of one (victim, block, budget, load)) ran on the same seeds, and a seed fixes the same
common random numbers in every cell (docs/protocol.md, "Common random numbers"): the attacker's
generator ``[seed, 1]`` (its pool draws, then its surrogate's init seed), the attacker-side server
``[seed, 2]``, the benign clients' specs ``[seed, 3]``, the benign-side server ``[seed, 4]``, the
benign arrivals, clients and pool rows ``[seed, 6]`` and the opaque client ids. What two entries
share for a seed therefore cancels in their per-seed difference.

An entry *beats* another when the paired difference of their per-seed values is significant at
5% after Holm's step-down correction over every pair of the table: a pair's two-sided paired
t-test p-value, ordered i = 1..m among the table's m pairs, is compared with 0.05 / (m - i + 1),
and the pairs before the first failure are separated. An entry's rank is 1 + the number of entries
that beat it; entries with equal ranks share them (``=k``). With fewer than two common seeds a
pair has no interval, and the larger mean wins (one seed: the mean alone).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy import stats

from .intervals import Estimate, paired_difference, t_interval

ALPHA = 0.05


def paired_p_value(difference: Estimate, values: Sequence[float]) -> float:
    """Two-sided p-value of a paired t-test that the mean per-seed difference is 0 (NaN below two seeds)."""
    if difference.n < 2:
        return math.nan
    spread = math.sqrt(math.fsum((v - difference.mean) ** 2 for v in values) / (difference.n - 1))
    if spread == 0.0:
        return 1.0 if difference.mean == 0.0 else 0.0
    statistic = difference.mean / (spread / math.sqrt(difference.n))
    return float(2 * stats.t.sf(abs(statistic), difference.n - 1))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha`` (NaN: never)."""
    order = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: (p_values[i], i))
    rejected = [False] * len(p_values)
    m = len(order)
    for step, index in enumerate(order):
        if p_values[index] > alpha / (m - step):
            break
        rejected[index] = True
    return rejected


@dataclass(frozen=True)
class PairedRanking:
    """The ranks of a table's entries and, per pair (i, j) with i < j, whether i - j is separated."""

    ranks: list[str]
    beats: dict[tuple[int, int], bool]


def paired_ranks(values: Sequence[Mapping[int, float]]) -> PairedRanking:
    """Ranks of entries given their per-seed values (see the module docstring); ``—`` for an entry without any."""
    known = [i for i, v in enumerate(values) if any(not math.isnan(x) for x in v.values())]
    clean = [{s: x for s, x in v.items() if not math.isnan(x)} for v in values]
    pairs = list(itertools.combinations(known, 2))
    differences, p_values = [], []
    for i, j in pairs:
        seeds = sorted(set(clean[i]) & set(clean[j]))
        per_seed = [clean[i][s] - clean[j][s] for s in seeds]
        difference = paired_difference(clean[i], clean[j])
        differences.append(difference)
        p_values.append(paired_p_value(difference, per_seed))
    rejected = holm(p_values)
    beats: dict[tuple[int, int], bool] = {}
    for (i, j), difference, p, separated in zip(pairs, differences, p_values, rejected):
        if math.isnan(p):  # no interval: the larger mean wins
            mean_i, mean_j = t_interval(clean[i].values()).mean, t_interval(clean[j].values()).mean
            beats[(i, j)], beats[(j, i)] = mean_i > mean_j, mean_j > mean_i
        else:
            beats[(i, j)], beats[(j, i)] = separated and difference.mean > 0, separated and difference.mean < 0
    ranks = [1 + sum(beats.get((j, i), False) for j in known) if i in known else None for i in range(len(values))]
    counts = {r: ranks.count(r) for r in ranks if r is not None}
    return PairedRanking(["—" if r is None else (f"={r}" if counts[r] > 1 else str(r)) for r in ranks], beats)


@dataclass(frozen=True)
class Narrowing:
    """Over the pairs of ranked tables: the paired half-width of a difference against the unpaired ones."""

    pairs: int
    median_vs_welch: float
    """Median ratio of the paired half-width to the unpaired (Welch) half-width of the same difference."""
    median_vs_overlap: float
    """Median ratio of the paired half-width to the sum of the two entries' half-widths (what two intervals must
    clear not to overlap, the rule paired ranks replace)."""
    separated_paired: int
    separated_overlap: int

    def sentence(self) -> str:
        if not self.pairs:
            return ""
        return (f"Pairing narrows the intervals: over the {self.pairs} pairs of entries of the ranked tables, the "
                f"paired 95% half-width of a difference is a median {self.median_vs_welch:.2f} of the unpaired "
                f"(Welch) one and {self.median_vs_overlap:.2f} of the sum of the two half-widths that "
                f"non-overlapping intervals need; {self.separated_paired} pairs are separated with Holm's "
                f"correction, {self.separated_overlap} by non-overlapping intervals.")


def welch_half_width(first: Sequence[float], second: Sequence[float]) -> float:
    """Half-width of the 95% Welch interval of mean(first) - mean(second) (NaN below two values each)."""
    if len(first) < 2 or len(second) < 2:
        return math.nan
    a, b = t_interval(first), t_interval(second)
    var_a = (a.half_width / stats.t.ppf(0.975, a.n - 1)) ** 2
    var_b = (b.half_width / stats.t.ppf(0.975, b.n - 1)) ** 2
    if var_a + var_b == 0:
        return 0.0
    dof = (var_a + var_b) ** 2 / (var_a ** 2 / (a.n - 1) + var_b ** 2 / (b.n - 1))
    return float(stats.t.ppf(0.975, dof) * math.sqrt(var_a + var_b))


def narrowing(tables: Sequence[Sequence[Mapping[int, float]]]) -> Narrowing:
    """How much pairing narrows the difference intervals of every pair of entries of ``tables``."""
    versus_welch, versus_overlap, paired_count, overlap_count = [], [], 0, 0
    for values in tables:
        ranking = paired_ranks(values)
        for i, j in itertools.combinations(range(len(values)), 2):
            first = {s: x for s, x in values[i].items() if not math.isnan(x)}
            second = {s: x for s, x in values[j].items() if not math.isnan(x)}
            paired = paired_difference(first, second)
            if paired.n < 2 or len(first) < 2 or len(second) < 2:
                continue
            a, b = t_interval(first.values()), t_interval(second.values())
            welch = welch_half_width(list(first.values()), list(second.values()))
            if welch > 0:
                versus_welch.append(paired.half_width / welch)
            if a.half_width + b.half_width > 0:
                versus_overlap.append(paired.half_width / (a.half_width + b.half_width))
            paired_count += ranking.beats[(i, j)] or ranking.beats[(j, i)]
            overlap_count += a.low > b.high or b.low > a.high
    median = lambda xs: float(sorted(xs)[len(xs) // 2]) if len(xs) % 2 else \
        (float(sum(sorted(xs)[len(xs) // 2 - 1: len(xs) // 2 + 1]) / 2) if xs else math.nan)  # noqa: E731
    return Narrowing(len(versus_overlap), median(versus_welch), median(versus_overlap), paired_count, overlap_count)
