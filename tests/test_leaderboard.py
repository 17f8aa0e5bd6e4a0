"""Leaderboard rendering against a golden file, and the results.csv columns."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from psml_bench._leaderboard import RESULT_COLUMNS, render_markdown, results_frame, write_leaderboard
from psml_bench._zoo import MenuEntry

GOLDEN = Path(__file__).parent / "golden" / "leaderboard.md"


class CardOnlyZoo:
    """The parts of a built zoo that rendering reads, without weights."""

    name = "toy"
    profile_name = "toy.json"
    accuracy_range = (0.7, 0.95)
    latency_range_ms = (0.5, 3.0)
    frontier = ("fast", "slow")
    menu = (MenuEntry("fast", 0.8, 1.0), MenuEntry("slow", 0.9, 2.0), MenuEntry("bad", 0.75, 2.5))
    card = {"models": [{"id": m, "arch": a, "params": p, "macs": 10 * p}
                       for m, a, p in (("fast", "test_resnet", 1000), ("slow", "resnet18", 5000),
                                       ("bad", "test_vit", 2000))]}

    def entry(self, model_id):
        return next(e for e in self.menu if e.id == model_id)


def rows():
    out = []
    for victim, model in (("rank:1", "slow"), ("rank:2", "fast")):
        for attack in ("oracle", "psml"):
            for defense, goodput in (("none", 1.0), ("spec-noise(scale=0.05)", 0.9)):
                for seed in (0, 1):
                    failed = attack == "psml" and defense == "none" and seed == 1 and victim == "rank:2"
                    out.append({
                        "zoo": "toy", "victim": victim, "victim_model": model, "attack": attack, "defense": defense,
                        "budget": 100, "seed": seed, "status": "failed" if failed else "ok",
                        "error": "RuntimeError: boom" if failed else "",
                        "fidelity": 0.8 + 0.01 * seed - (0.1 if defense != "none" else 0),
                        "accuracy": 0.7 + 0.02 * seed, "accuracy_norm": 0.8, "queries": 100,
                        "fingerprint_queries": 40 + seed if attack == "psml" else 0,
                        "victim_hit_rate": 1.0 if attack == "oracle" else 0.9, "goodput": goodput,
                    })
    return out


def test_markdown_matches_golden_file():
    grid = SimpleNamespace(name="toy-grid", seeds=(0, 1), policy="infaas")
    text = render_markdown(results_frame(rows()), CardOnlyZoo(), grid)
    if os.environ.get("PSML_BENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_results_csv_has_the_protocol_columns_first(tmp_path):
    grid = SimpleNamespace(name="toy-grid", seeds=(0, 1), policy="infaas")
    write_leaderboard(rows(), CardOnlyZoo(), grid, tmp_path)
    frame = pd.read_csv(tmp_path / "results.csv")
    assert list(frame.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(frame) == 16 and set(frame["status"]) == {"ok", "failed"}
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
