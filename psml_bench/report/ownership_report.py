"""Ownership on the leaderboard: for each watermarking defense setting, whether the owner can claim the stolen
surrogate, how many watermark queries it takes, and whether innocent models are claimed.

Per (zoo, victim, defense setting, attack, budget, load), over the seeds whose cell kept watermark
pairs (:mod:`psml_bench.bench.ownership`): the pairs kept from the attacker (mean), the claim rate
(share of seeds whose surrogate was claimed at a false-claim rate of at most 1e-3, 95% t-interval),
the watermark queries to the claim (median and range over the claimed seeds), the surrogate's
agreement with the watermark labels, the share of the zoo's other models claimed (innocent claims:
they were trained without the watermarked answers, so any claim is false) and the benign accuracy
drop the wrong answers cost (95% t-intervals over seeds).
"""

from __future__ import annotations

import math

import pandas as pd

from .detection import median_range
from .intervals import t_interval
from .ranking import ok_values

OWNERSHIP_COLUMNS = ["zoo", "victim", "defense", "attack", "budget", "load", "pairs kept", "claimed",
                     "queries to claim (median, range)", "surrogate agreement", "innocent claims",
                     "benign acc. drop", "seeds"]


def ownership_rows(frame: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """The ownership table's rows (settings whose cells kept watermark pairs) and, per row, its cells' keys."""
    if "watermark_pairs" not in frame:
        return [], []
    ok = frame[frame["status"] == "ok"]
    part = ok[ok["watermark_pairs"].notna()]
    rows, keys = [], []
    for (zoo, victim, defense, attack, budget, load), cells in part.groupby(
            ["zoo", "victim", "defense", "attack", "budget", "load"], sort=False, dropna=False):
        claimed = ok_values(cells, "ownership_claimed")
        queries = [float(q) for q in cells["ownership_queries"] if not math.isnan(q)]
        rows.append([str(zoo), str(victim), str(defense), str(attack), str(int(budget)), str(load),
                     t_interval(ok_values(cells, "watermark_pairs").values()).format(1),
                     t_interval(claimed.values()).format(), median_range(queries, "claimed"),
                     t_interval(ok_values(cells, "watermark_agreement").values()).format(),
                     t_interval(ok_values(cells, "innocent_claims").values()).format(),
                     t_interval(ok_values(cells, "benign_accuracy_drop").values()).format(),
                     str(len(claimed))])
        keys.append([k for k in cells["cell_key"] if isinstance(k, str) and k])
    return rows, keys
