"""The leaderboard's headline, in words and generated from the rows: the best attack per budget and by how much,
the zoo's ceiling of protection, and the best eligible setting of each defense family with its costs.

Every number is a mean over seeds with the half-width of its 95% t-interval; a difference between
two attacks is the paired per-seed difference (:func:`psml_bench.report.intervals.paired_difference`).
*The zoo's ceiling* is psml's fidelity minus naive's without a defense, seed by seed: a spec or
routing defense at best turns psml into naive, so it cannot protect more than that (it is shown
beside every protection number; an output or stateful defense can protect more).
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import pandas as pd

from .intervals import Estimate, paired_difference
from .ranking import FIXED, NO_DEFENSE, BlockView, block_rows, ok_values, track

FINGERPRINTER, BLIND = "psml", "naive"
"""The attack whose lead over the blind one is the zoo's ceiling of protection."""


def ceilings(frame: pd.DataFrame, blocks: Sequence[BlockView]) -> dict[tuple[str, str, int, float], Estimate]:
    """Per (zoo, victim, budget, load): psml's fidelity minus naive's without a defense, seed by seed, in the
    block that sweeps budgets without a defense (empty without one)."""
    block = _budget_block(blocks)
    if block is None:
        return {}
    rows = block_rows(frame, block)
    undefended = rows[(rows["defense"] == NO_DEFENSE) & (rows["status"] == "ok")]
    out = {}
    for (zoo, victim, budget, load), group in undefended.groupby(["zoo", "victim", "budget", "load"], sort=False,
                                                                 dropna=False):
        psml, naive = group[group["attack"] == FINGERPRINTER], group[group["attack"] == BLIND]
        if len(psml) and len(naive):
            out[_ceiling_key(zoo, victim, budget, load)] = paired_difference(ok_values(psml, "fidelity"),
                                                                             ok_values(naive, "fidelity"))
    return out


def _ceiling_key(zoo: str, victim: str, budget: int, load: float) -> tuple[str, str, int, float | None]:
    """A ceiling's key; a missing load (NaN, which equals nothing) as None."""
    return zoo, victim, budget, None if pd.isna(load) else load


def ceiling_of(found: Mapping[tuple, Estimate], zoo: str, victim: str, budget: int, load: float) -> Estimate | None:
    """The zoo's ceiling at (victim, budget, load) in ``found`` (:func:`ceilings`); None when it has none."""
    return found.get(_ceiling_key(zoo, victim, budget, load))


def _budget_block(blocks: Sequence[BlockView]) -> BlockView | None:
    """The first block that sweeps budgets without a defense (the headline's attack comparison)."""
    return next((b for b in blocks if len(b.budgets) > 1 and set(b.defenses) == {NO_DEFENSE}), None)


def _separated(value: Estimate) -> str:
    if value.n < 2 or math.isnan(value.half_width):
        return "one seed, no interval"
    return "the interval excludes 0" if value.low > 0 or value.high < 0 else "the seeds do not separate them"


def attack_sentences(frame: pd.DataFrame, blocks: Sequence[BlockView], zoo: str) -> list[str]:
    """Per victim and budget of the budget block: the best fixed-recipe service attack and its lead over the next."""
    block = _budget_block(blocks)
    if block is None:
        return []
    part = block_rows(frame[frame["zoo"] == zoo], block)
    part = part[(part["attack_access"] == "service") & (part["status"] == "ok")]
    sentences = []
    for (victim, budget), group in part.groupby(["victim", "budget"], sort=True):
        means = {}
        for attack, cells in group.groupby("attack", sort=True):
            if track(cells.iloc[0], block) == FIXED:
                values = ok_values(cells, "fidelity")
                means[attack] = (math.fsum(values.values()) / len(values), values) if values else None
        ranked = sorted((a for a in means if means[a]), key=lambda a: -means[a][0])
        if len(ranked) < 2:
            continue
        best, second = ranked[0], ranked[1]
        lead = paired_difference(means[best][1], means[second][1])
        ceiling = paired_difference(means[FINGERPRINTER][1], means[BLIND][1]) \
            if FINGERPRINTER in ranked and BLIND in ranked else None
        sentence = (f"Zoo `{zoo}`, victim `{victim}`, budget {int(budget)}, no defense: the best attack is `{best}` "
                    f"(fidelity {means[best][0]:.3f}), ahead of `{second}` by {lead.format()} (paired, n={lead.n}; "
                    f"{_separated(lead)}).")
        if ceiling is not None:
            sentence += (f" The zoo's ceiling of protection, `{FINGERPRINTER}` - `{BLIND}`: {ceiling.format()} "
                         f"({_separated(ceiling)}).")
        sentences.append(sentence)
    return sentences


def defense_sentences(table: pd.DataFrame, zoo: str, found: Mapping[tuple, Estimate]) -> list[str]:
    """Per defense family on ``zoo``: its eligible setting that protects most, with its costs and the zoo's ceiling;
    families by falling protection, those without an eligible setting last."""
    if table.empty:
        return []
    rows = table[(table["defense"] != NO_DEFENSE) & (table["zoo"] == zoo)] if "zoo" in table else table
    ranked, unranked = [], []
    for family, group in rows.groupby("family", sort=True):
        usable = group[(group["ineligible"] == "") & group["protection"].notna()]
        if usable.empty:
            reasons = sorted({re.match(r"[a-z. -]*[a-z]", r).group() for text in group["ineligible"]
                              for r in text.split("; ") if r})
            unranked.append(f"Zoo `{zoo}`, `{family}`: no eligible setting ({'; '.join(reasons)}).")
            continue
        best = usable.loc[usable["protection"].idxmax()]
        ceiling = ceiling_of(found, zoo, best["victim"], best["budget"], best["load"])
        ranked.append((-best["protection"], family, (
            f"Zoo `{zoo}`, `{family}`: `{best['defense']}` protects {best['protection_estimate'].format()} against "
            f"`{best['strongest_attack']}`" + (f" (zoo ceiling {ceiling.format()})" if ceiling is not None else "")
            + f" at a goodput ratio of {best['goodput_ratio_estimate'].format()}, benign accuracy drop "
              f"{best['benign_accuracy_drop']:.3f}, false-positive clients {best['false_positive_estimate'].format()} "
              f"(block `{best['block']}`, budget {int(best['budget'])}, load {best['load']}).")))
    return [sentence for _, _, sentence in sorted(ranked)] + unranked
