"""The leaderboard's figures (matplotlib, PNG): zoo frontier, budget curves, the Pareto figure of the defenses.

Figures are written without timestamps or version metadata, so the same results give the same bytes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from ..common.files import write_atomic
from .page_text import plot_text
from .headline import ceiling_of
from .intervals import t_interval
from .pareto_plot import MARKERS, pareto_figure
from .serving_report import entries_of, figure_name as serving_figure_name, serving_figure

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


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions for a log axis over [low, high]: the 1-2-5 values inside it (at least the two ends' decades)."""
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if low <= t <= high]
    return inside if len(inside) >= 2 else [t for t in ticks if low / 10 <= t <= high * 10][:4]


def frontier_figure(zoo, path: Path) -> None:
    """Accuracy against routing latency for every model of the zoo, frontier joined and ranked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    ranks = {m: i + 1 for i, m in enumerate(sorted(zoo.frontier, key=lambda m: -zoo.entry(m).accuracy))}
    for index, entry in enumerate(sorted(zoo.menu, key=lambda e: e.latency_ms)):
        on = entry.id in ranks
        axes.scatter(entry.latency_ms, entry.accuracy, color="C0" if on else "0.6", zorder=3)
        # alternate the labels above and below the point: neighbours a few percent apart do not overlap
        axes.annotate(f"{entry.id}" + (f" (rank:{ranks[entry.id]})" if on else " (dominated)"),
                      (entry.latency_ms, entry.accuracy), textcoords="offset points",
                      xytext=(5, -12 if index % 2 else 6), fontsize=8)
    points = sorted((zoo.entry(m).latency_ms, zoo.entry(m).accuracy) for m in ranks)
    axes.step([p[0] for p in points], [p[1] for p in points], where="post", color="C0", alpha=0.5)
    axes.set_xscale("log")
    latencies = [e.latency_ms for e in zoo.menu]
    low, high = min(latencies) / 1.3, max(latencies) * 1.5
    axes.set_xlim(low, high)
    from matplotlib.ticker import FixedLocator, NullFormatter

    ticks = log_ticks(low, high)
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.set_xticklabels([f"{t:g}" for t in ticks])
    axes.xaxis.set_minor_formatter(NullFormatter())
    accuracies = [e.accuracy for e in zoo.menu]
    axes.set_ylim(min(accuracies) - 0.02, max(accuracies) + 0.02)
    axes.set_xlabel(f"latency p50, ms ({zoo.profile_name}, log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"zoo {zoo.name}: accuracy / latency frontier")
    axes.grid(alpha=0.3)
    _save(figure, path)
    plt.close(figure)


def budget_figure(frame: pd.DataFrame, path: Path, zoo_name: str = "") -> bool:
    """Fidelity against queries per attack (no defense), one panel per victim: mean with its 95% t-interval over
    seeds; each attack's points are shifted a little along the budget axis and drawn with their own marker, so an
    attack whose curve lies on another's stays visible."""
    undefended = frame[(frame["defense"] == "none") & (frame["status"] == "ok")]
    curves = undefended.groupby(["victim", "attack"]).filter(lambda g: g["budget"].nunique() > 1)
    if curves.empty:
        return False
    plt = _pyplot()
    victims = list(dict.fromkeys(curves["victim"]))
    figure, axes = plt.subplots(1, len(victims), figsize=(7 * len(victims), 4.5), squeeze=False)
    for axis, victim in zip(axes[0], victims):
        attacks = sorted(set(curves[curves["victim"] == victim]["attack"]))
        for index, attack in enumerate(attacks):
            group = curves[(curves["victim"] == victim) & (curves["attack"] == attack)]
            budgets = sorted(set(group["budget"]))
            estimates = [t_interval(group[group["budget"] == b]["fidelity"]) for b in budgets]
            shift = 1.0 + 0.035 * (index - (len(attacks) - 1) / 2)  # a dodge on the log axis
            axis.errorbar([b * shift for b in budgets], [e.mean for e in estimates],
                          yerr=[0.0 if math.isnan(e.half_width) else e.half_width for e in estimates],
                          marker=MARKERS[index % len(MARKERS)], capsize=3, label=plot_text(attack), alpha=0.9)
        axis.set_xscale("log")
        axis.set_xticks(sorted(set(curves["budget"])), [str(b) for b in sorted(set(curves["budget"]))])
        axis.minorticks_off()
        axis.set_xlabel("query budget (log scale)")
        axis.set_ylabel("fidelity (mean, 95% interval over seeds)")
        axis.set_title(f"zoo {zoo_name}, victim {victim}, no defense" if zoo_name else f"victim {victim}, no defense")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, path)
    plt.close(figure)
    return True


CAPTIONS = {
    FRONTIER: "Accuracy against routing latency of every model of the zoo; the frontier joined, ranked by accuracy.",
    BUDGET_CURVES: "Fidelity against the query budget per attack without a defense: mean over seeds with its 95% "
                   "t-interval (attacks shifted a little along the budget axis so that none hides another).",
    TRADEOFF: "Every defense setting's protection against its paired goodput ratio, with 95% t-intervals on both; "
              "filled: eligible, hollow: ineligible; labels: the strength; dashed: the goodput-ratio floor; dotted: "
              "the zoo's ceiling (psml - naive without a defense).",
}


def caption(name: str) -> str:
    """What a figure of :func:`figure_names` shows (by the main zoo's name of its kind)."""
    for kind, text in CAPTIONS.items():
        if name == kind or name.startswith(Path(kind).stem + "_"):
            return text
    return name


def figure_names(zoo_name: str, main: bool) -> tuple[str, str, str]:
    """The file names of a zoo's frontier, budget and protection figures: :data:`FRONTIER`,
    :data:`BUDGET_CURVES` and :data:`TRADEOFF` for the grid's main zoo, suffixed with the zoo's name for the others."""
    names = (FRONTIER, BUDGET_CURVES, TRADEOFF)
    return names if main else tuple(f"{Path(name).stem}_{zoo_name}.png" for name in names)


def write_figures(frame: pd.DataFrame, protection: pd.DataFrame, zoos, out_dir: Path, ceilings=None) -> list[str]:
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
        if budget_figure(rows, out_dir / budget, zoo.name):
            names.append(budget)
        figure = pareto_figure(table, zoo.name, _ceiling(table, zoo.name, ceilings or {}), _pyplot()) \
            if len(table) else None
        if figure is not None:
            _save(figure, out_dir / tradeoff)
            _pyplot().close(figure)
            names.append(tradeoff)
    return names


def write_serving_figures(serving, zoo_names, out_dir: Path) -> list[str]:
    """Each zoo's serving figure (:mod:`psml_bench.report.serving_report`), the main zoo first; return the names."""
    names = []
    for index, zoo in enumerate(zoo_names):
        name = serving_figure_name(zoo, index == 0)
        if serving_figure(entries_of(serving, zoo), zoo, out_dir / name, _pyplot(), _save):
            names.append(name)
    return names


def _ceiling(table: pd.DataFrame, zoo: str, ceilings):
    """The zoo's ceiling at the (victim, budget, load) where most of its defense settings ran (None if unknown)."""
    defended = table[table["defense"] != "none"]
    if defended.empty:
        return None
    victim, budget, load = defended.groupby(["victim", "budget", "load"], dropna=False).size().idxmax()
    return ceiling_of(ceilings, zoo, victim, budget, load)
