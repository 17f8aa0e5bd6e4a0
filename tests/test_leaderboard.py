"""Leaderboard rendering against a golden file, protection and AUC, figures and the results.csv columns."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from psml_bench.bench.grid import Block, GridConfig, PluginSpec
from psml_bench.bench.row import CellRow
from psml_bench.report.intervals import Estimate, paired_difference, shared_ranks, t_interval
from psml_bench.report.leaderboard import render_markdown, write_leaderboard
from psml_bench.report.ranking import (FIXED, OWN, attack_ranking, defense_ranking, describe_grid, ineligibility,
    protection_table, tradeoff_auc)
from psml_bench.report.results import RESULT_COLUMNS, results_frame
from psml_bench.zoo.model_zoo import MenuEntry

GOLDEN = Path(__file__).parent / "golden" / "leaderboard.md"
NONE, NOISE_1, NOISE_2 = PluginSpec("none"), PluginSpec("spec-noise", (("scale", 0.05),)), \
    PluginSpec("spec-noise", (("scale", 0.1),))
ORACLE, PSML, PSML_HARD = PluginSpec("oracle"), PluginSpec("psml"), PluginSpec("psml", (("labels", "hard"),))


class CardOnlyZoo:
    """The parts of a built zoo that rendering reads, without weights."""

    name = "toy"
    profile_name = "toy.json"
    accuracy_range = (0.7, 0.95)
    latency_range_ms = (0.5, 3.0)
    frontier = ("fast", "slow")
    disagreement = {"all_models": 0.2125, "frontier": 0.15}
    menu = (MenuEntry("fast", 0.8, 1.0), MenuEntry("slow", 0.9, 2.0), MenuEntry("bad", 0.75, 2.5))
    card = {"models": [{"id": m, "arch": a, "params": p, "macs": 10 * p}
                       for m, a, p in (("fast", "test_resnet", 1000), ("slow", "resnet18", 5000),
                                       ("bad", "test_vit", 2000))]}

    def entry(self, model_id):
        return next(e for e in self.menu if e.id == model_id)


def toy_grid() -> GridConfig:
    blocks = (Block("budgets", ("rank:1", "rank:2"), (ORACLE, PSML), (NONE,), (100, 200), (0, 1)),
              Block("defenses", ("rank:1", "rank:2"), (PSML, PSML_HARD), (NONE, NOISE_1, NOISE_2), (100,), (0, 1)))
    return GridConfig("toy-grid", "toy", "infaas", ("rank:1", "rank:2"), (ORACLE, PSML, PSML_HARD),
                      (NONE, NOISE_1, NOISE_2), (100, 200), (0, 1), 100, "test", blocks)


FIDELITY_DROP = {"none": 0.0, "spec-noise(scale=0.05)": 0.02, "spec-noise(scale=0.1)": 0.1}
GOODPUT = {"none": 1.0, "spec-noise(scale=0.05)": 0.9, "spec-noise(scale=0.1)": 0.7}
ACCURACY_DROP = {"none": 0.0, "spec-noise(scale=0.05)": 0.0, "spec-noise(scale=0.1)": 0.6}


def rows() -> list[CellRow]:
    """The toy grid's rows, as cells of different ages store them (seed 0's predate the sanity flags)."""
    out = []
    grid = toy_grid()
    for cell in grid.cells():
        attack = {ORACLE: "oracle", PSML: "psml", PSML_HARD: "psml(labels=hard)"}[cell.attack]
        defense = {NONE: "none", NOISE_1: "spec-noise(scale=0.05)", NOISE_2: "spec-noise(scale=0.1)"}[cell.defense]
        failed = attack == "psml" and defense == "none" and cell.seed == 1 and cell.victim == "rank:2" \
            and cell.budget == 200
        hard = 0.03 if "hard" in attack else 0.0
        out.append({
            "zoo": "toy", "victim": cell.victim, "victim_model": "slow" if cell.victim == "rank:1" else "fast",
            "attack": attack, "attack_access": "victim" if attack == "oracle" else "service", "defense": defense,
            "budget": cell.budget, "seed": cell.seed, "load": cell.service.load, "status": "failed" if failed else "ok",
            "error": "RuntimeError: boom" if failed else "",
            "fidelity": 0.7 + cell.budget / 1000 + 0.01 * cell.seed - FIDELITY_DROP[defense] - hard,
            "accuracy": 0.7 + 0.02 * cell.seed, "accuracy_norm": 0.8, "kl": 0.2, "l1": 0.1,
            "queries": cell.budget, "fingerprint_queries": 40 + cell.seed if attack != "oracle" else 0,
            "victim_hit_rate": 1.0 if attack == "oracle" else 0.9, "fingerprint_accuracy": 1.0,
            "goodput": GOODPUT[defense], "benign_accuracy_drop": ACCURACY_DROP[defense], "perturbation": 0.0,
            "latency_overhead": 0.01, "cell_key": f"k{len(out)}",
        })
        if cell.seed == 1:
            out[-1]["flags"] = ""  # seed 0's cells predate the sanity checks: their flags were never computed
    return [CellRow.from_dict(row) for row in out]


def test_markdown_matches_golden_file():
    frame = results_frame(rows())
    text = render_markdown(frame, CardOnlyZoo(), toy_grid(), ["zoo_frontier.png"])
    if os.environ.get("PSML_BENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_defense_settings_read_family_and_strength():
    blocks, settings = describe_grid(toy_grid())
    assert [b.name for b in blocks] == ["budgets", "defenses"]
    assert blocks[1].attacks == ("psml", "psml(labels=hard)")
    assert settings["spec-noise(scale=0.1)"].family == "spec-noise"
    assert settings["spec-noise(scale=0.1)"].strength == "scale" and settings["spec-noise(scale=0.1)"].value == 0.1
    assert settings["none"].strength is None


def protection(frame=None, max_accuracy_drop=0.01):
    blocks, settings = describe_grid(toy_grid())
    return protection_table(results_frame(rows()) if frame is None else frame, blocks, settings, max_accuracy_drop)


def test_protection_is_the_drop_of_the_strongest_service_attack():
    table = protection()
    row = table[(table["victim"] == "rank:1") & (table["defense"] == "spec-noise(scale=0.1)")].iloc[0]
    # psml (soft) is the strongest: mean fidelity over seeds 0.7 + 0.1 + 0.005 - 0.1; oracle is not a service attack
    assert row["strongest_attack"] == "psml" and row["block"] == "defenses"
    assert row["fidelity"] == pytest.approx(0.705)
    assert row["protection"] == pytest.approx(0.1)
    assert row["goodput"] == pytest.approx(0.7)
    # the same drop on both seeds: a paired difference with no spread, so an interval of width 0
    assert row["protection_estimate"].n == 2 and row["protection_estimate"].half_width == pytest.approx(0.0)
    # too much benign accuracy lost: ineligible (with the reason) and flagged as degenerate
    assert row["goodput_ratio"] == pytest.approx(0.7) and row["goodput_ratio_estimate"].n == 2
    assert row["protection_values"] == pytest.approx({0: 0.1, 1: 0.1})
    assert row["ineligible"] == ("goodput ratio 0.700 < 0.8 (goodput 0.700, undefended 1.000); "
                                 "benign acc. drop 0.600 > 0.01")
    assert "benign accuracy drop 0.600 > 0.5" in row["flags"] and "flags not computed" in row["flags"]
    # the budgets block has no defense: no protection rows come from it
    assert set(table["block"]) == {"defenses"}


def test_t_interval_and_paired_difference():
    estimate = t_interval([0.8, 0.82, 0.84])
    # t(0.975, 2) = 4.303; s = 0.02; half-width 4.303 * 0.02 / sqrt(3)
    assert estimate.mean == pytest.approx(0.82) and estimate.half_width == pytest.approx(4.3027 * 0.02 / 3 ** 0.5,
                                                                                          rel=1e-4)
    assert t_interval([0.5]).format() == "0.500" and t_interval([]).format() == "—"
    difference = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.85, 1: 0.75, 2: 0.65, 3: 0.0})
    assert difference.mean == pytest.approx(0.05) and difference.half_width == pytest.approx(0.0) and difference.n == 3


def test_overlapping_intervals_share_a_rank():
    ranks = shared_ranks([Estimate(0.07, 0.02, 3), Estimate(0.05, 0.02, 3), Estimate(0.01, 0.005, 3),
                          Estimate(float("nan"), float("nan"), 0)])
    assert ranks == ["=1", "=1", "3", "—"]
    assert shared_ranks([Estimate(0.2, float("nan"), 1), Estimate(0.1, float("nan"), 1)]) == ["1", "2"]


def test_an_attack_above_the_oracle_by_more_than_its_interval_is_flagged():
    data = [replace(row, fidelity=row.fidelity + 0.05 + 0.001 * row.seed)
            if row.attack == "psml" and row.defense == "none" and row.budget == 100 else row for row in rows()]
    blocks, _ = describe_grid(toy_grid())
    ranking = attack_ranking(results_frame(data), blocks[0])
    psml = [e for e in ranking if e["attack"] == "psml" and e["budget"] == 100 and e["victim"] == "rank:1"][0]
    assert any(flag.startswith("beats oracle by 0.051") for flag in psml["flags"])
    oracle = [e for e in ranking if e["attack"] == "oracle" and e["budget"] == 100 and e["victim"] == "rank:1"][0]
    assert not any(flag.startswith("beats oracle") for flag in oracle["flags"])


def test_tracks_follow_the_recipe_the_surrogate_was_trained_with():
    data = [replace(row, surrogate_recipe="test_resnet, epochs=10, min_steps=40")
            if row.attack == "psml(labels=hard)" else row for row in rows()]
    blocks, _ = describe_grid(toy_grid())
    ranking = attack_ranking(results_frame(data), blocks[1])
    tracks = {e["attack"]: (e["track"], e["rank"]) for e in ranking if e["defense"] == "none"}
    assert tracks["psml"] == (FIXED, "1") and tracks["psml(labels=hard)"] == (OWN, "own")


def test_tradeoff_auc_integrates_protection_over_goodput_above_the_floor():
    assert tradeoff_auc([]) == 0.0
    # (1, 0) -> (0.9, 0.02): area 0.001; -> (0.7, 0.1) cut at 0.8 where protection is 0.06: area 0.004
    assert tradeoff_auc([(0.9, 0.02), (0.7, 0.1)]) == pytest.approx((0.001 + 0.004) / 0.2)
    # a curve that stops at goodput 0.9 gets no credit below it
    assert tradeoff_auc([(0.9, 0.02)]) == pytest.approx(0.001 / 0.2)
    assert tradeoff_auc([(1.0, 0.3)]) == 0.0
    # under load the curve starts at the undefended goodput g0 = 0.7 and the floor is 0.8 * g0 = 0.56
    assert tradeoff_auc([(0.6, 0.1)], start=0.7) == pytest.approx(0.1 * 0.1 / 2 / 0.14)


def test_under_load_a_setting_must_keep_a_share_of_the_undefended_goodput():
    # a service that already misses 28% of its latency bounds under load (the fmnist zoo at load 0.5)
    # ranks a defense by what it costs on top of that (the paired goodput ratio), not by an absolute goodput
    row = {"goodput": 0.65, "goodput_ratio": 0.9, "undefended_goodput": 0.72, "costs_goodput": True,
           "benign_accuracy_drop": 0.0, "false_positive_clients": 0.0}
    assert ineligibility(row, 0.01) == ""
    assert ineligibility({**row, "goodput": 0.55, "goodput_ratio": 0.76}, 0.01) == \
        "goodput ratio 0.760 < 0.8 (goodput 0.550, undefended 0.720)"
    # a drop just above the bound says so with the decimals that tell them apart
    assert ineligibility({**row, "benign_accuracy_drop": 0.0103}, 0.01) == "benign acc. drop 0.0103 > 0.01"


def test_defenses_rank_by_protection_of_their_eligible_settings():
    ranked = defense_ranking(protection())
    best = ranked[(ranked["victim"] == "rank:1")].iloc[0]
    # scale 0.1 protects more but its goodput 0.7 is below the floor: scale 0.05 counts
    assert best["at"] == "spec-noise(scale=0.05)" and best["protection"] == pytest.approx(0.02)
    assert best["rank"] == "1" and best["eligible"] == "1 of 2"
    assert not math.isnan(best["auc"])


def test_the_accuracy_constraint_is_a_grid_parameter():
    table = protection(max_accuracy_drop=0.7)
    row = table[(table["victim"] == "rank:1") & (table["defense"] == "spec-noise(scale=0.1)")].iloc[0]
    assert row["ineligible"] == "goodput ratio 0.700 < 0.8 (goodput 0.700, undefended 1.000)"


def test_every_zoo_of_a_grid_has_its_own_figures(tmp_path):
    """The main zoo's figures keep their names; a second zoo's carry its name and show only its rows."""
    from psml_bench.report.plots import write_figures

    class Second(CardOnlyZoo):
        name = "toy-b"

    second_rows = [replace(r, zoo="toy-b", fidelity=r.fidelity - 0.1) for r in rows()]
    frame = results_frame(rows() + second_rows)
    table = pd.concat([protection(frame[frame["zoo"] == z]).assign(zoo=z) for z in ("toy", "toy-b")])
    names = write_figures(frame, table, [CardOnlyZoo(), Second()], tmp_path)
    assert names == ["zoo_frontier.png", "fidelity_vs_budget.png", "protection_vs_goodput.png",
                     "zoo_frontier_toy-b.png", "fidelity_vs_budget_toy-b.png", "protection_vs_goodput_toy-b.png"]
    alone = tmp_path / "alone"
    alone.mkdir()
    write_figures(results_frame(rows()), protection(), CardOnlyZoo(), alone)
    for name in ("fidelity_vs_budget.png", "protection_vs_goodput.png"):  # the main zoo's rows only
        assert (tmp_path / name).read_bytes() == (alone / name).read_bytes()
    assert (tmp_path / "fidelity_vs_budget_toy-b.png").read_bytes() != (alone / "fidelity_vs_budget.png").read_bytes()


def test_results_csv_has_the_protocol_columns_first_and_figures_are_written(tmp_path):
    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path)
    frame = pd.read_csv(tmp_path / "results.csv")
    assert list(frame.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(frame) == len(rows()) and set(frame["status"]) == {"ok", "failed"}
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert (tmp_path / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert figures == ["fidelity_vs_budget.png", "protection_vs_goodput.png", "zoo_frontier.png"]
    assert all((tmp_path / f).read_bytes().startswith(b"\x89PNG") for f in figures)
    assert all(f"]({f})" in (tmp_path / "README.md").read_text() for f in figures)
    first = {f: (tmp_path / f).read_bytes() for f in figures}
    write_leaderboard(rows(), CardOnlyZoo(), toy_grid(), tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in figures} == first  # byte-identical on a re-run
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
