"""The leaderboard's figures (matplotlib, PNG): zoo frontier, budget curves, protection-goodput curves.

Figures are written without timestamps or version metadata, so the same results give the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.files import write_atomic
from .page_text import plot_text
from .ranking import goodput_floor

FRONTIER = "zoo_frontier.png"
BUDGET_CURVES = "fidelity_vs_budget.png"
TRADEOFF = "protection_vs_goodput.png"


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frontier_figure(zoo, path: Path) -> None:
    """Accuracy against routing latency for every model of the zoo, frontier joined and ranked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    ranks = {m: i + 1 for i, m in enumerate(sorted(zoo.frontier, key=lambda m: -zoo.entry(m).accuracy))}
    for entry in zoo.menu:
        on = entry.id in ranks
        axes.scatter(entry.latency_ms, entry.accuracy, color="C0" if on else "0.6", zorder=3)
        axes.annotate(f"{entry.id}" + (f" (rank:{ranks[entry.id]})" if on else " (dominated)"),
                      (entry.latency_ms, entry.accuracy), textcoords="offset points", xytext=(5, -10), fontsize=8)
    points = sorted((zoo.entry(m).latency_ms, zoo.entry(m).accuracy) for m in ranks)
    axes.step([p[0] for p in points], [p[1] for p in points], where="post", color="C0", alpha=0.5)
    axes.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(ScalarFormatter())
    axes.set_xlabel(f"latency p50, ms ({zoo.profile_name}, log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"zoo {zoo.name}: accuracy / latency frontier")
    axes.grid(alpha=0.3)
    _save(figure, path)
    plt.close(figure)


def budget_figure(frame: pd.DataFrame, path: Path) -> bool:
    """Fidelity against queries per attack (no defense), one panel per victim; mean ± std over seeds."""
    undefended = frame[(frame["defense"] == "none") & (frame["status"] == "ok")]
    curves = undefended.groupby(["victim", "attack"]).filter(lambda g: g["budget"].nunique() > 1)
    if curves.empty:
        return False
    plt = _pyplot()
    victims = list(dict.fromkeys(curves["victim"]))
    figure, axes = plt.subplots(1, len(victims), figsize=(6 * len(victims), 4), squeeze=False)
    for axis, victim in zip(axes[0], victims):
        for attack, group in curves[curves["victim"] == victim].groupby("attack", sort=True):
            stats = group.groupby("budget")["fidelity"].agg(["mean", "std"]).sort_index()
            axis.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                          label=plot_text(attack))
        axis.set_xscale("log")
        axis.set_xticks(sorted(set(curves["budget"])), [str(b) for b in sorted(set(curves["budget"]))])
        axis.minorticks_off()
        axis.set_xlabel("query budget (log scale)")
        axis.set_ylabel("fidelity")
        axis.set_title(f"victim {victim}, no defense")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, path)
    plt.close(figure)
    return True


def tradeoff_figure(table: pd.DataFrame, path: Path) -> bool:
    """Protection against each defense family's cost, per (victim, block, budget, load): goodput (defenses that
    cost goodput), output perturbation (defenses that change the answers) and latency (the rest)."""
    if table.empty:
        return False
    defended = table[table["defense"] != "none"]
    panels = list(dict.fromkeys(zip(defended["victim"], defended["block"], defended["budget"], defended["load"])))
    if not panels:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(len(panels), 3, figsize=(19, 4.5 * len(panels)), squeeze=False)
    colours = {family: f"C{i % 10}" for i, family in enumerate(sorted(set(defended["family"])))}
    for row, (victim, block, budget, load) in zip(axes, panels):
        part = defended[(defended["victim"] == victim) & (defended["block"] == block) & (defended["budget"] == budget)
                        & (defended["load"] == load)]
        where = f"victim {victim}, block {block}, budget {budget}" + (f", load {load}" if load != "" else "")
        start = float(part["undefended_goodput"].iloc[0]) if len(part) else 1.0
        for family, group in part.groupby("family", sort=True):
            costs_goodput = bool(group["costs_goodput"].any())
            if costs_goodput:
                group = group.sort_values("goodput", ascending=False)
                row[0].plot(np.concatenate([[start], group["goodput"].to_numpy(float)]),
                            np.concatenate([[0.0], group["protection"].to_numpy(float)]),
                            marker="o", color=colours[family], label=plot_text(family))
            if not costs_goodput and (group["perturbation"] == 0.0).all():
                group = group.sort_values("latency_overhead")
                row[2].plot(np.concatenate([[0.0], group["latency_overhead"].to_numpy(float)]),
                            np.concatenate([[0.0], group["protection"].to_numpy(float)]),
                            marker="o", color=colours[family], label=plot_text(family))
            if (group["perturbation"] > 0.0).any():
                group = group.sort_values("perturbation")
                row[1].plot(np.concatenate([[0.0], group["perturbation"].to_numpy(float)]),
                            np.concatenate([[0.0], group["protection"].to_numpy(float)]),
                            marker="o", color=colours[family], label=plot_text(family))
        row[0].axvline(goodput_floor(start), color="0.5", linestyle="--", linewidth=1)  # the utility constraint
        row[0].set_xlabel("goodput")
        row[0].invert_xaxis()
        row[0].set_title(f"{where}:\ndefenses that cost goodput")
        row[1].set_xlabel("output perturbation (mean halved L1 on benign answers)")
        row[1].set_title(f"{where}:\ndefenses on the answers")
        row[2].set_xlabel("latency overhead (mean end-to-end latency of benign requests, relative)")
        row[2].set_title(f"{where}:\ndefenses that cost only latency")
        for axis in row:
            axis.axhline(0.0, color="0.5", linewidth=0.5)
            axis.set_ylabel("protection (fidelity drop of the strongest attack)")
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
    figure.tight_layout()  # two-line panel titles must not run into the row above
    _save(figure, path)
    plt.close(figure)
    return True


def figure_names(zoo_name: str, main: bool) -> tuple[str, str, str]:
    """The file names of a zoo's frontier, budget and protection figures: :data:`FRONTIER`,
    :data:`BUDGET_CURVES` and :data:`TRADEOFF` for the grid's main zoo, suffixed with the zoo's name for the others."""
    names = (FRONTIER, BUDGET_CURVES, TRADEOFF)
    return names if main else tuple(f"{Path(name).stem}_{zoo_name}.png" for name in names)


def write_figures(frame: pd.DataFrame, protection: pd.DataFrame, zoos, out_dir: Path) -> list[str]:
    """Write every figure the results support; return their file names.

    ``zoos``: the grid's opened zoos, the main zoo first (or one zoo). ``frame`` and ``protection``: the
    rows and the protection table of every zoo; with several zoos their ``zoo`` column splits them, and
    each zoo has its own frontier, budget and protection figures.
    """
    zoos = list(zoos) if isinstance(zoos, (list, tuple)) else [zoos]
    names = []
    for index, zoo in enumerate(zoos):
        frontier, budget, tradeoff = figure_names(zoo.name, index == 0)
        rows, table = frame, protection
        if len(zoos) > 1:
            rows = frame[frame["zoo"] == zoo.name]
            table = protection[protection["zoo"] == zoo.name]
        if hasattr(zoo, "menu") and hasattr(zoo, "frontier"):
            frontier_figure(zoo, out_dir / frontier)
            names.append(frontier)
        if budget_figure(rows, out_dir / budget):
            names.append(budget)
        if tradeoff_figure(table, out_dir / tradeoff):
            names.append(tradeoff)
    return names
