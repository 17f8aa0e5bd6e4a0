"""Detection on the leaderboard: for each defense setting that flags clients, how often and how soon it catches
each attack, and how many benign clients it flags by mistake.

Per (zoo, victim, defense setting, attack, budget, load): the detection rate (the share of seeds
whose cell flagged the attacker, with its 95% t-interval over seeds), the queries the attacker had
sent when first flagged (median and range over the seeds that flagged it) and the share of benign
clients flagged (false-positive clients, 95% t-interval over seeds).
"""

from __future__ import annotations

import math

import pandas as pd

from .intervals import t_interval
from .ranking import ok_values

DETECTION_COLUMNS = ["zoo", "victim", "defense", "attack", "budget", "load", "detection rate",
                     "queries to detection (median, range)", "false-positive clients", "seeds"]


def detecting_settings(frame: pd.DataFrame) -> list[str]:
    """The defense settings whose cells flagged someone: the attacker or a benign client."""
    ok = frame[frame["status"] == "ok"]
    flagged = (ok["detected"] > 0) | (ok["false_positive_clients"] > 0)
    return list(dict.fromkeys(ok.loc[flagged, "defense"]))


def median_range(values: list[float], counted: str = "detected") -> str:
    """``median (min-max, n counted)`` of query counts, ``—`` for none."""
    if not values:
        return "—"
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return f"{median:.0f} ({ordered[0]:.0f}-{ordered[-1]:.0f}, {len(ordered)} {counted})"


def detection_rows(frame: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """The detection table's rows and, per row, the keys of its cells."""
    rows, keys = [], []
    settings = detecting_settings(frame)
    part = frame[frame["defense"].isin(settings)]
    for (zoo, victim, defense, attack, budget, load), cells in part.groupby(
            ["zoo", "victim", "defense", "attack", "budget", "load"], sort=False, dropna=False):
        detected = ok_values(cells, "detected")
        ok = cells[cells["status"] == "ok"]
        queries = [float(q) for d, q in zip(ok["detected"], ok["queries_to_detection"]) if d > 0 and not math.isnan(q)]
        rows.append([str(zoo), str(victim), str(defense), str(attack), str(int(budget)), str(load),
                     t_interval(detected.values()).format(), median_range(queries),
                     t_interval(ok_values(cells, "false_positive_clients").values()).format(), str(len(detected))])
        keys.append([k for k in cells["cell_key"] if isinstance(k, str) and k])
    return rows, keys
