"""The Pareto figure of one zoo: every defense setting's protection against its paired goodput ratio.

One panel per zoo, no empty panel: each setting of the zoo's protection table (every block, budget
and load) is a point at (mean goodput ratio, mean protection) with its 95% t-intervals as error
bars; colour is the defense family (``tab10``, then :data:`EXTRA_COLOURS`), the marker is
the block, the label is the strength (``scale=0.05``; with the load where a block runs several). Eligible settings
are filled, ineligible ones hollow. The dashed vertical line is the utility constraint (ratio 0.8);
the dotted horizontal line is the zoo's ceiling (psml - naive without a defense) at the budget
and load where the most settings ran.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .intervals import Estimate
from .ranking import GOODPUT_SHARE, NO_DEFENSE

MARKERS = "osD^vP*Xh<>p"
EXTRA_COLOURS = ("black", "goldenrod", "teal", "navy", "lime", "maroon", "magenta", "olive")
"""After matplotlib's ten ``tab10`` colours: more that differ from them in hue (no light twin of a dark one)."""


def _half(value: Estimate) -> float:
    return 0.0 if not isinstance(value, Estimate) or math.isnan(value.half_width) else value.half_width


def pareto_figure(table: pd.DataFrame, zoo: str, ceiling: Estimate | None, plt: Any) -> Any:
    """The zoo's Pareto figure (drawn with ``plt``, matplotlib's pyplot), or None when the zoo has no defended
    setting (no empty panel)."""
    defended = table[(table["defense"] != NO_DEFENSE) & table["goodput_ratio"].notna() & table["protection"].notna()]
    if defended.empty:
        return None
    families = sorted(set(defended["family"]))
    palette = [plt.get_cmap("tab10")(i) for i in range(10)] + list(EXTRA_COLOURS)
    colours = {family: palette[i % len(palette)] for i, family in enumerate(families)}
    blocks = list(dict.fromkeys(defended["block"]))
    markers = {block: MARKERS[i % len(MARKERS)] for i, block in enumerate(blocks)}
    several_loads = defended.groupby("block")["load"].nunique()
    figure, axes = plt.subplots(figsize=(11, 7))
    for _, row in defended.iterrows():
        eligible = row["ineligible"] == ""
        colour = colours[row["family"]]
        axes.errorbar(row["goodput_ratio"], row["protection"], xerr=_half(row["goodput_ratio_estimate"]),
                      yerr=_half(row["protection_estimate"]), fmt="none", ecolor=colour, alpha=0.45, capsize=2,
                      linewidth=1)
        axes.scatter(row["goodput_ratio"], row["protection"], marker=markers[row["block"]], s=46, zorder=3,
                     facecolors=colour if eligible else "white", edgecolors=colour, linewidths=1.4)
        label = f"{row['strength']}={row['value']}" if row["strength"] else ""
        if several_loads.get(row["block"], 1) > 1:
            label = f"{label} @{row['load']}".strip()
        if label:
            axes.annotate(label, (row["goodput_ratio"], row["protection"]), textcoords="offset points",
                          xytext=(4, 3), fontsize=7, color=colour)
    axes.axvline(GOODPUT_SHARE, color="0.4", linestyle="--", linewidth=1)
    axes.axhline(0.0, color="0.6", linewidth=0.6)
    if ceiling is not None and ceiling.known:
        axes.axhline(ceiling.mean, color="0.3", linestyle=":", linewidth=1.2)
        axes.annotate(f"zoo ceiling (psml - naive) {ceiling.format()}", (axes.get_xlim()[0], ceiling.mean),
                      textcoords="offset points", xytext=(4, 4), fontsize=8, color="0.3")
    handles = [plt.Line2D([], [], color=colours[f], marker="o", linestyle="", label=f) for f in families]
    handles += [plt.Line2D([], [], color="0.3", marker=markers[b], linestyle="", markerfacecolor="0.3",
                           label=f"block {b}") for b in blocks]
    handles += [plt.Line2D([], [], color="0.3", marker="o", linestyle="", markerfacecolor="white",
                           label="hollow: ineligible")]
    axes.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes.set_xlabel(f"goodput ratio (defended / undefended goodput, same attack, seed, load and block; "
                    f"dashed: the floor {GOODPUT_SHARE:g})")
    axes.set_ylabel("protection (fidelity drop of the strongest attack)")
    axes.set_title(f"zoo {zoo}: protection against goodput ratio, every defense setting (95% intervals)")
    axes.grid(alpha=0.3)
    return figure
