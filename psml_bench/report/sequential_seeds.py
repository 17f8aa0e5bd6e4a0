"""Sequential seeds: which headline comparisons need another seed, and which seed comes next.

A block may ask for sequential seeds: after each round, every headline comparison (psml - naive
and psml - oracle per budget, each eligible defense setting's protection) whose paired 95%
half-width is above ``target`` gets the next seed of a fixed order (0, 1, 2, ...: the first seed
not yet run), until it is resolved or has ``cap`` seeds. The order is fixed and the decision is a
function of the cells alone, so a rerun asks for the same cells. This module decides; running the
cells it asks for is the runner's (not done yet for the committed leaderboard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .intervals import Estimate, t_interval

TARGET_HALF_WIDTH = 0.01
SEED_CAP = 10


@dataclass(frozen=True)
class SeedDecision:
    """One headline comparison after a round: its estimate, whether it is resolved, the next seed it needs."""

    comparison: str
    estimate: Estimate
    resolved: bool
    next_seed: int | None
    reason: str


def decide(comparison: str, differences: Mapping[int, float], *, target: float = TARGET_HALF_WIDTH,
           cap: int = SEED_CAP) -> SeedDecision:
    """Whether ``comparison`` (its per-seed paired differences) is resolved, and else the seed to add next.

    Resolved: at least two seeds and a 95% half-width at most ``target``. Open at the cap: ``cap``
    seeds or more and a wider interval (the reason says so). Otherwise the next seed is the first
    integer not yet run.
    """
    values = {s: v for s, v in differences.items() if not math.isnan(v)}
    estimate = t_interval(values[s] for s in sorted(values))
    if estimate.n >= 2 and estimate.half_width <= target:
        return SeedDecision(comparison, estimate, True, None,
                            f"resolved: half-width {estimate.half_width:.4f} <= {target:g} with {estimate.n} seeds")
    if estimate.n >= cap:
        return SeedDecision(comparison, estimate, False, None,
                            f"open at the cap of {cap} seeds: half-width {estimate.half_width:.4f} > {target:g}")
    following = next(s for s in range(len(differences) + 1) if s not in differences)
    width = "no interval yet" if estimate.n < 2 else f"half-width {estimate.half_width:.4f} > {target:g}"
    return SeedDecision(comparison, estimate, False, following, f"open: {width}; next seed {following}")


def seeds_to_run(decisions: list[SeedDecision]) -> dict[int, list[str]]:
    """The next round: per seed, the comparisons that ask for it (empty when all are resolved or capped)."""
    plan: dict[int, list[str]] = {}
    for decision in decisions:
        if decision.next_seed is not None:
            plan.setdefault(decision.next_seed, []).append(decision.comparison)
    return dict(sorted(plan.items()))
