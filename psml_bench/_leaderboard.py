"""The leaderboard's content as sections of tables, rendered as ``README.md``, with ``results.csv`` beside it.

The page has, per victim and block: the attacks ranked per defense (fixed-recipe track ranked,
own-training rows labelled), then per block with defenses, every defense setting's costs,
eligibility and protection, and defense families ranked by protection under the utility
constraint, then by AUC. Numbers are means over seeds ± the half-width of their 95% t-interval
(:mod:`psml_bench._intervals`); ranks shown ``=k`` are shared. :mod:`psml_bench._webpage` renders
the same sections as ``index.html``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tabulate import tabulate

from ._config import write_atomic
from ._grid import GridConfig
from ._ranking import (FIXED, GOODPUT_FLOOR, attack_ranking, block_rows, crossover_notes, defense_ranking,
                       describe_grid, estimate, protection_table, recipe_text)

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
PROVENANCE = ("psml_bench", "git_commit", "torch", "timm", "device", "threads", "profile")


def results_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell, protocol columns first, without the volatile ones."""
    frame = pd.DataFrame(list(rows))
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = ""
    return frame[RESULT_COLUMNS + sorted(c for c in frame.columns
                                         if c not in RESULT_COLUMNS and c not in VOLATILE_COLUMNS)]




@dataclass
class Table:
    """A table of text cells; ``cells`` holds, per row, the keys of the cells it summarises (for links)."""

    headers: list[str]
    rows: list[list[str]]
    cells: list[list[str]] = field(default_factory=list)


@dataclass
class Section:
    """A titled part of the page: paragraphs, then a table or figures."""

    level: int
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    figures: list[str] = field(default_factory=list)


def _f(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"


def _keys(group: pd.DataFrame) -> list[str]:
    return [k for k in group.get("cell_key", []) if isinstance(k, str) and k]


def zoo_table(zoo) -> Table:
    ranks = {model_id: i + 1 for i, model_id in enumerate(sorted(zoo.frontier, key=lambda m: -zoo.entry(m).accuracy))}
    rows = []
    for model in zoo.card["models"]:
        entry = zoo.entry(model["id"])
        rows.append([model["id"], model["arch"], f"{model['params']:,}", f"{model['macs']:,}",
                     f"{entry.accuracy:.4f}", f"{entry.latency_ms:.3f}",
                     f"rank:{ranks[model['id']]}" if model["id"] in ranks else "dominated"])
    return Table(["model", "timm arch", "params", "MACs", "test accuracy", f"latency p50 ms ({zoo.profile_name})",
                  "frontier"], rows)


ATTACK_COLUMNS = (("fidelity", "fidelity"), ("accuracy", "accuracy"), ("KL", "kl"), ("L1", "l1"),
                  ("victim hit rate", "victim_hit_rate"), ("fingerprint acc.", "fingerprint_accuracy"),
                  ("fingerprint queries", "fingerprint_queries"))


def attack_table(ranking: list[dict[str, Any]]) -> Table:
    """The block's attacks per (defense, budget, load), ranked (see :func:`psml_bench._ranking.attack_ranking`)."""
    rows, cells = [], []
    for entry in ranking:
        group = entry["cells"]
        failed = f" ({entry['failed']} failed)" if entry["failed"] else ""
        rows.append([entry["defense"], str(entry["budget"]), str(entry["load"]), entry["rank"], entry["attack"],
                     entry["track"]]
                    + [estimate(group, m).format(1 if m in COUNT_METRICS else 3) + (failed if m == "fidelity" else "")
                       for _, m in ATTACK_COLUMNS]
                    + ["; ".join(entry["flags"]) or "—"])
        cells.append(_keys(group))
    return Table(["defense", "budget", "load", "rank", "attack", "track", *(h for h, _ in ATTACK_COLUMNS), "flags"],
                 rows, cells)


def defense_tables(table: pd.DataFrame) -> tuple[Table, Table]:
    """The families ranked under the utility constraint, and every setting of the block."""
    ranked = defense_ranking(table)
    families = Table(["budget", "load", "rank", "defense", "protection", "at setting", "goodput", "AUC",
                      "benign acc. drop", "perturbation", "latency overhead", "eligible settings"],
                     [[str(r["budget"]), str(r["load"]), r["rank"], r["family"], r["protection_estimate"].format(),
                       r["at"], _f(r["goodput"]), _f(r["auc"]), _f(r["benign_accuracy_drop"]), _f(r["perturbation"]),
                       _f(r["latency_overhead"]), r["eligible"]] for _, r in ranked.iterrows()],
                     [list(r["cell_keys"]) for _, r in ranked.iterrows()])
    settings = Table(["budget", "load", "defense", "eligible", "goodput", "benign acc. drop", "perturbation",
                      "latency overhead", "false-positive clients", "refused benign", "strongest attack",
                      "its fidelity", "protection", "flags"],
                     [[str(r["budget"]), str(r["load"]), r["defense"], "yes" if not r["ineligible"] else
                       f"no: {r['ineligible']}", _f(r["goodput"]), _f(r["benign_accuracy_drop"]), _f(r["perturbation"]),
                       _f(r["latency_overhead"]), _f(r["false_positive_clients"]), _f(r["refused_benign"]),
                       r["strongest_attack"], r["fidelity_estimate"].format(),
                       r["protection_estimate"].format(), "; ".join(r["flags"]) or "—"] for _, r in table.iterrows()],
                     [list(r["cell_keys"]) for _, r in table.iterrows()])
    return families, settings


HOW_TO_READ = (
    "How to read a rank: every number is a mean over seeds ± the half-width of its 95% Student-t interval "
    "(protection: of the per-seed paired difference between the same block's undefended cells and the defended "
    "ones, same seed). An entry's rank is 1 + the number of entries whose whole interval lies above its own, so "
    "entries the seeds cannot separate share a rank, shown `=k`. Attacks are ranked on the fixed-recipe track "
    "(the block's one surrogate training recipe); own-training rows are listed after them, labelled `own`. "
    "A defense family is ranked by its best *eligible* setting (goodput >= {floor} or no lower than the "
    "undefended service's at that load, and benign accuracy drop <= {drop:g}); ties in the table's order are "
    "broken by the AUC. A flag marks a number not to trust until explained.")


def leaderboard_sections(frame: pd.DataFrame, zoo, grid: GridConfig, figures: Sequence[str] = ()) -> list[Section]:
    """The whole page as sections (shared by README.md and index.html)."""
    blocks, settings = describe_grid(grid)
    sections = [
        Section(1, f"psml-bench leaderboard: grid `{grid.name}`", [
            f"Generated by `psml-bench run --grid {grid.name}`; one row per cell in `results.csv`. "
            f"Numbers are fractions in [0, 1] (KL in nats, latency overhead a relative change), "
            f"mean ± half-width of the 95% t-interval over seeds {list(grid.seeds)} (a block may add seeds; "
            f"one seed: the mean alone). Do not edit by hand.",
            HOW_TO_READ.format(floor=GOODPUT_FLOOR, drop=grid.max_accuracy_drop)]),
        Section(2, f"Zoo `{zoo.name}`", [
            f"Routing profile: `{zoo.profile_name}`. Advertised specs: accuracy in "
            f"[{zoo.accuracy_range[0]}, {zoo.accuracy_range[1]}], latency in "
            f"[{zoo.latency_range_ms[0]}, {zoo.latency_range_ms[1]}] ms. Policy: `{grid.policy}`."],
            zoo_table(zoo), list(figures)),
    ]
    table = protection_table(frame, blocks, settings, grid.max_accuracy_drop)
    for victim, group in frame.groupby("victim", sort=False):
        model = group["victim_model"].iloc[0]
        sections.append(Section(2, f"Victim `{victim}` (model `{model}`, accuracy {zoo.entry(model).accuracy:.4f})"))
        for block in blocks:
            if block_rows(group, block).empty:
                continue
            ranking = attack_ranking(group, block)
            sections.append(Section(3, f"Attacks ranked per defense: block `{block.name}`", [
                f"Seeds {list(block.seeds)}. Training recipe of the block: {recipe_text(block.recipe)}; rows of the "
                f"{FIXED} track are ranked.", *crossover_notes(ranking)], attack_table(ranking)))
            part = table[(table["victim"] == victim) & (table["block"] == block.name)] if len(table) else table
            if part.empty:
                continue
            families, every = defense_tables(part)
            sections.append(Section(3, f"Defenses ranked: block `{block.name}`", [
                "Protection: per seed, the best attack's fidelity against the block's undefended service minus the "
                "strongest attack's against the setting (95% t-interval of the paired difference). Ranked by the best "
                f"eligible setting's protection (goodput >= {GOODPUT_FLOOR}, or none lost at that load, and benign "
                f"accuracy drop <= {grid.max_accuracy_drop:g}); AUC: mean protection over goodput in "
                f"[{GOODPUT_FLOOR}, g0] along the family's protection-versus-goodput curve (docs/protocol.md), — for a "
                "family that never costs goodput."], families))
            sections.append(Section(4, f"Every defense setting: block `{block.name}`", [], every))
    sections += _flagged_section(frame)
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        sections.append(Section(2, "Failed cells", [], Table(
            ["victim", "attack", "defense", "budget", "seed", "error"],
            [[str(v) for v in r] for r in failed[["victim", "attack", "defense", "budget", "seed", "error"]].values],
            [[k] for k in failed["cell_key"]])))
    return sections


def _flagged_section(frame: pd.DataFrame) -> list[Section]:
    """Cells with sanity flags: their numbers are potentially unreliable (see docs/submissions.md)."""
    if "flags" not in frame:
        return []
    flags = frame["flags"]
    flagged = frame[flags.apply(lambda f: not isinstance(f, str) or f != "")]
    if not len(flagged):
        return []
    rows = [[r["victim"], r["attack"], r["defense"], str(r["budget"]), str(r["seed"]),
             r["flags"] if isinstance(r["flags"], str) else "flags not computed"] for _, r in flagged.iterrows()]
    return [Section(2, "Potentially unreliable", [
        "Cells that failed a sanity check (docs/submissions.md), or whose checks never ran: their numbers are shown "
        "above but should not be trusted until the flag is explained."],
        Table(["victim", "attack", "defense", "budget", "seed", "flag"], rows, [[k] for k in flagged["cell_key"]]))]


def render_markdown(frame: pd.DataFrame, zoo, grid, figures: Sequence[str] = ()) -> str:
    """The page as Markdown (``README.md``)."""
    return markdown_of(leaderboard_sections(frame, zoo, grid, figures))


def markdown_table(table: Table) -> str:
    return tabulate(table.rows, headers=table.headers, tablefmt="github", disable_numparse=True)


def markdown_of(sections: Sequence[Section]) -> str:
    """Sections as Markdown."""
    lines: list[str] = []
    for section in sections:
        lines += ["#" * section.level + " " + section.title, ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.table is not None:
            lines += [markdown_table(section.table), ""]
        lines += [f"![{name}]({name})" for name in section.figures] + ([""] if section.figures else [])
    return "\n".join(lines)


def provenance_of(frame: pd.DataFrame) -> dict[str, str]:
    """The distinct versions and machines that produced the rows (a field with several values lists them)."""
    return {column: ", ".join(sorted({str(v) for v in frame[column] if isinstance(v, str) and v})) or "—"
            for column in PROVENANCE if column in frame}


def write_leaderboard(rows: Sequence[dict[str, Any]], zoo, grid, out_dir: Path, *, figures: bool = True) -> None:
    """Write ``results.csv``, the figures (PNG), ``README.md`` and ``index.html`` into ``out_dir`` (each atomically)."""
    from ._plots import write_figures
    from ._webpage import render_html

    frame = results_frame(rows)
    write_atomic(out_dir / "results.csv", frame.to_csv(index=False, float_format="%.6f"))
    blocks, settings = describe_grid(grid)
    names = write_figures(frame, protection_table(frame, blocks, settings, grid.max_accuracy_drop), zoo, out_dir) \
        if figures else []
    sections = leaderboard_sections(frame, zoo, grid, names)
    write_atomic(out_dir / "README.md", markdown_of(sections))
    write_atomic(out_dir / "index.html", render_html(sections, provenance_of(frame)))
