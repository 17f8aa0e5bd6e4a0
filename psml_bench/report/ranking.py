"""Ranking a grid's rows: attacks per block and track, defense settings under the utility constraint, families.

Every number that ranks comes with a 95% t-interval over seeds (:mod:`psml_bench.report.intervals`);
entries are ranked by paired comparisons over their common seeds with Holm's correction
(:mod:`psml_bench.report.paired_ranks`). Protection and the goodput ratio are measured per block,
against the same block's undefended cells, as paired comparisons over seeds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from ..bench.grid import DEFAULT_RECIPE, MAX_FALSE_POSITIVES, RECIPE_FIELDS, GridConfig, threat_attack_label
from ..bench.sequential import SequentialSeeds
from .page_text import markdown_code
from ..contract.surrogate_config import SurrogateConfig
from .intervals import NO_ESTIMATE, Estimate, paired_difference, t_interval
from .paired_ranks import paired_ranks
from ..zoo.attacker_data import IN_DISTRIBUTION
from .threats import threat_label, threat_settings

# the utility constraint: a setting must keep this share of the undefended service's goodput, as the
# paired goodput ratio (without load the undefended goodput is 1, so this is the paper's goodput >= 0.8)
GOODPUT_SHARE = 0.8
# a setting whose goodput ratio is within this of 1 costs no goodput (under load, a defense that does
# not touch routing still differs by the noise of one benign stream)
GOODPUT_TOLERANCE = 0.005
# the cells a goodput ratio pairs: the same cell with the defense replaced by none
PAIR_FIELDS = ("zoo", "victim", "attack", "budget", "seed", "load", "benign_clients", "attacker_rate",
               "latency_visible", "attacker_data", "attacker_identities")
NO_DEFENSE = "none"
# sanity limits beyond which a defense setting is flagged as degenerate (it answers, in effect, something else)
DEGENERATE_ACCURACY_DROP = 0.5
DEGENERATE_PERTURBATION = 0.9
FIXED, OWN = "fixed recipe", "own training"
FLAGS_NOT_COMPUTED = "flags not computed"


@dataclass(frozen=True)
class DefenseSetting:
    """How a defense label reads: its family (the label without the strength) and its strength.

    ``routing``: whether the defense acts on the spec or the routing choice only (see
    :func:`psml_bench.bench.grid.acts_on_routing`).
    """

    family: str
    strength: str | None
    value: Any
    routing: bool = False


@dataclass(frozen=True)
class BlockView:
    """The labels of one grid block, to pick its rows out of the results, and its training recipe.

    ``declared``: per attack label, whether its parameters train the surrogate with the block's
    recipe; ``submitted``: the attack labels that are submissions (their recipe must be verified).
    """

    name: str
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    budgets: tuple[int, ...]
    loads: tuple[float, ...] = ()
    recipe: tuple[tuple[str, Any], ...] = DEFAULT_RECIPE
    declared: dict[str, bool] = field(default_factory=dict)
    submitted: frozenset[str] = frozenset()
    seeds: tuple[int, ...] = ()
    zoos: tuple[str, ...] = ()
    """The names of the zoos the block runs on (empty: every zoo of the rows)."""
    attacker_data: str = IN_DISTRIBUTION
    attacker_identities: int = 1
    """The threat setting of the view's rows: a block with several is one view per setting (:func:`describe_grid`)."""
    sequential: SequentialSeeds | None = None
    """The block's sequential seeds, if it asks for them: its rows may have seeds beyond ``seeds``."""
    references: dict[str, str] = field(default_factory=dict)
    """The labels of its reference attacks (psml, naive, oracle; :meth:`GridConfig.references`)."""

    @property
    def row_seeds(self) -> tuple[int, ...]:
        """The seeds its rows may have: the declared ones, and those sequential seeds may add."""
        return self.seeds if self.sequential is None else self.sequential.seeds(self.seeds)


def recipe_text(recipe: Sequence[tuple[str, Any]] | dict[str, Any]) -> str:
    """A block's recipe as one string, e.g. ``test_resnet, epochs=10, min_steps=200`` (as rows record it)."""
    values = dict(recipe)
    return SurrogateConfig(arch=values["surrogate"], epochs=int(values["epochs"]),
                           min_steps=int(values["min_steps"])).recipe()


def describe_grid(grid: GridConfig, zoo_names: dict[str, str] | None = None
                  ) -> tuple[list[BlockView], dict[str, DefenseSetting]]:
    """The grid's blocks as labels, and every defense label's family and strength (from the resolved plugins).

    ``zoo_names``: each zoo's name (as rows record it) by the name the grid gives it; with it, a block's
    rows are those of its zoos only (needed when the grid runs on several zoos).
    """
    settings = {}
    for spec in grid.defenses:
        defense = grid.plugin("defense", spec)
        settings[defense.label] = DefenseSetting(defense.family, defense.strength, defense.strength_value,
                                                  defense.acts_on_routing)
    views = []
    for block in grid.parts():
        threats = list(itertools.product(block.attacker_data, block.attacker_identities))
        declared, submitted = {}, set()
        for spec in block.attacks:
            attack = grid.plugin("attack", spec)
            params = {**attack.defaults, **spec.kwargs}
            on_recipe = all(k in params for k in RECIPE_FIELDS) and \
                tuple((k, params[k]) for k in RECIPE_FIELDS) == block.recipe
            for data, identities in threats:
                label = threat_attack_label(attack.label, data, identities)
                declared[label] = on_recipe
                if attack.submitted:
                    submitted.add(label)
        name = block.name or grid.name
        views += [BlockView(name if len(threats) == 1 else f"{name} ({threat_label(data, identities)})",
                            tuple(threat_attack_label(grid.plugin("attack", a).label, data, identities)
                                  for a in block.attacks),
                            tuple(grid.plugin("defense", d).label for d in block.defenses), tuple(block.budgets),
                            tuple(dict.fromkeys(s.load for s in block.services)), block.recipe, declared,
                            frozenset(submitted), tuple(block.seeds),
                            tuple(zoo_names[z or grid.zoo] for z in block.zoos) if zoo_names else (), data, identities,
                            block.sequential, {role: threat_attack_label(label, data, identities)
                                               for role, label in grid.references(block).items()})
                  for data, identities in threats]
    return views, settings


def block_rows(frame: pd.DataFrame, block: BlockView) -> pd.DataFrame:
    """The rows of ``frame`` that are cells of ``block`` (a row without a load, written before cells had a
    service, is one at any of the block's loads), at the view's threat setting."""
    threat = threat_settings(frame)
    rows = frame[frame["attack"].isin(block.attacks) & frame["defense"].isin(block.defenses)
                 & frame["budget"].isin(block.budgets) & (threat["attacker_data"] == block.attacker_data)
                 & (threat["attacker_identities"] == block.attacker_identities)]
    if block.seeds:
        rows = rows[rows["seed"].isin(block.row_seeds)]
    if block.zoos:
        rows = rows[rows["zoo"].isin(block.zoos)]
    if block.loads:
        rows = rows[rows["load"].isna() | rows["load"].isin(block.loads)]
    return rows


def at_load(rows: pd.DataFrame, load: float) -> pd.Series:
    """Which ``rows`` are at ``load`` (a missing one, NaN, at a missing one)."""
    return rows["load"].isna() if pd.isna(load) else rows["load"] == load


def track(row: pd.Series | dict[str, Any], block: BlockView) -> str:
    """A row's track: ``fixed recipe`` if its surrogate was trained with the block's recipe, else ``own training``.

    A row that records the recipe of its surrogate's weights (``surrogate_recipe``: the recipe of the
    worker's own training that produced exactly those weights, or '' when the worker did not train them)
    is judged by it; a row without the field (written before the harness recorded it) by its declared
    parameters for a built-in attack, and a submission, whose code nobody has verified, is on its own training.
    """
    recorded = row.get("surrogate_recipe") if hasattr(row, "get") else None
    if isinstance(recorded, str):
        return FIXED if recorded == recipe_text(block.recipe) else OWN
    attack = row["attack"]
    return FIXED if block.declared.get(attack, False) and attack not in block.submitted else OWN


def group_track(cells: pd.DataFrame, block: BlockView) -> str:
    """An attack's track in a group of cells: fixed recipe only if every scored cell is (a group without one
    is judged by its declaration, as a row that records no recipe)."""
    ok = cells[cells["status"] == "ok"]
    if not len(ok):
        return track({"attack": cells["attack"].iloc[0]}, block)
    return FIXED if all(track(row, block) == FIXED for _, row in ok.iterrows()) else OWN


def ok_values(group: pd.DataFrame, metric: str) -> dict[int, float]:
    """Per seed, the mean metric of the group's successful cells (one cell per seed within an attack's group;
    a group of several attacks averages them), whatever the order of the rows."""
    ok = group[group["status"] == "ok"]
    per_seed: dict[int, list[float]] = {}
    for seed, value in zip(ok["seed"], ok[metric]):
        if not math.isnan(value):
            per_seed.setdefault(int(seed), []).append(float(value))
    return {seed: math.fsum(found) / len(found) for seed, found in sorted(per_seed.items())}


def goodput_ratios(frame: pd.DataFrame) -> pd.Series:
    """Per row, its goodput divided by the goodput of the undefended cell it pairs with (:data:`PAIR_FIELDS`:
    same zoo, victim, attack, budget, seed and service); NaN for a failed row or one without that cell."""
    fields = [f for f in PAIR_FIELDS if f in frame]
    goodput, ok = frame["goodput"], frame["status"] == "ok"
    keys = [tuple(str(v) for v in values) for values in frame[fields].itertuples(index=False)]
    base = {key: g for key, g, defense, good in zip(keys, goodput, frame["defense"], ok)
            if defense == NO_DEFENSE and good and not math.isnan(g)}
    ratios = [g / base[key] if good and key in base and base[key] > 0 and not math.isnan(g) else math.nan
              for key, g, good in zip(keys, goodput, ok)]
    return pd.Series(ratios, index=frame.index, dtype=float)


def estimate(group: pd.DataFrame, metric: str) -> Estimate:
    """The metric's mean over the group's successful cells with its 95% t-interval."""
    return t_interval(ok_values(group, metric).values()) if len(group) else NO_ESTIMATE


def cell_flags(group: pd.DataFrame) -> list[str]:
    """The distinct sanity flags of the group's cells, and whether some cell's flags were never computed."""
    if "flags" not in group:
        return [FLAGS_NOT_COMPUTED] if len(group) else []
    found = []
    for value in group["flags"]:
        if not isinstance(value, str):
            found.append(FLAGS_NOT_COMPUTED)
        elif value:
            found += value.split("; ")
    return list(dict.fromkeys(found))


def _oracle(frame: pd.DataFrame, part: pd.DataFrame, victim: str, defense: str, budget: int, load: Any
            ) -> pd.DataFrame:
    """The oracle's cells for this comparison: the block's victim-access attack, else any block's."""
    for rows in (part, frame):
        same = rows[(rows["attack_access"] == "victim") & (rows["victim"] == victim) & (rows["defense"] == defense)
                    & (rows["budget"] == budget) & at_load(rows, load)]
        if len(same):
            best = max(same.groupby("attack"), key=lambda item: estimate(item[1], "fidelity").mean)
            return best[1]
    return part.iloc[0:0]


def attack_ranking(frame: pd.DataFrame, block: BlockView) -> list[dict[str, Any]]:
    """Per (victim, defense, budget, load), the block's attacks: fixed-recipe ones ranked by fidelity with
    shared ranks, own-training ones after them, each with its flags (beating the oracle by more than the
    interval of the paired difference, cell flags)."""
    out = []
    part = block_rows(frame, block)
    for (victim, defense, budget, load), group in part.groupby(["victim", "defense", "budget", "load"], sort=False,
                                                               dropna=False):
        oracle = _oracle(frame, part, victim, defense, int(budget), load)
        entries = []
        for attack, cells in group.groupby("attack", sort=False):
            fidelity = estimate(cells, "fidelity")
            flags = []
            if len(oracle) and cells["attack_access"].iloc[0] != "victim":
                above = paired_difference(ok_values(cells, "fidelity"), ok_values(oracle, "fidelity"))
                if above.known and (above.low > 0 if not math.isnan(above.half_width) else above.mean > 0):
                    flags.append(f"beats oracle by {above.format()}")
            entries.append({"victim": victim, "defense": defense, "budget": int(budget), "load": load,
                            "attack": attack, "track": group_track(cells, block), "fidelity": fidelity,
                            "cells": cells, "flags": flags + cell_flags(cells),
                            "failed": int((cells["status"] != "ok").sum())})
        for name in (FIXED, OWN):
            ranked = sorted((e for e in entries if e["track"] == name), key=lambda e: -np_mean(e["fidelity"]))
            if name == FIXED:
                ranks = paired_ranks([ok_values(e["cells"], "fidelity") for e in ranked]).ranks
                ranked, ranks = by_rank(ranked, ranks)
            else:
                ranks = ["own"] * len(ranked)
            for rank, entry in zip(ranks, ranked):
                out.append({**entry, "rank": rank})
    return out


def by_rank(entries: list, ranks: list[str]) -> tuple[list, list[str]]:
    """Entries (already in order of falling mean) and their ranks, stably ordered by rank (``—`` last)."""
    number = lambda rank: int(rank.lstrip("=")) if rank.lstrip("=").isdigit() else math.inf  # noqa: E731
    order = sorted(range(len(entries)), key=lambda i: number(ranks[i]))
    return [entries[i] for i in order], [ranks[i] for i in order]


def np_mean(value: Estimate) -> float:
    """The mean, with a missing one below every other (for sorting)."""
    return value.mean if value.known else -math.inf


def protection_table(frame: pd.DataFrame, blocks: Sequence[BlockView], settings: dict[str, DefenseSetting],
                     max_accuracy_drop: float, max_false_positives: float = MAX_FALSE_POSITIVES) -> pd.DataFrame:
    """Per (victim, block, budget, load, defense setting): its costs, eligibility and protection.

    Within one block: the *strongest attack* against a setting is the block's service attack with the
    highest mean fidelity against it (among those the block also ran without a defense); ``protection``
    is, seed by seed, the undefended fidelity of the block's best such attack minus the strongest
    attack's fidelity against the setting, with its 95% t-interval (``protection_values``: per seed).
    ``goodput_ratio``: per seed, the mean over the setting's cells of each cell's goodput divided by
    its undefended pair's (:func:`goodput_ratios`), with its t-interval. The ``none`` row is the
    block's own baseline. Blocks without an undefended service are left out.
    """
    if "goodput_ratio" not in frame:
        frame = frame.assign(goodput_ratio=goodput_ratios(frame))
    out = []
    for block in blocks:
        part = block_rows(frame, block)
        service = part[(part["attack_access"] == "service") & (part["status"] == "ok")]
        for (victim, budget, load), group in service.groupby(["victim", "budget", "load"], sort=False, dropna=False):
            base = group[group["defense"] == NO_DEFENSE]
            if base.empty or (group["defense"] == NO_DEFENSE).all():
                continue
            everything = part[(part["victim"] == victim) & (part["budget"] == budget) & at_load(part, load)]
            start = estimate(everything[everything["defense"] == NO_DEFENSE], "goodput").mean
            start = 1.0 if math.isnan(start) else start
            for defense, cells in group.groupby("defense", sort=False):
                attacks = sorted(set(cells["attack"]) & set(base["attack"]))
                if not attacks:
                    continue
                fidelity = {a: estimate(cells[cells["attack"] == a], "fidelity") for a in attacks}
                base_attack = max(attacks, key=lambda a: np_mean(estimate(base[base["attack"] == a], "fidelity")))
                strongest = max(attacks, key=lambda a: np_mean(fidelity[a]))
                protection = paired_difference(ok_values(base[base["attack"] == base_attack], "fidelity"),
                                               ok_values(cells[cells["attack"] == strongest], "fidelity"))
                setting = settings.get(defense, DefenseSetting(defense, None, None))
                costs = everything[everything["defense"] == defense]
                base_values = ok_values(base[base["attack"] == base_attack], "fidelity")
                defended_values = ok_values(cells[cells["attack"] == strongest], "fidelity")
                row = {"victim": victim, "block": block.name, "budget": int(budget), "load": load, "defense": defense,
                       "family": setting.family, "strength": setting.strength or "", "value": setting.value,
                       "undefended_goodput": start, "strongest_attack": strongest, "fidelity": fidelity[strongest].mean,
                       "fidelity_estimate": fidelity[strongest], "protection": protection.mean,
                       "protection_estimate": protection,
                       "protection_values": {s: base_values[s] - defended_values[s]
                                             for s in sorted(set(base_values) & set(defended_values))},
                       "goodput_ratio_estimate": estimate(costs, "goodput_ratio"),
                       "false_positive_estimate": estimate(costs, "false_positive_clients"),
                       "ownership_estimate": ownership(cells[cells["attack"] == strongest]),
                       "cell_keys": [k for k in costs["cell_key"] if isinstance(k, str) and k],
                       **{m: estimate(costs, m).mean for m in ("goodput", "goodput_ratio", "benign_accuracy_drop",
                                                              "perturbation", "latency_overhead",
                                                              "false_positive_clients", "refused_benign")}}
                row["costs_goodput"] = bool(row["goodput_ratio"] < 1 - GOODPUT_TOLERANCE)
                row["ineligible"] = ineligibility(row, max_accuracy_drop, max_false_positives)
                row["flags"] = setting_flags(row) + cell_flags(costs)
                out.append(row)
    return pd.DataFrame(out)


def ownership(cells: pd.DataFrame) -> Estimate:
    """The share of seeds whose stolen surrogate the owner claims (:mod:`psml_bench.bench.ownership`), with its
    t-interval; no estimate where the cells kept no watermark pairs (a defense that does not watermark)."""
    if "watermark_pairs" not in cells or not cells["watermark_pairs"].notna().any():
        return NO_ESTIMATE
    return estimate(cells[cells["watermark_pairs"].notna()], "ownership_claimed")


def goodput_floor(undefended_goodput: float) -> float:
    """The least goodput an eligible setting keeps: ``GOODPUT_SHARE`` of the undefended service's at the same load."""
    return GOODPUT_SHARE * undefended_goodput


def _exceeds(value: float, bound: float) -> str:
    """``value > bound`` in words, with as many decimals as it takes for the two to read apart (0.0103 > 0.01)."""
    for digits in range(3, 7):
        if round(value, digits) != round(bound, digits):
            return f"{value:.{digits}f} > {bound:g}"
    return f"{value:.6g} > {bound:g}"


def ineligibility(row: dict[str, Any], max_accuracy_drop: float, max_false_positives: float = MAX_FALSE_POSITIVES
                  ) -> str:
    """Why a defense setting may not be ranked ('' if it may): the utility constraint of docs/protocol.md.

    A paired goodput ratio of at least ``GOODPUT_SHARE`` (each defended cell's goodput over its undefended
    pair's; a ratio within ``GOODPUT_TOLERANCE`` of 1 costs nothing), a benign accuracy drop of at most
    ``max_accuracy_drop`` and a share of false-positive benign clients of at most ``max_false_positives``,
    whether or not the setting refuses anything.
    """
    reasons = []
    ratio, drop = row["goodput_ratio"], row["benign_accuracy_drop"]
    false_positives = row.get("false_positive_clients", math.nan)
    if math.isnan(ratio):
        reasons.append("goodput ratio unknown")
    elif ratio < GOODPUT_SHARE:
        reasons.append(f"goodput ratio {ratio:.3f} < {GOODPUT_SHARE:g} (goodput {row['goodput']:.3f}, undefended "
                       f"{row['undefended_goodput']:.3f})")
    if math.isnan(drop):
        reasons.append("benign accuracy drop unknown")
    elif drop > max_accuracy_drop:
        reasons.append(f"benign acc. drop {_exceeds(drop, max_accuracy_drop)}")
    if not math.isnan(false_positives) and false_positives > max_false_positives:
        reasons.append(f"false-positive clients {_exceeds(false_positives, max_false_positives)}")
    return "; ".join(reasons)


def setting_flags(row: dict[str, Any]) -> list[str]:
    """A defense setting that in effect answers something else: a huge accuracy drop or perturbation."""
    flags = []
    if row["benign_accuracy_drop"] > DEGENERATE_ACCURACY_DROP:
        flags.append(f"benign accuracy drop {row['benign_accuracy_drop']:.3f} > {DEGENERATE_ACCURACY_DROP}")
    if row["perturbation"] > DEGENERATE_PERTURBATION:
        flags.append(f"perturbation {row['perturbation']:.3f} > {DEGENERATE_PERTURBATION}")
    return flags


def tradeoff_auc(points: Sequence[tuple[float, float]], start: float = 1.0) -> float:
    """Mean protection over goodput in [floor, start] along a defense's protection-versus-goodput curve.

    The curve starts at the undefended service (goodput ``start``: 1 without load, less under load,
    where queueing alone misses some latency bounds; protection 0) and joins the settings in order
    of falling goodput; ``floor`` is :func:`goodput_floor` of ``start``, and where the curve stops above
    it the rest counts as no protection. NaN when the undefended service answers nothing in time.
    """
    floor = goodput_floor(start)
    if not start > floor:
        return math.nan
    curve = [(start, 0.0)] + sorted(((g, p) for g, p in points if not math.isnan(g) and not math.isnan(p)),
                                    key=lambda gp: -gp[0])
    area = 0.0
    for (g1, p1), (g2, p2) in zip(curve, curve[1:]):
        if g1 <= floor:
            break
        if g2 < floor:  # cut the segment at the floor
            p2 = p1 + (p2 - p1) * (g1 - floor) / (g1 - g2)
            g2 = floor
        area += (g1 - g2) * (p1 + p2) / 2
    return area / (start - floor)


def defense_ranking(table: pd.DataFrame) -> pd.DataFrame:
    """Defense families per (victim, block, budget, load): ranked by the protection of their best eligible
    setting (paired comparisons over seeds with Holm's correction, :mod:`psml_bench.report.paired_ranks`), ordered
    within a rank by AUC (over the goodput ratio); families without an eligible setting last, unranked."""
    out = []
    keys = ["victim", "block", "budget", "load"]
    for (victim, block, budget, load), part in table[table["defense"] != NO_DEFENSE].groupby(keys, sort=False,
                                                                                             dropna=False):
        families = []
        for family, group in part.groupby("family", sort=False):
            usable = group[group["ineligible"] == ""]
            best = usable.loc[usable["protection"].idxmax()] if len(usable) and usable["protection"].notna().any() \
                else None
            pick = lambda column: best[column] if best is not None else math.nan  # noqa: E731
            families.append({
                "victim": victim, "block": block, "budget": budget, "load": load, "family": family,
                "protection": pick("protection"),
                "protection_estimate": best["protection_estimate"] if best is not None else NO_ESTIMATE,
                "protection_values": best["protection_values"] if best is not None else {},
                "goodput_ratio": pick("goodput_ratio"), "false_positive_clients": pick("false_positive_clients"),
                "at": best["defense"] if best is not None else "—", "goodput": pick("goodput"),
                "benign_accuracy_drop": pick("benign_accuracy_drop"), "perturbation": pick("perturbation"),
                "latency_overhead": pick("latency_overhead"),
                # a family that never costs goodput has no curve to integrate
                "auc": tradeoff_auc(list(zip(group["goodput_ratio"], group["protection"])))
                if group["costs_goodput"].any() else math.nan,
                "eligible": f"{len(usable)} of {len(group)}",
                "cell_keys": best["cell_keys"] if best is not None else []})
        families.sort(key=lambda f: (-np_mean(f["protection_estimate"]),
                                     -(f["auc"] if not math.isnan(f["auc"]) else -math.inf)))
        ranks = paired_ranks([f["protection_values"] for f in families]).ranks
        families, ranks = by_rank(families, ranks)
        for family, rank in zip(families, ranks):
            out.append({**family, "rank": rank})
    return pd.DataFrame(out)


def crossover_notes(ranking: list[dict[str, Any]]) -> list[str]:
    """Sentences for the budgets at which fingerprinting does not pay: a fixed-recipe service attack that
    spends queries on fingerprinting below the best one that spends none (and whether ``oracle`` is too)."""
    notes = []
    keys = dict.fromkeys((e["victim"], e["defense"], e["budget"], e["load"]) for e in ranking)
    for key in keys:
        entries = [e for e in ranking if (e["victim"], e["defense"], e["budget"], e["load"]) == key
                   and e["track"] == FIXED and e["fidelity"].known]
        service = [e for e in entries if e["cells"]["attack_access"].iloc[0] == "service"]
        cost = {e["attack"]: estimate(e["cells"], "fingerprint_queries").mean for e in service}
        plain = [e for e in service if cost[e["attack"]] == 0]
        if not plain:
            continue
        best = max(plain, key=lambda e: e["fidelity"].mean)
        below = [e for e in service if cost[e["attack"]] > 0 and e["fidelity"].mean < best["fidelity"].mean]
        if not below:
            continue
        victim, defense, budget, _ = key
        names = ", ".join(f"{markdown_code(e['attack'])} ({e['fidelity'].format()}, "
                          f"{cost[e['attack']]:.0f} fingerprint queries)" for e in below)
        note = (f"At budget {budget} (victim {markdown_code(victim)}, defense {markdown_code(defense)}) fingerprinting "
                f"does not pay: {names} {'is' if len(below) == 1 else 'are'} below {markdown_code(best['attack'])} "
                f"({best['fidelity'].format()}), which "
                "spends no query on it.")
        oracle = [e for e in entries if e["cells"]["attack_access"].iloc[0] == "victim"]
        if oracle and max(e["fidelity"].mean for e in oracle) <= best["fidelity"].mean:
            top = max(oracle, key=lambda e: e["fidelity"].mean)
            note += (f" Even {markdown_code(top['attack'])}, answered by the victim alone, reaches "
                     f"{top['fidelity'].format()}: at "
                     "this budget reaching the victim buys no fidelity.")
        notes.append(note)
    return notes
