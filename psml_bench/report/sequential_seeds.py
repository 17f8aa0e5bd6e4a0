"""Sequential seeds: a block's headline comparisons, whether each is resolved, and the cells its next seed needs.

A block may ask for sequential seeds (``sequential_seeds = true``, :mod:`psml_bench.bench.sequential`). Its
headline comparisons, per zoo, victim, budget and load, are psml - naive and psml - oracle without a
defense (the block's reference attacks, :meth:`~psml_bench.bench.grid.GridConfig.references`) and each
eligible defense setting's protection (:func:`psml_bench.report.ranking.protection_table`). After each
round, a comparison whose paired 95% half-width is above the block's target gets the next seed of a
fixed order (0, 1, 2, ...: the first not yet run for it), until it is resolved or has the block's cap of
seeds. A seed is *run* for a comparison when every (attack, defense) it needs has a row at that seed,
failed or not; a failed seed counts towards the cap, so a run always ends. The order is fixed and the
decision is a function of the cells alone, so a rerun asks for the same cells: :func:`cells_asked`
names them, the runner (:func:`psml_bench.runner.run_grid`) computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from ..bench.grid import Cell, GridConfig, threat_attack_label
from ..bench.row import CellRow
from ..bench.sequential import SEED_CAP, TARGET_HALF_WIDTH, SequentialSeeds
from .headline import BLIND, FINGERPRINTER
from .intervals import Estimate, t_interval
from .page_text import markdown_text
from .ranking import (NO_DEFENSE, BlockView, DefenseSetting, at_load, block_rows, describe_grid, ok_values,
    protection_table)
from .results import results_frame

ORACLE = "oracle"
RESOLVED, OPEN_AT_CAP, OPEN = "resolved", "open at the cap", "open"
SEQUENTIAL_COLUMNS = ["budget", "load", "comparison", "estimate", "seeds", "status", "reason"]


@dataclass(frozen=True)
class SeedDecision:
    """One headline comparison after a round: its estimate, whether it is resolved, the next seed it needs."""

    comparison: str
    estimate: Estimate
    resolved: bool
    next_seed: int | None
    reason: str

    @property
    def status(self) -> str:
        """``resolved``, ``open at the cap`` or ``open`` (it asks for another seed)."""
        return RESOLVED if self.resolved else OPEN if self.next_seed is not None else OPEN_AT_CAP


def decide(comparison: str, differences: Mapping[int, float], *, target: float = TARGET_HALF_WIDTH,
           cap: int = SEED_CAP) -> SeedDecision:
    """Whether ``comparison`` (its per-seed paired differences, NaN for a seed run whose cells failed) is resolved,
    and else the seed to add next.

    Resolved: at least two seeds and a 95% half-width at most ``target``. Open at the cap: ``cap``
    seeds run or more (failed ones included) and a wider interval (the reason says so). Otherwise the
    next seed is the first integer not yet run.
    """
    values = {s: v for s, v in differences.items() if not math.isnan(v)}
    estimate = t_interval(values[s] for s in sorted(values))
    failed = len(differences) - len(values)
    failures = f" ({failed} of them failed)" if failed else ""
    if estimate.n >= 2 and estimate.half_width <= target:
        return SeedDecision(comparison, estimate, True, None,
                            f"resolved: half-width {estimate.half_width:.4f} <= {target:g} with {estimate.n} seeds")
    width = "no interval" if estimate.n < 2 else f"half-width {estimate.half_width:.4f} > {target:g}"
    if len(differences) >= cap:
        return SeedDecision(comparison, estimate, False, None,
                            f"open at the cap of {cap} seeds{failures}: {width}")
    following = next(s for s in range(len(differences) + 1) if s not in differences)
    return SeedDecision(comparison, estimate, False, following, f"open: {width}; next seed {following}")


def seeds_to_run(decisions: list[SeedDecision]) -> dict[int, list[str]]:
    """The next round: per seed, the comparisons that ask for it (empty when all are resolved or capped)."""
    plan: dict[int, list[str]] = {}
    for decision in decisions:
        if decision.next_seed is not None:
            plan.setdefault(decision.next_seed, []).append(decision.comparison)
    return dict(sorted(plan.items()))


@dataclass(frozen=True)
class HeadlineComparison:
    """One headline comparison of a block at one (zoo, victim, budget, load): the (attack, defense) cells it needs
    and, per seed run for it, its paired difference (NaN where a cell failed)."""

    what: str
    zoo: str
    victim: str
    budget: int
    load: float
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    differences: dict[int, float]

    @property
    def name(self) -> str:
        return f"zoo {self.zoo}, victim {self.victim}, budget {self.budget}, load {self.load}: {self.what}"

    def covers(self, cell: Cell, zoo: str) -> bool:
        """Whether ``cell`` (on the zoo named ``zoo``) is one the comparison needs, at any seed."""
        return (zoo == self.zoo and cell.victim == self.victim and cell.budget == self.budget
                and (pd.isna(self.load) or cell.service.load == self.load)
                and row_label(cell) in self.attacks and cell.defense_plugin.label in self.defenses)


def row_label(cell: Cell) -> str:
    """The attack's label as the cell's row has it (:func:`psml_bench.bench.cell.row_identity`)."""
    return threat_attack_label(cell.attack_plugin.label, cell.attacker_data, cell.attacker_identities)


def seeds_run(rows: pd.DataFrame, attacks: Sequence[str], defenses: Sequence[str]) -> list[int]:
    """The seeds at which every (attack, defense) has a row among ``rows`` (failed or not)."""
    present = set(zip(rows["attack"], rows["defense"], rows["seed"].astype(int)))
    return sorted(s for s in set(rows["seed"].astype(int))
                  if all((a, d, s) in present for a in attacks for d in defenses))


def _differences(seeds: Sequence[int], first: Mapping[int, float], second: Mapping[int, float]) -> dict[int, float]:
    return {s: first[s] - second[s] if s in first and s in second else math.nan for s in seeds}


def attack_comparisons(rows: pd.DataFrame, block: BlockView, zoo: str) -> list[HeadlineComparison]:
    """psml - naive and psml - oracle (fidelity) without a defense, per victim, budget and load of ``rows``
    (the block's rows on ``zoo``)."""
    first = block.references.get(FINGERPRINTER)
    if first is None or NO_DEFENSE not in block.defenses:
        return []
    out = []
    undefended = rows[rows["defense"] == NO_DEFENSE]
    for (victim, budget, load), group in undefended.groupby(["victim", "budget", "load"], sort=True, dropna=False):
        for second in (block.references.get(name) for name in (BLIND, ORACLE)):
            if second is None:
                continue
            seeds = seeds_run(group, (first, second), (NO_DEFENSE,))
            out.append(HeadlineComparison(f"{first} - {second}", zoo, victim, int(budget), load, (first, second),
                                          (NO_DEFENSE,), _differences(
                                              seeds, ok_values(group[group["attack"] == first], "fidelity"),
                                              ok_values(group[group["attack"] == second], "fidelity"))))
    return out


def protection_comparisons(frame: pd.DataFrame, block: BlockView, settings: Mapping[str, DefenseSetting],
                           max_accuracy_drop: float, max_false_positives: float, zoo: str
                           ) -> list[HeadlineComparison]:
    """Each eligible defense setting's protection (as the defense tables compute it) on ``zoo`` (``frame``: its rows);
    a new seed runs every service attack of the block against the setting and without a defense."""
    table = protection_table(frame, [block], dict(settings), max_accuracy_drop, max_false_positives)
    rows = block_rows(frame, block)
    out = []
    for _, setting in table.iterrows():
        if setting["defense"] == NO_DEFENSE or setting["ineligible"]:
            continue
        group = rows[(rows["victim"] == setting["victim"]) & (rows["budget"] == setting["budget"])
                     & at_load(rows, setting["load"])]
        service = set(group[group["attack_access"] == "service"]["attack"])
        attacks = tuple(a for a in block.attacks if a in service)
        defenses = (NO_DEFENSE, setting["defense"])
        values = setting["protection_values"]
        out.append(HeadlineComparison(f"protection of {setting['defense']}", zoo, setting["victim"],
                                      int(setting["budget"]), setting["load"], attacks, defenses,
                                      {s: values.get(s, math.nan) for s in seeds_run(group, attacks, defenses)}))
    return out


def block_decisions(frame: pd.DataFrame, block: BlockView, settings: Mapping[str, DefenseSetting],
                    max_accuracy_drop: float, max_false_positives: float
                    ) -> list[tuple[HeadlineComparison, SeedDecision]]:
    """A sequential block's headline comparisons on every zoo of its rows, each with its decision (empty for a
    block without sequential seeds)."""
    if block.sequential is None:
        return []
    out = []
    rows = block_rows(frame, block)
    for zoo in sorted(set(rows["zoo"])):
        part = frame[frame["zoo"] == zoo]
        comparisons = attack_comparisons(rows[rows["zoo"] == zoo], block, zoo) + protection_comparisons(
            part, block, settings, max_accuracy_drop, max_false_positives, zoo)
        out += [(c, decide(c.name, c.differences, target=block.sequential.target_half_width,
                           cap=block.sequential.seed_cap)) for c in comparisons]
    return out


def grid_decisions(frame: pd.DataFrame, grid: GridConfig
                   ) -> list[tuple[BlockView, HeadlineComparison, SeedDecision]]:
    """Every headline comparison of ``grid``'s sequential blocks on ``frame`` (its rows, each naming its zoo as the
    grid does, e.g. a committed ``results.csv``), with its block's view and its decision, as its page decides."""
    views, settings = describe_grid(grid, {name: name for name in grid.zoos()})
    return [(view, comparison, decision) for view in views for comparison, decision in block_decisions(
        frame, view, settings, grid.max_accuracy_drop, grid.max_false_positives)]


def cells_asked(grid: GridConfig, rows: Sequence[CellRow], zoo_names: Mapping[str, str]) -> list[Cell]:
    """The cells of the next round of the grid's sequential blocks, computed or not (empty when every headline
    comparison is resolved or at its cap): per comparison that asks for a seed, the block's cells it needs at
    that seed. ``zoo_names``: each zoo's name (as rows have it) by the grid's name for it."""
    if all(block.sequential is None for block in grid.parts()):
        return []
    frame = results_frame(rows)
    views, settings = describe_grid(grid, dict(zoo_names) if len(zoo_names) > 1 else None)
    asked: list[Cell] = []
    for block, view in zip(grid.parts(), views):
        for comparison, decision in block_decisions(frame, view, settings, grid.max_accuracy_drop,
                                                    grid.max_false_positives):
            if decision.next_seed is not None:
                asked += [cell for cell in grid.block_cells(block, (decision.next_seed,))
                          if comparison.covers(cell, zoo_names[grid.zoo_of(cell)])]
    return list(dict.fromkeys(asked))


def sequential_rows(decided: Sequence[tuple[HeadlineComparison, SeedDecision]]) -> list[list[str]]:
    """The page's rows (:data:`SEQUENTIAL_COLUMNS`) for a block's comparisons at one (zoo, victim)."""
    return [[str(c.budget), str(c.load), markdown_text(c.what), d.estimate.format(), _seeds_text(c.differences),
             d.status, markdown_text(d.reason)] for c, d in decided]


def _seeds_text(differences: Mapping[int, float]) -> str:
    seeds = sorted(differences)
    failed = [s for s in seeds if math.isnan(differences[s])]
    listed = f"{seeds[0]}-{seeds[-1]}" if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 \
        else ", ".join(map(str, seeds)) or "none"
    return f"{len(seeds)} ({listed})" + (f"; failed: {', '.join(map(str, failed))}" if failed else "")


def sequential_text(block: BlockView, decided: Sequence[tuple[HeadlineComparison, SeedDecision]]) -> str:
    """The paragraph above a sequential block's table: the rule, and how many comparisons it resolved."""
    rule = block.sequential or SequentialSeeds()
    resolved = sum(d.resolved for _, d in decided)
    return (f"The block declares seeds {list(block.seeds)}; each headline comparison (`psml` - `naive` and `psml` - "
            f"`oracle` without a defense, each eligible setting's protection) whose paired 95% half-width is above "
            f"{rule.target_half_width:g} then gets the next seed of the order 0, 1, 2, ... (the first not yet run for "
            f"it), until it is resolved or has {rule.seed_cap} seeds (a failed seed counts; docs/protocol.md). "
            f"{resolved} of {len(decided)} resolved here.")


def sequential_sentences(block: BlockView, decided: Sequence[tuple[HeadlineComparison, SeedDecision]]) -> list[str]:
    """The headline's words on a sequential block, per zoo: how many comparisons are resolved, and the open ones."""
    rule = block.sequential or SequentialSeeds()
    sentences = []
    for zoo in dict.fromkeys(c.zoo for c, _ in decided):
        here = [(c, d) for c, d in decided if c.zoo == zoo]
        open_ones = [f"{markdown_text(c.what)} (victim `{c.victim}`, budget {c.budget}, load {c.load}: "
                     f"{d.estimate.format()}, {len(c.differences)} seeds, {d.status})"
                     for c, d in here if not d.resolved]
        sentences.append(f"Zoo `{zoo}`, block `{block.name}`, sequential seeds (resolved at a 95% half-width <= "
                         f"{rule.target_half_width:g}, at most {rule.seed_cap} seeds): "
                         f"{sum(d.resolved for _, d in here)} of {len(here)} headline comparisons resolved"
                         + (f"; open: {'; '.join(open_ones)}." if open_ones else "."))
    return sentences
