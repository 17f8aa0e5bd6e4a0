"""Threat settings on the page: where the attacker's pool comes from and how many client ids it uses.

A row records ``attacker_data`` and ``attacker_identities`` only away from their defaults
(in-distribution, one identity); a block with several settings is one view per setting
(:func:`psml_bench.report.ranking.describe_grid`), named with :func:`threat_label`.
"""

from __future__ import annotations

import math

import pandas as pd

from ..zoo.attacker_data import IN_DISTRIBUTION


def threat_label(attacker_data: str, attacker_identities: int) -> str:
    """A threat setting in words: where the attacker's pool comes from and how many client ids it uses."""
    return f"{attacker_data}, {attacker_identities} identit{'y' if attacker_identities == 1 else 'ies'}"


def threat_settings(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row, its ``attacker_data`` and ``attacker_identities`` (a row records neither at the defaults:
    in-distribution, one identity)."""
    data = rows["attacker_data"] if "attacker_data" in rows else pd.Series(math.nan, index=rows.index)
    identities = rows["attacker_identities"] if "attacker_identities" in rows else pd.Series(math.nan,
                                                                                            index=rows.index)
    return pd.DataFrame({"attacker_data": data.fillna(IN_DISTRIBUTION).astype(str),
                         "attacker_identities": identities.fillna(1).astype(int)}, index=rows.index)
