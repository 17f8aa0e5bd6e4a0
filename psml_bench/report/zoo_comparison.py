"""The headline comparisons of a grid on several zoos, side by side: attack differences and spec-defense protection.

Every number is computed within one zoo, as the per-zoo tables compute it (paired differences over
seeds, :mod:`psml_bench.report.intervals`; eligibility from :func:`psml_bench.report.ranking.protection_table`),
then set beside the same comparison on the other zoos with a sentence on whether they agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from .intervals import NO_ESTIMATE, Estimate, paired_difference
from .ranking import NO_DEFENSE, BlockView, DefenseSetting, at_load, block_rows, np_mean, ok_values

# (attack, minus attack, metric): the differences the paper reports, compared across zoos
ATTACK_DIFFERENCES = (("psml", "oracle", "fidelity"), ("psml", "naive", "fidelity"), ("psml", "naive", "accuracy"))
NONE_ELIGIBLE = "no eligible setting"
STRONGEST = "strongest attack"
"""The comparison row of the defense tables' own protection (against the strongest attack)."""


@dataclass(frozen=True)
class Comparison:
    """One comparison on every zoo: its estimate per zoo (and, for a defense, the setting it was best at)."""

    what: str
    victim: str
    block: str
    budget: int
    load: str
    estimates: dict[str, Estimate]
    settings: dict[str, str]

    def agreement(self) -> str:
        """Whether the sign agrees on every zoo and where the interval excludes 0 (see :func:`agreement`)."""
        return agreement(self.estimates)


def excludes_zero(value: Estimate) -> bool:
    """Whether the 95% interval lies wholly above or below 0 (never with one seed: there is no interval)."""
    return value.known and not math.isnan(value.half_width) and (value.low > 0 or value.high < 0)


def _sign(value: float) -> str:
    return "+" if value > 0 else "-" if value < 0 else "0"


def _names(zoos: Sequence[str]) -> str:
    return ", ".join(f"`{z}`" for z in zoos)


def agreement(estimates: Mapping[str, Estimate]) -> str:
    """A sentence of facts: the sign of the mean on each zoo and on which zoos the interval excludes 0."""
    def on(zoos: list[str]) -> str:
        if len(zoos) < len(estimates):
            return _names(zoos)
        return "both zoos" if len(zoos) == 2 else f"all {len(zoos)} zoos"

    known = {zoo: e for zoo, e in estimates.items() if e.known}
    signs = {zoo: _sign(round(e.mean, 3)) for zoo, e in known.items()}  # the sign of the mean as shown
    if len(known) < 2:
        parts = [f"Sign {s} on `{zoo}` only" for zoo, s in signs.items()]
    else:
        parts = [f"Same sign ({next(iter(signs.values()))}) on {on(list(known))}" if len(set(signs.values())) == 1
                 else "Sign differs: " + ", ".join(f"{s} on `{zoo}`" for zoo, s in signs.items())]
    excluding = [zoo for zoo, e in known.items() if excludes_zero(e)]
    including = [zoo for zoo, e in known.items() if not math.isnan(e.half_width) and zoo not in excluding]
    single = [zoo for zoo, e in known.items() if math.isnan(e.half_width)]
    if excluding:
        parts.append(f"the interval excludes 0 on {on(excluding)}")
    if including:
        parts.append(f"{'it' if excluding else 'the interval'} includes 0 on {on(including)}")
    if single:
        parts.append(f"one seed (no interval) on {_names(single)}")
    missing = [zoo for zoo in estimates if zoo not in known]
    if missing:
        parts.append(f"no estimate on {_names(missing)}")
    return "; ".join(parts) + "."


def _kept(found: dict[tuple, Comparison], zoos: Sequence[str]) -> list[Comparison]:
    """The comparisons made on at least two zoos, each with every zoo (an absent one: no estimate)."""
    out = []
    for comparison in found.values():
        if len(comparison.estimates) >= 2:
            estimates = {z: comparison.estimates.get(z, Estimate(math.nan, math.nan, 0)) for z in zoos}
            out.append(Comparison(comparison.what, comparison.victim, comparison.block, comparison.budget,
                                  comparison.load, estimates, comparison.settings))
    return out


def attack_differences(frames: Mapping[str, pd.DataFrame], blocks: Sequence[BlockView]) -> list[Comparison]:
    """Per victim, budget and load, the differences of :data:`ATTACK_DIFFERENCES` without a defense, per zoo.

    Taken from the blocks that ran all three attacks and the undefended service; each is the mean of
    the per-seed paired difference with its 95% t-interval.
    """
    found: dict[tuple, Comparison] = {}
    for block in blocks:
        needed = {a for first, second, _ in ATTACK_DIFFERENCES for a in (first, second)}
        if not needed <= set(block.attacks) or NO_DEFENSE not in block.defenses:
            continue
        for zoo, frame in frames.items():
            rows = block_rows(frame, block)
            rows = rows[rows["defense"] == NO_DEFENSE]
            for (victim, budget, load), group in rows.groupby(["victim", "budget", "load"], sort=False, dropna=False):
                for first, second, metric in ATTACK_DIFFERENCES:
                    what = f"{first} - {second}, {metric}"
                    key = (what, victim, int(budget), str(load))
                    comparison = found.setdefault(key, Comparison(what, victim, block.name, int(budget), str(load),
                                                                  {}, {}))
                    if zoo not in comparison.estimates:
                        comparison.estimates[zoo] = paired_difference(
                            ok_values(group[group["attack"] == first], metric),
                            ok_values(group[group["attack"] == second], metric))
    return _kept(found, list(frames))


def spec_protections(frames: Mapping[str, pd.DataFrame], table: pd.DataFrame, blocks: Sequence[BlockView],
                     settings: Mapping[str, DefenseSetting]) -> list[Comparison]:
    """Per victim, block, budget and load, the best eligible spec or routing defense setting's protection, per zoo.

    ``table``: :func:`psml_bench.report.ranking.protection_table` of every zoo's rows with a ``zoo`` column;
    its ``ineligible`` says which settings may count. Per service attack of the block, protection is
    the per-seed paired difference between that attack's undefended fidelity and its fidelity against
    the setting; the row ``strongest attack`` is the table's own protection (best attack undefended
    minus the strongest attack against the setting), as the defense tables rank it.
    """
    found: dict[tuple, Comparison] = {}
    if table.empty:
        return []
    routing = {label for label, setting in settings.items() if setting.routing}
    ran = table[table["defense"].isin(routing)]
    for block in blocks:
        for zoo, frame in frames.items():
            rows = block_rows(frame, block)
            chosen = ran[(ran["block"] == block.name) & (ran["zoo"] == zoo)]
            for (victim, budget, load), every in chosen.groupby(["victim", "budget", "load"], sort=False,
                                                                dropna=False):
                part = every[every["ineligible"] == ""]
                cells = rows[(rows["victim"] == victim) & (rows["budget"] == budget) & at_load(rows, load)]
                service = [a for a in block.attacks
                           if (cells[cells["attack"] == a]["attack_access"] == "service").any()]
                best = {STRONGEST: max(((r["defense"], r["protection_estimate"]) for _, r in part.iterrows()),
                                       key=lambda item: np_mean(item[1]), default=(NONE_ELIGIBLE, NO_ESTIMATE))}
                for attack in service:
                    base = ok_values(cells[(cells["attack"] == attack) & (cells["defense"] == NO_DEFENSE)], "fidelity")
                    best[attack] = max(((d, paired_difference(base, ok_values(
                        cells[(cells["attack"] == attack) & (cells["defense"] == d)], "fidelity")))
                        for d in part["defense"]), key=lambda item: np_mean(item[1]),
                        default=(NONE_ELIGIBLE, NO_ESTIMATE))
                for what in [*service, STRONGEST]:
                    comparison = found.setdefault((what, victim, block.name, int(budget), str(load)), Comparison(
                        what, victim, block.name, int(budget), str(load), {}, {}))
                    comparison.settings[zoo], comparison.estimates[zoo] = best[what]
    return _kept(found, list(frames))

