"""Rendering a grid's rows: ``results.csv``, the Markdown leaderboard page and its figures.

The page has, per victim: each block's attacks ranked per defense (mean ± std over seeds),
then the defense table: every defense setting's cost to benign clients and its protection
(the drop in the strongest attack's fidelity), and defense families ranked by protection at
goodput >= 0.8 and by the area under their protection-versus-goodput curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from ._config import write_atomic
from ._grid import GridConfig, resolve

RESULT_COLUMNS = [
    "zoo", "victim", "victim_model", "attack", "attack_access", "defense", "budget", "seed", "load",
    "benign_clients", "attacker_rate", "latency_visible", "status",
    "fidelity", "accuracy", "accuracy_norm", "kl", "l1", "queries", "fingerprint_queries", "victim_hit_rate",
    "fingerprint_accuracy", "detected", "queries_to_detection", "goodput", "spec_goodput", "latency_p50_ms",
    "latency_p99_ms", "refused_benign", "dropped_benign", "false_positive_clients", "benign_accuracy_drop", "perturbation",
    "latency_overhead", "benign_requests", "error",
    "cell_key", "grid", "profile", "psml_bench", "git_commit", "torch", "timm", "device", "threads",
]
# kept in each cell file but not in results.csv, which is byte-identical across runs of the same cells
VOLATILE_COLUMNS = ("wall_s",)
COUNT_METRICS = ("queries", "fingerprint_queries")
GOODPUT_FLOOR = 0.8
# a setting whose goodput is within this of the undefended service's costs no goodput (under load,
# a defense that does not touch routing still differs by the noise of one benign stream)
GOODPUT_TOLERANCE = 0.005
NO_DEFENSE = "none"


@dataclass(frozen=True)
class DefenseSetting:
    """How a defense label reads: its family (the label without the strength) and its strength."""

    family: str
    strength: str | None
    value: Any


@dataclass(frozen=True)
class BlockView:
    """The labels of one grid block, to pick its rows out of the results."""

    name: str
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    budgets: tuple[int, ...]
    loads: tuple[float, ...] = ()


def describe_grid(grid: GridConfig) -> tuple[list[BlockView], dict[str, DefenseSetting]]:
    """The grid's blocks as labels, and every defense label's family and strength (from the resolved plugins)."""
    settings = {}
    for spec in grid.defenses:
        defense = resolve("defense", spec)
        settings[defense.label] = DefenseSetting(defense.family, defense.strength, defense.strength_value)
    views = [BlockView(block.name or grid.name, tuple(resolve("attack", a).label for a in block.attacks),
                       tuple(resolve("defense", d).label for d in block.defenses), tuple(block.budgets),
                       tuple(dict.fromkeys(s.load for s in block.services)))
             for block in grid.parts()]
    return views, settings


def results_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell, protocol columns first, without the volatile ones."""
    frame = pd.DataFrame(list(rows))
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = ""
    return frame[RESULT_COLUMNS + sorted(c for c in frame.columns
                                         if c not in RESULT_COLUMNS and c not in VOLATILE_COLUMNS)]


def _mean_std(values: pd.Series, digits: int = 3) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    if values.empty:
        return "—"
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def _cell(group: pd.DataFrame, metric: str) -> str:
    ok = group[group["status"] == "ok"]
    text = _mean_std(ok[metric], 1 if metric in COUNT_METRICS else 3)
    failed = len(group) - len(ok)
    return f"{text} ({failed} failed)" if failed else text


def _mean(group: pd.DataFrame, metric: str) -> float:
    values = pd.to_numeric(group[group["status"] == "ok"][metric], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def zoo_table(zoo) -> str:
    ranks = {model_id: i + 1 for i, model_id in enumerate(sorted(zoo.frontier, key=lambda m: -zoo.entry(m).accuracy))}
    rows = []
    for model in zoo.card["models"]:
        entry = zoo.entry(model["id"])
        rows.append([model["id"], model["arch"], f"{model['params']:,}", f"{model['macs']:,}",
                     f"{entry.accuracy:.4f}", f"{entry.latency_ms:.3f}",
                     f"rank:{ranks[model['id']]}" if model["id"] in ranks else "dominated"])
    return tabulate(rows, headers=["model", "timm arch", "params", "MACs", "test accuracy",
                                   f"latency p50 ms ({zoo.profile_name})", "frontier"], tablefmt="github")


ATTACK_COLUMNS = (("fidelity", "fidelity"), ("accuracy", "accuracy"), ("KL", "kl"), ("L1", "l1"),
                  ("victim hit rate", "victim_hit_rate"), ("fingerprint acc.", "fingerprint_accuracy"),
                  ("fingerprint queries", "fingerprint_queries"))


def _block_rows(frame: pd.DataFrame, block: BlockView) -> pd.DataFrame:
    rows = frame[frame["attack"].isin(block.attacks) & frame["defense"].isin(block.defenses)
                 & frame["budget"].astype(int).isin(block.budgets)]
    if block.loads and "load" in rows and (rows["load"] != "").all():
        rows = rows[rows["load"].astype(float).isin(block.loads)]
    return rows


def _loads(frame: pd.DataFrame) -> list:
    """The service loads in ``frame`` (``[""]`` for rows without one)."""
    return sorted(set(frame["load"])) if "load" in frame else [""]


def attack_ranking(frame: pd.DataFrame, block: BlockView) -> str:
    """Per (defense, budget), the block's attacks ranked by mean fidelity."""
    rows = []
    part = _block_rows(frame, block)
    for defense in block.defenses:
        for budget in block.budgets:
            for load in _loads(part):
                group = part[(part["defense"] == defense) & (part["budget"].astype(int) == budget)
                             & (part["load"] == load)]
                ranked = sorted(group.groupby("attack", sort=False), key=lambda item: -np.nan_to_num(
                    _mean(item[1], "fidelity"), nan=-1.0))
                for rank, (attack, cells) in enumerate(ranked, 1):
                    rows.append([defense, budget, load, rank, attack] + [_cell(cells, m) for _, m in ATTACK_COLUMNS])
    return tabulate(rows, headers=["defense", "budget", "load", "rank", "attack", *(h for h, _ in ATTACK_COLUMNS)],
                    tablefmt="github")


def protection_table(frame: pd.DataFrame, settings: dict[str, DefenseSetting]) -> pd.DataFrame:
    """Per (victim, budget, defense setting): its costs and its protection against the strongest attack.

    The strongest attack is the service attack (``attack_access == "service"``) with the highest
    mean fidelity against the setting; ``protection`` is the highest mean fidelity of the same
    attacks without a defense minus that. Settings without an undefended baseline are left out.
    """
    service = frame[(frame["attack_access"] == "service") & (frame["status"] == "ok")]
    out = []
    for (victim, budget, load), group in service.groupby(["victim", "budget", "load"], sort=False):
        base = group[group["defense"] == NO_DEFENSE]
        if base.empty or (group["defense"] == NO_DEFENSE).all():
            continue
        for defense, cells in group.groupby("defense", sort=False):
            attacks = sorted(set(cells["attack"]) & set(base["attack"]))
            if not attacks:
                continue
            fidelity = {a: _mean(cells[cells["attack"] == a], "fidelity") for a in attacks}
            baseline = max(_mean(base[base["attack"] == a], "fidelity") for a in attacks)
            strongest = max(attacks, key=lambda a: fidelity[a])
            setting = settings.get(defense, DefenseSetting(defense, None, None))
            costs = frame[(frame["defense"] == defense) & (frame["victim"] == victim)
                          & (frame["budget"] == budget) & (frame["load"] == load) & (frame["status"] == "ok")]
            undefended = frame[(frame["defense"] == NO_DEFENSE) & (frame["victim"] == victim)
                               & (frame["budget"] == budget) & (frame["load"] == load) & (frame["status"] == "ok")]
            start = _mean(undefended, "goodput")
            start = 1.0 if math.isnan(start) else start
            out.append({"victim": victim, "budget": int(budget), "load": load, "defense": defense,
                        "family": setting.family,
                        "strength": setting.strength or "", "value": setting.value,
                        "goodput": _mean(costs, "goodput"), "undefended_goodput": start,
                        "costs_goodput": bool(_mean(costs, "goodput") < start - GOODPUT_TOLERANCE),
                        "benign_accuracy_drop": _mean(costs, "benign_accuracy_drop"),
                        "perturbation": _mean(costs, "perturbation"), "latency_overhead": _mean(costs, "latency_overhead"),
                        "strongest_attack": strongest, "fidelity": fidelity[strongest],
                        "protection": baseline - fidelity[strongest]})
    return pd.DataFrame(out)


def tradeoff_auc(points: Sequence[tuple[float, float]], floor: float = GOODPUT_FLOOR, start: float = 1.0) -> float:
    """Mean protection over goodput in [floor, start] along a defense's protection-versus-goodput curve.

    The curve starts at the undefended service (goodput ``start``: 1 without load, less under load,
    where queueing alone misses some latency bounds; protection 0) and joins the settings in order
    of falling goodput; where it stops above ``floor`` the rest counts as no protection. NaN when
    the undefended service itself is at or below the floor.
    """
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
    """Defense families per (victim, budget), ranked by best protection at goodput >= 0.8, then AUC."""
    out = []
    for (victim, budget, load, family), group in table[table["defense"] != NO_DEFENSE].groupby(
            ["victim", "budget", "load", "family"], sort=False):
        usable = group[group["goodput"] >= GOODPUT_FLOOR]
        best = usable.loc[usable["protection"].idxmax()] if len(usable) else None
        pick = lambda column: best[column] if best is not None else math.nan  # noqa: E731
        start = float(group["undefended_goodput"].iloc[0])
        costs_goodput = bool(group["costs_goodput"].any())
        out.append({"victim": victim, "budget": budget, "load": load, "family": family,
                    "protection": pick("protection"),
                    "at": best["defense"] if best is not None else "—", "goodput": pick("goodput"),
                    "benign_accuracy_drop": pick("benign_accuracy_drop"), "perturbation": pick("perturbation"),
                    "latency_overhead": pick("latency_overhead"),
                    # a family that never costs goodput has no curve to integrate
                    "auc": tradeoff_auc(list(zip(group["goodput"], group["protection"])), start=start)
                    if costs_goodput else math.nan,
                    "settings": len(group)})
    ranked = pd.DataFrame(out)
    if ranked.empty:
        return ranked
    ranked["_order"] = ranked["protection"].fillna(-math.inf)
    ranked["_auc"] = ranked["auc"].fillna(-math.inf)
    return ranked.sort_values(["victim", "budget", "load", "_order", "_auc"],
                              ascending=[True, True, True, False, False], kind="stable").drop(columns=["_order", "_auc"])


def _f(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"


def render_markdown(frame: pd.DataFrame, zoo, grid, figures: Sequence[str] = ()) -> str:
    blocks, settings = describe_grid(grid)
    lines = [
        f"# psml-bench leaderboard: grid `{grid.name}`", "",
        f"Generated by `psml-bench run --grid {grid.name}`; one row per cell in `results.csv`. "
        f"Numbers are fractions in [0, 1] (KL in nats, latency overhead a relative change), "
        f"mean ± sample std over seeds {list(grid.seeds)}. Do not edit by hand.", "",
        f"## Zoo `{zoo.name}`", "",
        f"Routing profile: `{zoo.profile_name}`. Advertised specs: accuracy in "
        f"[{zoo.accuracy_range[0]}, {zoo.accuracy_range[1]}], latency in "
        f"[{zoo.latency_range_ms[0]}, {zoo.latency_range_ms[1]}] ms. Policy: `{grid.policy}`.", "",
        zoo_table(zoo), "",
    ]
    lines += [f"![{name}]({name})" for name in figures] + ([""] if figures else [])
    table = protection_table(frame, settings)
    for victim, group in frame.groupby("victim", sort=False):
        model = group["victim_model"].iloc[0]
        lines += [f"## Victim `{victim}` (model `{model}`, accuracy {zoo.entry(model).accuracy:.4f})", ""]
        for block in blocks:
            if _block_rows(group, block).empty:
                continue
            lines += [f"### Attacks ranked per defense: block `{block.name}`", "", attack_ranking(group, block), ""]
        lines += _defense_sections(table[table["victim"] == victim] if len(table) else table)
    lines += _flagged_section(frame)
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        lines += ["## Failed cells", "", tabulate(
            failed[["victim", "attack", "defense", "budget", "seed", "error"]].values.tolist(),
            headers=["victim", "attack", "defense", "budget", "seed", "error"], tablefmt="github"), ""]
    return "\n".join(lines)


def _defense_sections(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    ranked = defense_ranking(table)
    lines = ["### Defenses ranked by protection at goodput >= 0.8", "",
             "Protection: drop in the strongest service attack's mean fidelity against the undefended service. "
             "AUC: mean protection over goodput in [0.8, 1] along the family's protection-versus-goodput curve "
             "(docs/protocol.md); — for a family that never costs goodput (its cost is in the other columns).", ""]
    if not ranked.empty:
        rank = ranked.groupby(["budget", "load"], sort=False).cumcount() + 1
        lines += [tabulate([[r["budget"], r["load"], rank[i], r["family"], _f(r["protection"]), r["at"],
                             _f(r["goodput"]), _f(r["auc"]), _f(r["benign_accuracy_drop"]), _f(r["perturbation"]),
                             _f(r["latency_overhead"])] for i, r in ranked.iterrows()],
                           headers=["budget", "load", "rank", "defense", "protection", "at setting", "goodput", "AUC",
                                    "benign acc. drop", "perturbation", "latency overhead"],
                           tablefmt="github", disable_numparse=True), ""]
    lines += ["### Every defense setting", "", tabulate(
        [[r["budget"], r["load"], r["defense"], _f(r["goodput"]), _f(r["benign_accuracy_drop"]), _f(r["perturbation"]),
          _f(r["latency_overhead"]), r["strongest_attack"], _f(r["fidelity"]), _f(r["protection"])]
         for _, r in table.iterrows()],
        headers=["budget", "load", "defense", "goodput", "benign acc. drop", "perturbation", "latency overhead",
                 "strongest attack", "its fidelity", "protection"], tablefmt="github", disable_numparse=True), ""]
    return lines


def _flagged_section(frame: pd.DataFrame) -> list[str]:
    """Cells with sanity flags: their numbers are potentially unreliable (see docs/submissions.md)."""
    if "flags" not in frame:
        return []
    flags = frame["flags"].fillna("").astype(str)
    flagged = frame[flags != ""]
    if not len(flagged):
        return []
    rows = [[r["victim"], r["attack"], r["defense"], r["budget"], r["seed"], r["flags"]] for _, r in flagged.iterrows()]
    return ["## Potentially unreliable", "", "Cells that failed a sanity check (docs/submissions.md): their numbers "
            "are shown above but should not be trusted until the flag is explained.", "",
            tabulate(rows, headers=["victim", "attack", "defense", "budget", "seed", "flag"], tablefmt="github"), ""]


def write_leaderboard(rows: Sequence[dict[str, Any]], zoo, grid, out_dir: Path, *, figures: bool = True) -> None:
    """Write ``results.csv``, the figures (PNG) and ``README.md`` into ``out_dir`` (each atomically)."""
    from ._plots import write_figures

    frame = results_frame(rows)
    write_atomic(out_dir / "results.csv", frame.to_csv(index=False, float_format="%.6f"))
    _, settings = describe_grid(grid)
    names = write_figures(frame, protection_table(frame, settings), zoo, out_dir) if figures else []
    write_atomic(out_dir / "README.md", render_markdown(frame, zoo, grid, names))
