"""The rows as one table: the frame every table and figure of the page reads, and its text as ``results.csv``.

Each :class:`~psml_bench.bench.row.CellRow` is one line, in the run's order (:meth:`CellRow.order`), its
fields the columns (:data:`RESULT_COLUMNS` first, then any other field some row has, by name), with the
derived ``goodput_ratio`` (:func:`psml_bench.report.ranking.goodput_ratios`). A field a row lacks is NaN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..bench.row import FIELDS, VOLATILE_FIELDS, CellRow
from .page_text import csv_text
from .ranking import goodput_ratios

RESULT_COLUMNS = [
    "zoo", "victim", "victim_model", "attack", "attack_access", "defense", "budget", "seed", "load",
    "benign_clients", "attacker_rate", "latency_visible", "status",
    "fidelity", "accuracy", "accuracy_norm", "kl", "l1", "queries", "fingerprint_queries", "victim_hit_rate",
    "fingerprint_accuracy", "detected", "queries_to_detection", "attacker_time_s", "attacker_work_s", "goodput",
    "goodput_ratio", "spec_goodput", "latency_p50_ms", "latency_p99_ms", "refused_benign", "dropped_benign",
    "false_positive_clients", "benign_accuracy_drop", "perturbation", "latency_overhead", "benign_requests",
    "benign_repeats", "error",
    "cell_key", "grid", "profile", "psml_bench", "git_commit", "torch", "timm", "device", "threads"]
"""The columns results.csv always has, in order (the volatile ones, :data:`VOLATILE_FIELDS`, never)."""
PLUGIN_TEXT_COLUMNS = ("attack", "defense", "error", "flags", "surrogate_recipe")
"""Columns of results.csv whose text a plugin can influence (kept from reading as spreadsheet formulas)."""


def _cell(value: Any) -> Any:
    return math.nan if value is None else value


def results_frame(rows: Sequence[CellRow]) -> pd.DataFrame:
    """One line per row in the run's order (whatever order the rows came in): :data:`RESULT_COLUMNS`, then the
    other fields that some row has, by name; ``goodput_ratio`` is derived here."""
    ordered = sorted(rows, key=CellRow.order)
    columns = [name for name in FIELDS if name not in VOLATILE_FIELDS
               and (name in RESULT_COLUMNS or any(getattr(row, name) is not None for row in ordered))]
    frame = pd.DataFrame({name: [_cell(getattr(row, name)) for row in ordered] for name in columns})
    frame["goodput_ratio"] = goodput_ratios(frame)
    return frame[RESULT_COLUMNS + sorted(name for name in columns if name not in RESULT_COLUMNS)]


def read_results(path: Path) -> pd.DataFrame:
    """A ``results.csv`` (:func:`results_csv`) read back as the frame it was written from: an empty value is NaN,
    text such as ``none`` stays text."""
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])


def results_csv(frame: pd.DataFrame) -> str:
    """The frame as results.csv: floats to six decimals, a missing value empty, plugin text inert."""
    inert = frame.assign(**{c: frame[c].map(csv_text) for c in PLUGIN_TEXT_COLUMNS if c in frame})
    return inert.to_csv(index=False, float_format="%.6f")
