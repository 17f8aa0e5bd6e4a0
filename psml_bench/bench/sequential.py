"""A block's sequential seeds as a grid declares them: the seed cap and the target half-width, checked.

A block with ``sequential_seeds = true`` (optional ``seed_cap``, ``target_half_width``) runs its declared
seeds, then the runner adds seeds to the configurations whose headline comparisons are not resolved
(:mod:`psml_bench.report.sequential_seeds` decides which). Neither field is part of a cell key: the cells
a block adds are the cells it would have with those seeds declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..contract.errors import ConfigError

TARGET_HALF_WIDTH = 0.01
"""A sequential block's headline comparison is resolved when its paired 95% half-width is at most this."""
SEED_CAP = 10
"""The most seeds a sequential block runs for one headline comparison (a failed seed counts)."""
MAX_SEED_CAP = 100


@dataclass(frozen=True)
class SequentialSeeds:
    """A block's sequential seeds (``sequential_seeds = true``): after its declared seeds, each headline comparison
    gets the next seed until its paired 95% half-width is at most ``target_half_width`` or it has ``seed_cap``."""

    seed_cap: int = SEED_CAP
    target_half_width: float = TARGET_HALF_WIDTH

    def seeds(self, declared: tuple[int, ...]) -> tuple[int, ...]:
        """Every seed the block may run: its declared ones and the next seeds of the fixed order 0, 1, 2, ...
        (a comparison with fewer than ``seed_cap`` seeds asks for the first it lacks, which is below the cap)."""
        return tuple(sorted({*declared, *range(self.seed_cap)}))


def read_sequential(entry: dict[str, Any], seeds: tuple[int, ...], source: str, where: str
                    ) -> SequentialSeeds | None:
    """The block's sequential seeds (None without ``sequential_seeds = true``), its cap and target checked."""
    if not entry.get("sequential_seeds", False):
        for name in ("seed_cap", "target_half_width"):
            if name in entry:
                raise ConfigError(f"{source}: field '{where}{name}': {name} applies to sequential seeds only; set "
                                  "sequential_seeds = true in the block, or remove it")
        return None
    cap, target, least = entry.get("seed_cap", SEED_CAP), entry.get("target_half_width", TARGET_HALF_WIDTH), \
        max(2, len(seeds))
    if isinstance(cap, bool) or not isinstance(cap, int) or not least <= cap <= MAX_SEED_CAP:
        raise ConfigError(f"{source}: field '{where}seed_cap': seed_cap must be an integer from {least} to "
                          f"{MAX_SEED_CAP} (two seeds at least, and no fewer than the block's {len(seeds)} declared "
                          f"seeds), got {cap!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ConfigError(f"{source}: field '{where}target_half_width': target_half_width must be a number in (0, 1] "
                          f"(the 95% half-width of a difference of fractions), got {target!r}")
    return SequentialSeeds(cap, float(target))
