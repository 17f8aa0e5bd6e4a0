"""The page's serving section: per zoo, SLO attainment and p99 latency against load, and each defense setting's
capacity kept, from ``serving.json`` (:mod:`psml_bench.bench.serving_curves`).

The figure draws, per zoo, the undefended service under the grid's policy and under the queue-blind
comparison policy, and every defense setting whose curve differs from the undefended one (mean over
the seeds, shaded 95% t-interval); settings whose curve is the undefended one's are named in the
caption instead. The table lists every setting: the highest load meeting the SLO target, the
capacity kept (that load over the undefended one's, same policy), and goodput at a few loads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .intervals import t_interval
from .page_text import plot_text

FIGURE = "serving_curves.png"
TABLE_LOADS = ("0.5", "0.8", "1.0", "1.2")
CAPTION = ("SLO attainment (goodput: answered within the bound by a model meeting the floor) and p99 latency of "
           "benign requests against load (a fraction of the undefended capacity at the SLO; above 1: overload), "
           "benign clients only, mean over seeds with a shaded 95% t-interval; dashed: the queue-blind `infaas` "
           "policy; dotted: the SLO target.")


def figure_name(zoo_name: str, main: bool) -> str:
    """The serving figure of a zoo: :data:`FIGURE` for the grid's main zoo, suffixed with the zoo's name otherwise."""
    return FIGURE if main else f"{Path(FIGURE).stem}_{zoo_name}.png"


def entries_of(serving: Mapping[str, Any], zoo_name: str) -> list[dict[str, Any]]:
    """The zoo's measured entries, the undefended ones first, then in the order the run found them."""
    found = [e for e in serving.get("entries", {}).values() if e.get("zoo_name") == zoo_name and "error" not in e]
    return sorted(found, key=lambda e: (e["defense"] != "none", e["policy"] != _main_policy(found)))


def _main_policy(entries: Sequence[Mapping[str, Any]]) -> str:
    policies = [e["policy"] for e in entries if e["defense"] != "none"]
    return policies[0] if policies else "infaas-slo"


def _series(entry: Mapping[str, Any], metric: str) -> tuple[list[float], list[float], list[float]]:
    loads, means, halves = [], [], []
    for load, seeds in entry["curve"].items():
        values = [v[metric] for v in seeds.values() if v[metric] is not None and math.isfinite(v[metric])]
        if values:
            estimate = t_interval(values)
            loads.append(float(load))
            means.append(estimate.mean)
            halves.append(estimate.half_width if math.isfinite(estimate.half_width) else 0.0)
    return loads, means, halves


def _same_curve(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a["curve"][load][seed]["goodput"] == b["curve"][load][seed]["goodput"] and
               a["curve"][load][seed]["latency_p99_ms"] == b["curve"][load][seed]["latency_p99_ms"]
               for load in a["curve"] for seed in a["curve"][load])


def drawn(entries: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The entries the figure draws, and the labels of the defense settings whose curve equals the undefended one's."""
    policy = _main_policy(entries)
    base = next((e for e in entries if e["defense"] == "none" and e["policy"] == policy), None)
    shown, same = [], []
    for entry in entries:
        if entry["defense"] != "none" and base is not None and _same_curve(entry, base):
            same.append(entry["defense"])
        else:
            shown.append(entry)
    return shown, same


def serving_figure(entries: Sequence[Mapping[str, Any]], zoo_name: str, path: Path, plt, save) -> bool:
    """Goodput and p99 latency against load for the zoo's drawn settings; False (nothing written) without entries."""
    shown, _ = drawn(entries)
    if not shown:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    policy = _main_policy(entries)
    for index, entry in enumerate(shown):
        style = "--" if entry["policy"] != policy else "-"
        label = plot_text(entry["defense"] + (f" ({entry['policy']})" if entry["policy"] != policy else ""))
        for axes, metric in ((left, "goodput"), (right, "latency_p99_ms")):
            loads, means, halves = _series(entry, metric)
            color = "black" if entry["defense"] == "none" else f"C{index % 10}"
            axes.plot(loads, means, style, marker="o", markersize=3, color=color, label=label)
            axes.fill_between(loads, [m - h for m, h in zip(means, halves)], [m + h for m, h in zip(means, halves)],
                              color=color, alpha=0.15, linewidth=0)
    target = next((e.get("slo_target", 0.99) for e in entries), 0.99)
    left.axhline(target, linestyle=":", color="0.4")
    left.set(xlabel="load (fraction of the undefended capacity at the SLO)", ylabel="goodput (SLO attainment)",
             title=f"{zoo_name}: SLO attainment against load")
    right.set(xlabel="load (fraction of the undefended capacity at the SLO)", ylabel="p99 latency (ms)",
              title=f"{zoo_name}: tail latency against load")
    left.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    save(figure, path)
    plt.close(figure)
    return True


def capacity_rows(entries: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per setting: policy, highest load meeting the SLO target, capacity kept, goodput at :data:`TABLE_LOADS`."""
    rows = []
    for entry in entries:
        highest = entry["highest_load"]
        highest_text = ("0 (misses the target at any load)" if highest == 0 else
                        f"{highest:.3f}" + (" or more" if entry.get("capped") else ""))
        kept = entry.get("capacity_kept")
        goodputs = []
        for load in TABLE_LOADS:
            values = [v["goodput"] for v in entry["curve"].get(load, {}).values()]
            goodputs.append(t_interval(values).format() if values else "—")
        rows.append([entry["defense"], entry["policy"], highest_text, "—" if kept is None else f"{kept:.3f}",
                     *goodputs])
    return rows


def capacity_kept(serving: Mapping[str, Any], zoo_name: str, defense: str, policy: str) -> str:
    """The capacity kept of a defense setting on a zoo, formatted ('—' when not measured)."""
    for entry in serving.get("entries", {}).values():
        if (entry.get("zoo_name"), entry.get("defense"), entry.get("policy")) == (zoo_name, defense, policy):
            kept = entry.get("capacity_kept")
            return "—" if kept is None else f"{kept:.3f}"
    return "—"
