"""The leaderboard's content as sections of tables, rendered as ``README.md``, with ``results.csv`` beside it.

The page has, per zoo, its models; on several zoos, the headline comparisons side by side
(:mod:`psml_bench.report.zoo_comparison`); then per victim and block: the attacks ranked per defense
(fixed-recipe track ranked, own-training rows labelled), then per block with defenses, every
defense setting's costs, eligibility and protection, and defense families ranked by protection
under the utility constraint, then by AUC, and, for a block with sequential seeds, its headline
comparisons' seeds (:mod:`psml_bench.report.sequential_seeds`). Numbers are means over seeds ± the
half-width of their 95% t-interval (:mod:`psml_bench.report.intervals`); ranks shown ``=k`` are
shared. :mod:`psml_bench.report.webpage` renders the same sections as ``index.html``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..common.files import write_atomic
from ..bench.grid import GridConfig
from ..bench.row import CellRow
from .page_text import markdown_text
from .sections import Section, Table, markdown_of
from .shipped_grids import ShippedGrid, has_shipped_results, shipped_grids, shipped_grids_section
from .plots import caption, figure_names, write_figures
from .ranking import (FIXED, GOODPUT_SHARE, attack_ranking, block_rows, crossover_notes, defense_ranking,
    describe_grid, estimate, protection_table, recipe_text)
from .results import results_csv, results_frame
from .zoo_comparison import Comparison, attack_differences, spec_protections
from .intervals import NO_ESTIMATE, Estimate
from ..bench.grid import MAX_FALSE_POSITIVES
from .detection import DETECTION_COLUMNS, detection_rows
from .ownership_report import OWNERSHIP_COLUMNS, ownership_rows
from .headline import attack_sentences, ceiling_of, ceilings, defense_sentences
from .paired_ranks import narrowing
from .plots import write_serving_figures
from .serving_report import CAPTION as SERVING_CAPTION, TABLE_LOADS, capacity_kept, capacity_rows, drawn, entries_of, \
    figure_name as serving_figure_name
from ..bench.serving_curves import read as read_serving
from .ranking import BlockView, ok_values
from .sequential_seeds import (SEQUENTIAL_COLUMNS, HeadlineComparison, SeedDecision, block_decisions, sequential_rows,
    sequential_sentences, sequential_text)

COUNT_METRICS = ("queries", "fingerprint_queries")
PROVENANCE = ("psml_bench", "git_commit", "torch", "timm", "device", "threads", "profile")


def _f(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"


def _keys(group: pd.DataFrame) -> list[str]:
    return [k for k in group["cell_key"] if isinstance(k, str) and k]


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
    """The block's attacks per (defense, budget, load), ranked (see
    :func:`psml_bench.report.ranking.attack_ranking`)."""
    rows, cells = [], []
    for entry in ranking:
        group = entry["cells"]
        failed = f" ({entry['failed']} failed)" if entry["failed"] else ""
        rows.append([markdown_text(entry["defense"]), str(entry["budget"]), str(entry["load"]), entry["rank"],
                     markdown_text(entry["attack"]), entry["track"]]
                    + [estimate(group, m).format(1 if m in COUNT_METRICS else 3) + (failed if m == "fidelity" else "")
                       for _, m in ATTACK_COLUMNS]
                    + [markdown_text("; ".join(entry["flags"])) or "—"])
        cells.append(_keys(group))
    return Table(["defense", "budget", "load", "rank", "attack", "track", *(h for h, _ in ATTACK_COLUMNS), "flags"],
                 rows, cells)


def defense_tables(table: pd.DataFrame, ceilings: Mapping[tuple, Estimate] | None = None,
                   kept: Callable[[Mapping[str, Any]], str] = lambda r: "—") -> tuple[Table, Table]:
    """The families ranked under the utility constraint, and every setting of the block.

    ``ceilings``: the zoo's ceiling of protection per (zoo, victim, budget, load)
    (:func:`psml_bench.report.headline.ceilings`).
    ``kept``: a setting's capacity kept, formatted (:func:`psml_bench.report.serving_report.capacity_kept`).
    """
    ceilings = ceilings or {}
    ceiling = lambda r: (ceiling_of(ceilings, r["zoo"], r["victim"], r["budget"], r["load"])  # noqa: E731
                         or NO_ESTIMATE).format() if "zoo" in r else "—"
    ranked = defense_ranking(table)
    if "zoo" in table and len(ranked):
        ranked = ranked.assign(zoo=table["zoo"].iloc[0])
    families = Table(["budget", "load", "rank", "defense", "protection", "zoo ceiling", "at setting", "goodput",
                      "goodput ratio", "AUC", "benign acc. drop", "false-positive clients", "perturbation",
                      "latency overhead", "eligible settings"],
                     [[str(r["budget"]), str(r["load"]), r["rank"], markdown_text(r["family"]),
                       r["protection_estimate"].format(),
                       ceiling(r), markdown_text(r["at"]), _f(r["goodput"]), _f(r["goodput_ratio"]), _f(r["auc"]),
                       _f(r["benign_accuracy_drop"]), _f(r["false_positive_clients"]), _f(r["perturbation"]),
                       _f(r["latency_overhead"]), r["eligible"]] for _, r in ranked.iterrows()],
                     [list(r["cell_keys"]) for _, r in ranked.iterrows()])
    watermarks = "ownership_estimate" in table and any(e.known for e in table["ownership_estimate"])
    columns: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("budget", lambda r: str(r["budget"])), ("load", lambda r: str(r["load"])),
        ("defense", lambda r: markdown_text(r["defense"])),
        ("eligible", lambda r: "yes" if not r["ineligible"] else f"no: {markdown_text(r['ineligible'])}"),
        ("protection", lambda r: r["protection_estimate"].format()), ("zoo ceiling", ceiling),
        ("goodput", lambda r: _f(r["goodput"])), ("goodput ratio", lambda r: r["goodput_ratio_estimate"].format()),
        ("capacity kept", kept), ("benign acc. drop", lambda r: _f(r["benign_accuracy_drop"])),
        ("false-positive clients", lambda r: r["false_positive_estimate"].format()),
        ("perturbation", lambda r: _f(r["perturbation"])), ("latency overhead", lambda r: _f(r["latency_overhead"])),
        ("refused benign", lambda r: _f(r["refused_benign"])),
        ("strongest attack", lambda r: markdown_text(r["strongest_attack"])),
        ("its fidelity", lambda r: r["fidelity_estimate"].format()),
        *([("ownership claimed", lambda r: r["ownership_estimate"].format() if r["ownership_estimate"].known
            else "—")] if watermarks else []),  # only where some setting watermarks
        ("flags", lambda r: markdown_text("; ".join(r["flags"])) or "—")]
    settings = Table([name for name, _ in columns], [[value(r) for _, value in columns] for _, r in table.iterrows()],
                     [list(r["cell_keys"]) for _, r in table.iterrows()])
    return families, settings


HOW_TO_READ = (
    "How to read a rank: every number is a mean over seeds ± the half-width of its 95% Student-t interval "
    "(protection: of the per-seed paired difference between the same block's undefended cells and the defended "
    "ones, same seed). The entries of one table ran on the same seeds, and a seed fixes the same common random "
    "numbers in every cell (the attacker's pool draws and surrogate init, the benign arrivals and specs; "
    "docs/protocol.md). An entry beats another when their per-seed paired difference is significant at 5% after "
    "Holm's correction over every pair of the table; its rank is 1 + the number of entries that beat it, so "
    "entries the seeds cannot separate share a rank, shown `=k`. Attacks are ranked on the fixed-recipe track "
    "(the block's one surrogate training recipe); own-training rows are listed after them, labelled `own`. "
    "A defense family is ranked by its best *eligible* setting: a goodput ratio >= {share:g} (each defended "
    "cell's goodput over the goodput of the undefended cell with the same attack, seed, load and block), a benign "
    "accuracy drop <= {drop:g} and false-positive clients (the share of benign clients it flags, whether or not it "
    "refuses them) <= {false_positives:g}; ties in the table's order are broken by the AUC. The zoo ceiling beside "
    "a protection is psml's fidelity minus naive's without a defense: the most a spec or routing defense can take "
    "away. A flag marks a number not to trust until explained.")


def zoo_map(zoos: Any, grid: GridConfig) -> dict[str, Any]:
    """The opened zoos by the name the grid gives them; a single zoo is the grid's main zoo."""
    return dict(zoos) if isinstance(zoos, Mapping) else {grid.zoo: zoos}


def _zoo_names(opened: dict[str, Any]) -> dict[str, str] | None:
    """Each zoo's name by the grid's name for it, for a grid on several zoos (None on one: no filtering)."""
    return {spec: zoo.name for spec, zoo in opened.items()} if len(opened) > 1 else None


def disagreement_text(zoo) -> str:
    """The zoo's mean pairwise disagreement on the test split, as a sentence ('' for a zoo without predictions)."""
    figures = getattr(zoo, "disagreement", None)
    if figures is None:
        return ""
    return (f"Mean pairwise disagreement on the test split (share of test images on which two models' top-1 "
            f"differ, averaged over pairs): all models {_f(figures['all_models'])}, frontier models "
            f"{_f(figures['frontier'])}.")


def zoo_section(zoo, grid: GridConfig, figures: Sequence[str]) -> Section:
    """A zoo's section: its routing, its disagreement and its models (frontier ranked)."""
    paragraphs = [f"Routing profile: `{zoo.profile_name}`. Advertised specs: accuracy in "
                  f"[{zoo.accuracy_range[0]}, {zoo.accuracy_range[1]}], latency in "
                  f"[{zoo.latency_range_ms[0]}, {zoo.latency_range_ms[1]}] ms. Policy: `{grid.policy}`.",
                  disagreement_text(zoo)]
    return Section(2, f"Zoo `{zoo.name}`", [p for p in paragraphs if p], zoo_table(zoo), list(figures),
                   captions={name: caption(name) for name in figures}, facets={"zoo": zoo.name})


def comparison_sections(frames: Mapping[str, pd.DataFrame], by_name: Mapping[str, Any], blocks, settings,
                        table: pd.DataFrame) -> list[Section]:
    """``Zoos compared``: each zoo's disagreement and victims, then the headline comparisons side by side."""
    zoos = list(frames)
    victims = []
    for name, part in frames.items():
        for victim, model in part.drop_duplicates("victim")[["victim", "victim_model"]].values:
            figures = getattr(by_name[name], "disagreement", None) or {}
            victims.append([f"`{name}`", _f(figures.get("all_models")), _f(figures.get("frontier")), victim,
                            f"`{model}`", f"{by_name[name].entry(model).accuracy:.4f}"])
    sections = [Section(2, "Zoos compared", [
        "The headline comparisons on each zoo, side by side: each number is computed within one zoo, as its "
        "own tables compute it (mean of the per-seed paired difference ± the half-width of its 95% t-interval, "
        "n seeds), and the last column says whether the sign agrees on every zoo and on which the interval "
        "excludes 0. Disagreement: mean pairwise share of test images on which two models' top-1 differ."],
        Table(["zoo", "disagreement (all models)", "disagreement (frontier)", "victim", "victim model",
               "victim accuracy"], victims))]
    attacks = attack_differences(frames, blocks)
    if attacks:
        sections.append(Section(3, "Attacks compared across zoos", [
            "Without a defense, in the blocks that ran `psml`, `oracle` and `naive`: psml's fidelity (accuracy) "
            "minus the other attack's, seed by seed."], _comparison_table(attacks, zoos, "difference")))
    defenses = spec_protections(frames, table, blocks, settings)
    if defenses:
        sections.append(Section(3, "Spec and routing defenses compared across zoos", [
            "Per attack, the protection of the eligible spec or routing defense setting (eligible as in the "
            "defense tables) that protects most against it: that attack's undefended fidelity minus its fidelity "
            "against the setting, seed by seed; `strongest attack`: the defense tables' protection (best attack "
            "undefended minus the strongest attack against the setting)."],
            _comparison_table(defenses, zoos, "attack", settings_shown=True)))
    return sections


def _comparison_table(comparisons: Sequence[Comparison], zoos: Sequence[str], what: str,
                      settings_shown: bool = False) -> Table:
    headers = ["victim", "block", "budget", "load", what]
    for zoo in zoos:
        headers += [f"`{zoo}`"] + [f"at setting (`{zoo}`)"] * settings_shown
    rows = []
    for c in comparisons:
        row = [c.victim, c.block, str(c.budget), c.load, markdown_text(c.what)]
        for zoo in zoos:
            value = c.estimates[zoo]
            row += [f"{value.format()} (n={value.n})" if value.known else "—"] + \
                [markdown_text(c.settings[zoo]) if zoo in c.settings else "—"] * settings_shown
        rows.append(row + [c.agreement()])
    return Table(headers + ["on every zoo" if len(zoos) > 2 else "on both zoos"], rows)


def _victim_title(victim: str, group: pd.DataFrame, by_name: dict[str, Any]) -> str:
    """A victim's heading: its model and accuracy (on each zoo, when there are several)."""
    models = group.drop_duplicates("zoo")[["zoo", "victim_model"]].values if len(by_name) > 1 else \
        [(next(iter(by_name)), group["victim_model"].iloc[0])]
    parts = [f"model `{model}`" + (f" of zoo `{name}`" if len(by_name) > 1 else "")
             + f", accuracy {by_name[name].entry(model).accuracy:.4f}" for name, model in models]
    return f"Victim `{victim}` ({'; '.join(parts)})"


def protection_by_zoo(frame: pd.DataFrame, names: Sequence[str], blocks, settings, max_accuracy_drop: float,
                      max_false_positives: float = MAX_FALSE_POSITIVES
                      ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Each zoo's rows (the whole frame for a grid on one zoo) and every zoo's protection table, with a ``zoo``
    column."""
    frames = {name: frame[frame["zoo"] == name] for name in names} if len(names) > 1 else {names[0]: frame}
    table = pd.concat([protection_table(part, blocks, settings, max_accuracy_drop, max_false_positives).assign(zoo=name)
                       for name, part in frames.items()], ignore_index=True)
    return frames, table


def leaderboard_sections(frame: pd.DataFrame, zoos, grid: GridConfig, figures: Sequence[str] = (),
                         protection: pd.DataFrame | None = None,
                         serving: Mapping[str, Any] | None = None, shipped: Sequence[ShippedGrid] = ()
                         ) -> list[Section]:
    """The whole page as sections (shared by README.md and index.html).

    ``zoos``: the opened zoos by the name the grid gives them (or the one zoo of a grid on one zoo).
    A block on several zoos has its tables once per zoo; every ranking is computed within one zoo.
    ``protection``: :func:`protection_by_zoo`'s table, if the caller has it already. ``serving``: the run's
    ``serving.json`` (:mod:`psml_bench.bench.serving_curves`), if any. ``shipped``: the shipped grids beside it
    (:mod:`psml_bench.report.shipped_grids`), whose sequential seeds the headline reports.
    """
    serving = serving or {}
    kept = lambda r: capacity_kept(serving, r["zoo"], r["defense"], grid.policy)  # noqa: E731
    opened = zoo_map(zoos, grid)
    by_name = {zoo.name: zoo for zoo in opened.values()}
    blocks, settings = describe_grid(grid, _zoo_names(opened))
    main = next(iter(by_name))
    own = {name: set(figure_names(name, name == main)) for name in by_name}
    frames, table = protection_by_zoo(frame, list(by_name), blocks, settings, grid.max_accuracy_drop,
                                      grid.max_false_positives)
    table = table if protection is None else protection
    found = ceilings(frame, blocks)
    decided = {block.name: block_decisions(frame, block, settings, grid.max_accuracy_drop, grid.max_false_positives)
               for block in blocks if block.sequential is not None}
    sections = [title_section(grid), headline_section(frame, table, blocks, list(by_name), found, decided, shipped),
                *(zoo_section(zoo, grid, [f for f in figures if f in own[name]]) for name, zoo in by_name.items())]
    ranked_values: list[list[dict[int, float]]] = []
    if len(by_name) > 1 and frame["zoo"].nunique() > 1:
        sections += comparison_sections(frames, by_name, blocks, settings, table)
    for victim, group in frame.groupby("victim", sort=False):
        sections.append(Section(2, _victim_title(victim, group, by_name), facets={"victim": str(victim)}))
        for block in blocks:
            for name, part in frames.items():
                here = [(c, d) for c, d in decided.get(block.name, ()) if (c.victim, c.zoo) == (victim, name)]
                where = BlockTables(victim, name, table, found, kept, grid, here)
                block_part, values = block_sections(part[part["victim"] == victim], block, where)
                sections += block_part
                ranked_values += values
    sections += serving_sections(serving, list(by_name), figures)
    sections += detection_sections(frame)
    sections += ownership_sections(frame)
    sections[0].paragraphs.append(narrowing(ranked_values).sentence())
    return sections + _flagged_section(frame, len(by_name) > 1) + failed_section(frame, len(by_name) > 1)


def title_section(grid: GridConfig) -> Section:
    """The page's title and how to read it (the narrowing sentence is added once the tables are ranked)."""
    return Section(1, f"psml-bench leaderboard: grid `{grid.name}`", [
        f"Generated by `psml-bench run --grid {grid.name}`; one row per cell in `results.csv`. "
        f"Numbers are fractions in [0, 1] (KL in nats, latency overhead a relative change), "
        f"mean ± half-width of the 95% t-interval over seeds {list(grid.seeds)} (a block may add seeds; "
        f"one seed: the mean alone). Do not edit by hand.",
        HOW_TO_READ.format(share=GOODPUT_SHARE, drop=grid.max_accuracy_drop,
                           false_positives=grid.max_false_positives)])


@dataclass(frozen=True)
class BlockTables:
    """What a block's tables for one (victim, zoo) read besides its rows: the protection table of every zoo, the
    zoo ceilings, the capacity kept, the grid, and the block's sequential-seed decisions there."""

    victim: str
    zoo: str
    table: pd.DataFrame
    ceilings: Mapping[tuple, Estimate]
    kept: Callable[[Mapping[str, Any]], str]
    grid: GridConfig
    decided: list[tuple[HeadlineComparison, SeedDecision]]


def block_sections(rows: pd.DataFrame, block: BlockView, where: BlockTables
                   ) -> tuple[list[Section], list[list[dict[int, float]]]]:
    """A block's sections for one (victim, zoo) (``rows``: the zoo's rows of that victim): its attacks ranked, its
    defenses ranked and every setting, its sequential seeds; with the per-seed values of each ranked table."""
    if block_rows(rows, block).empty:
        return [], []
    on = f", zoo `{where.zoo}`" if len(block.zoos) > 1 else ""
    facets = {"zoo": where.zoo, "block": block.name, "victim": str(where.victim)}
    ranking = attack_ranking(rows, block)
    values = [[ok_values(e["cells"], "fidelity") for e in ranking
               if e["track"] == FIXED and (e["defense"], e["budget"], e["load"]) == key]
              for key in dict.fromkeys((e["defense"], e["budget"], e["load"]) for e in ranking)]
    seeds = f"Seeds {list(block.seeds)}" + (", then sequential seeds (below)" if block.sequential else "")
    sections = [Section(3, f"Attacks ranked per defense: block `{block.name}`{on}", [
        f"{seeds}. Training recipe of the block: {recipe_text(block.recipe)}; rows of "
        f"the {FIXED} track are ranked.", *crossover_notes(ranking)], attack_table(ranking), facets=facets)]
    table, grid = where.table, where.grid
    chosen = table[(table["victim"] == where.victim) & (table["block"] == block.name) & (table["zoo"] == where.zoo)] \
        if len(table) else table
    if not chosen.empty:
        families, every = defense_tables(chosen, where.ceilings, where.kept)
        ranked = defense_ranking(chosen)
        values += [list(group["protection_values"]) for _, group in
                   ranked.groupby(["budget", "load"], sort=False, dropna=False)] if len(ranked) else []
        sections.append(Section(3, f"Defenses ranked: block `{block.name}`{on}", [
            "Protection: per seed, the best attack's fidelity against the block's undefended service minus "
            "the strongest attack's against the setting (95% t-interval of the paired difference); zoo "
            "ceiling: psml - naive without a defense. Ranked by paired comparisons of the best eligible "
            f"setting's protection (goodput ratio >= {GOODPUT_SHARE:g}, benign accuracy drop <= "
            f"{grid.max_accuracy_drop:g}, false-positive clients <= {grid.max_false_positives:g}); AUC: mean "
            f"protection over the goodput ratio in [{GOODPUT_SHARE:g}, 1] along the family's curve "
            "(docs/protocol.md), — for a family that never costs goodput."], families, facets=facets))
        sections.append(Section(4, f"Every defense setting: block `{block.name}`{on}", [], every, facets=facets))
    if block.sequential is not None:
        sections.append(Section(3, f"Seeds until the headline separates: block `{block.name}`{on}",
                                [sequential_text(block, where.decided)],
                                Table(SEQUENTIAL_COLUMNS, sequential_rows(where.decided)), facets=facets))
    return sections, values


def failed_section(frame: pd.DataFrame, several: bool) -> list[Section]:
    """The cells that failed, with their errors."""
    failed = frame[frame["status"] != "ok"]
    if not len(failed):
        return []
    columns = ["zoo"] * several + ["victim", "attack", "defense", "budget", "seed", "error"]
    return [Section(2, "Failed cells", [], Table(
        columns, [[markdown_text(v) for v in r] for r in failed[columns].values], [[k] for k in failed["cell_key"]]))]


def headline_section(frame: pd.DataFrame, table: pd.DataFrame, blocks, zoos: Sequence[str], found,
                     decided: Mapping[str, Sequence[tuple[HeadlineComparison, SeedDecision]]] | None = None,
                     shipped: Sequence[ShippedGrid] = ()) -> Section:
    """The box at the top of the page: per zoo, the best attack per budget, the zoo's ceiling and each defense
    family's best eligible setting, in words (:mod:`psml_bench.report.headline`); then, per block with
    sequential seeds, here or in a shipped grid beside it, how many of its headline comparisons are resolved."""
    bullets = [sentence for sentence in (g.headline() for g in shipped) if sentence]  # its seeds: more than here
    for zoo in zoos:
        bullets += attack_sentences(frame, blocks, zoo) + defense_sentences(table, zoo, found)
    bullets += [sentence for block in blocks if block.name in (decided or {})
                for sentence in sequential_sentences(block, decided[block.name])]
    return Section(2, "Headline", ["Generated from the rows below (mean ± half-width of the 95% t-interval over "
                                   "seeds; differences paired seed by seed)."], bullets=bullets, kind="headline")


def serving_sections(serving: Mapping[str, Any], zoos: Sequence[str], figures: Sequence[str]) -> list[Section]:
    """Per zoo with serving entries: the curves against load and every setting's capacity kept."""
    sections = []
    for index, zoo in enumerate(zoos):
        entries = entries_of(serving, zoo)
        if not entries:
            continue
        name = serving_figure_name(zoo, index == 0)
        _, same = drawn(entries)
        sections.append(Section(2, f"Serving: zoo `{zoo}`", [
            "Each defense setting of the grid on its service with benign clients only (no attacker), at loads from "
            f"0.1 to 1.2 of the undefended capacity at the SLO, seeds {serving.get('seeds')}. Highest load: the "
            "highest load at which the mean goodput over the seeds meets the SLO target (bisection); capacity kept: "
            "that load over the undefended service's under the same policy (the serving community's cost figure). "
            "The simulator charges a defense no compute of its own (docs/protocol.md)."]
            + ([f"Settings whose curve is the undefended one's (not drawn): "
                f"{', '.join(markdown_text(d) for d in same)}."] if same else []),
            Table(["defense", "policy", "highest load", "capacity kept"]
                  + [f"goodput at load {x}" for x in TABLE_LOADS],
                  [[markdown_text(c) for c in row] for row in capacity_rows(entries)]),
            [name] if name in figures else [], captions={name: SERVING_CAPTION}, facets={"zoo": zoo}))
    return sections


def detection_sections(frame: pd.DataFrame) -> list[Section]:
    """Per defense setting that flags clients: detection rate per attack, queries to detection, false positives."""
    rows, keys = detection_rows(frame)
    if not rows:
        return []
    return [Section(2, "Detection", [
        "For each defense setting that flagged anyone: the detection rate (share of seeds whose cell flagged the "
        "attacker), the queries the attacker had sent when first flagged (median and range over the seeds that "
        "flagged it) and the share of benign clients flagged (false-positive clients); 95% t-intervals over seeds."],
        Table(DETECTION_COLUMNS, rows, keys))]


def ownership_sections(frame: pd.DataFrame) -> list[Section]:
    """Per watermarking defense setting: whether the owner claims the surrogate, at what cost, and false claims."""
    rows, keys = ownership_rows(frame)
    if not rows:
        return []
    return [Section(2, "Ownership", [
        "For each watermarking defense setting (docs/protocol.md, ownership): the watermark pairs it kept from the "
        "attacker, the claim rate (share of seeds whose surrogate the owner claims at a false-claim rate of at most "
        "1e-3), the watermark queries the claim took (median and range over the claimed seeds), the surrogate's "
        "agreement with the watermark labels, the share of the zoo's other models claimed (innocent claims, all "
        "false) and the benign accuracy drop of the wrong answers; 95% t-intervals over seeds."],
        Table(OWNERSHIP_COLUMNS, rows, keys))]


def _flagged_section(frame: pd.DataFrame, several: bool = False) -> list[Section]:
    """Cells with sanity flags: their numbers are potentially unreliable (see docs/submissions.md)."""
    if "flags" not in frame:
        return []
    flags = frame["flags"]
    flagged = frame[flags.apply(lambda f: not isinstance(f, str) or f != "")]
    if not len(flagged):
        return []
    rows = [[markdown_text(v) for v in [r["zoo"]] * several + [r["victim"], r["attack"], r["defense"], r["budget"],
                                                              r["seed"]]]
            + [markdown_text(r["flags"]) if isinstance(r["flags"], str) else "flags not computed"]
            for _, r in flagged.iterrows()]
    return [Section(2, "Potentially unreliable", [
        "Cells that failed a sanity check (docs/submissions.md), or whose checks never ran: their numbers are shown "
        "above but should not be trusted until the flag is explained."],
        Table(["zoo"] * several + ["victim", "attack", "defense", "budget", "seed", "flag"], rows,
              [[k] for k in flagged["cell_key"]]))]


def render_markdown(frame: pd.DataFrame, zoos, grid, figures: Sequence[str] = ()) -> str:
    """The page as Markdown (``README.md``)."""
    return markdown_of(leaderboard_sections(frame, zoos, grid, figures))


def provenance_of(frame: pd.DataFrame) -> dict[str, str]:
    """The distinct versions and machines that produced the rows (a field with several values lists them)."""
    return {column: ", ".join(sorted({str(v) for v in frame[column] if isinstance(v, str) and v})) or "—"
            for column in PROVENANCE if column in frame}


def write_leaderboard(rows: Sequence[CellRow], zoos, grid, out_dir: Path, *, figures: bool = True) -> None:
    """Write ``results.csv``, the figures (PNG), ``README.md`` and ``index.html`` into ``out_dir`` (each atomically).

    ``zoos``: the opened zoos by the name the grid gives them (or the one zoo of a grid on one zoo);
    every zoo has its frontier, budget and protection figures.
    """
    from .zoo_summary import write_zoo_summaries
    from .webpage import render_html

    frame = results_frame(rows)
    write_atomic(out_dir / "results.csv", results_csv(frame))
    opened = zoo_map(zoos, grid)
    write_zoo_summaries(opened, out_dir)  # what a later re-render reads instead of the built zoos
    blocks, settings = describe_grid(grid, _zoo_names(opened))
    _, protection = protection_by_zoo(frame, [zoo.name for zoo in opened.values()], blocks, settings,
                                      grid.max_accuracy_drop, grid.max_false_positives)
    names = write_figures(frame, protection, list(opened.values()), out_dir, ceilings(frame, blocks)) if figures else []
    serving = read_serving(out_dir)
    names += write_serving_figures(serving, [zoo.name for zoo in opened.values()], out_dir) if figures else []
    shipped = shipped_grids(out_dir, grid.name) if has_shipped_results(out_dir) else []
    sections = leaderboard_sections(frame, zoos, grid, names, protection, serving, shipped)
    sections += shipped_grids_section(shipped)
    write_atomic(out_dir / "README.md", markdown_of(sections))
    write_atomic(out_dir / "index.html", render_html(sections, provenance_of(frame)))
