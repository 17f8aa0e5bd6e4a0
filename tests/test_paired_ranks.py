"""Paired ranks with Holm's correction, the paired goodput ratio, false positives in eligibility, row order,
common random numbers per seed, and the sequential-seed rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from psml_bench.bench.cell import attack_generator
from psml_bench.report.intervals import shared_ranks, t_interval
from psml_bench.report.leaderboard import leaderboard_sections, markdown_of
from psml_bench.report.results import results_frame
from psml_bench.report.paired_ranks import holm, narrowing, paired_ranks
from psml_bench.report.ranking import NO_DEFENSE, defense_ranking, goodput_ratios, ineligibility, ok_values
from psml_bench.report.sequential_seeds import decide, seeds_to_run
from test_leaderboard import CardOnlyZoo, rows, toy_grid


def _values(mean: float, offsets) -> dict[int, float]:
    return {seed: mean + offset for seed, offset in enumerate(offsets)}


def test_permuting_the_rows_changes_no_table_and_no_rank():
    ordered = rows()
    text = markdown_of(leaderboard_sections(results_frame(ordered), CardOnlyZoo(), toy_grid()))
    for seed in range(3):
        shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
        assert markdown_of(leaderboard_sections(results_frame(shuffled), CardOnlyZoo(), toy_grid())) == text


def test_ok_values_average_every_attack_of_a_seed_whatever_the_row_order():
    # two attacks share the undefended service of a block: g0 is their mean per seed, not the last row's
    group = pd.DataFrame({"status": ["ok"] * 4, "seed": [0, 0, 1, 1], "attack": ["a", "b", "a", "b"],
                          "goodput": [0.70, 0.66, 0.72, 0.68]})
    assert ok_values(group, "goodput") == pytest.approx({0: 0.68, 1: 0.70})
    assert ok_values(group.iloc[::-1], "goodput") == ok_values(group, "goodput")


def test_the_goodput_ratio_pairs_each_cell_with_the_undefended_cell_of_its_attack_and_seed():
    frame = pd.DataFrame({
        "zoo": "z", "victim": "rank:1", "budget": 100, "load": 0.5, "status": "ok",
        "attack": ["a", "a", "b", "b", "a"], "seed": [0, 0, 0, 0, 1],
        "defense": [NO_DEFENSE, "d", NO_DEFENSE, "d", "d"], "goodput": [0.8, 0.6, 0.5, 0.45, 0.7]})
    ratios = goodput_ratios(frame)
    assert list(ratios[:4]) == pytest.approx([1.0, 0.75, 1.0, 0.9])
    assert math.isnan(ratios[4])  # seed 1 of attack a has no undefended cell


def test_a_planted_noisy_entry_is_not_ranked_above_a_tight_one():
    tight = _values(0.019, [-0.006, 0.0, 0.006, -0.004, 0.004])   # 0.019 ± 0.006
    noisy = _values(0.02, [-0.042, 0.031, 0.052, -0.031, -0.010])      # 0.020 ± 0.050
    assert t_interval(tight.values()).format() == "0.019 ± 0.006"
    assert t_interval(noisy.values()).format() == "0.020 ± 0.050"
    ranks = paired_ranks([noisy, tight]).ranks
    assert ranks == ["=1", "=1"]
    # the same through the defense ranking, on a hand-made protection table
    table = pd.DataFrame([{"victim": "rank:1", "block": "b", "budget": 100, "load": 0.5, "defense": name,
                           "family": name, "ineligible": "", "protection": t_interval(values.values()).mean,
                           "protection_estimate": t_interval(values.values()), "protection_values": values,
                           "goodput": 1.0, "goodput_ratio": 1.0, "benign_accuracy_drop": 0.0, "perturbation": 0.0,
                           "latency_overhead": 0.0, "false_positive_clients": 0.0, "costs_goodput": False,
                           "cell_keys": []} for name, values in (("noisy", noisy), ("tight", tight))])
    ranked = defense_ranking(table)
    assert list(ranked["rank"]) == ["=1", "=1"]


def test_pairing_separates_a_consistent_difference_that_shared_noise_hides():
    # both entries move together from seed to seed (the same pool draw, the same benign stream): unpaired, their
    # intervals overlap; paired, the first is ahead on every seed by 0.01 ± 0.001
    shared = [0.05, -0.04, 0.03, -0.02, 0.0]
    first = _values(0.8, [s + 0.01 + e for s, e in zip(shared, [0.001, -0.001, 0.0, 0.0005, -0.0005])])
    second = _values(0.8, shared)
    estimates = [t_interval(first.values()), t_interval(second.values())]
    assert shared_ranks(estimates) == ["=1", "=1"]
    assert paired_ranks([first, second]).ranks == ["1", "2"]
    measured = narrowing([[first, second]])
    assert measured.pairs == 1 and measured.median_vs_welch < 0.05 and measured.separated_paired == 1
    assert measured.separated_overlap == 0 and "median" in measured.sentence()


def test_holm_steps_down_and_stops_at_the_first_failure():
    # m = 4: 0.01 <= 0.05/4, 0.015 <= 0.05/3, 0.03 > 0.05/2 stops; 0.04 is not rejected though <= 0.05
    assert holm([0.04, 0.01, 0.03, 0.015]) == [False, True, False, True]
    assert holm([0.2, math.nan]) == [False, False]
    # a third entry separated from both others only in a table of three entries after correction
    ranks = paired_ranks([_values(0.9, [0.001, -0.001, 0.0, 0.0005, -0.0005]),
                          _values(0.5, [0.002, -0.001, 0.0, -0.0005, 0.0]),
                          _values(0.5, [-0.001, 0.001, 0.0005, 0.0, -0.0005])]).ranks
    assert ranks == ["1", "=2", "=2"]


def test_one_seed_ranks_by_the_mean():
    assert paired_ranks([{0: 0.2}, {0: 0.1}, {}]).ranks == ["1", "2", "—"]


def test_false_positive_clients_count_whether_or_not_the_setting_refuses():
    # a detect-only duplicate detector that flags 8 of 8 benign clients refuses nothing and costs no goodput
    row = {"goodput": 0.7, "goodput_ratio": 1.0, "undefended_goodput": 0.7, "costs_goodput": False,
           "benign_accuracy_drop": 0.0, "false_positive_clients": 1.0, "refused_benign": 0.0}
    assert ineligibility(row, 0.01) == "false-positive clients 1.000 > 0.05"
    assert ineligibility({**row, "false_positive_clients": 0.05}, 0.01) == ""
    assert ineligibility({**row, "false_positive_clients": 0.125}, 0.01, 0.2) == ""


def test_a_seed_fixes_the_same_common_random_numbers_in_every_cell():
    """The attacker's generator (pool draws, then the surrogate's init seed drawn from it) and the benign stream
    (arrivals, clients, pool rows, specs) depend on the seed alone, not on the attack's defense or the service."""
    from psml_bench.serving.service import _BenignStream

    first, second = attack_generator(3), attack_generator(3)
    assert np.array_equal(first.integers(1000, size=50), second.integers(1000, size=50))
    assert int(first.integers(2**31)) == int(second.integers(2**31))  # train_surrogate's init seed
    assert not np.array_equal(attack_generator(3).integers(1000, size=50), attack_generator(4).integers(1000, size=50))

    class Menu:
        """What the benign stream reads of a front end: the menu's accuracies and latencies and the spec range."""

        def __init__(self):
            from psml_bench.common.metrics import SpecRange

            self._accuracy, self._latency = np.array([0.8, 0.9]), np.array([1.0, 2.0])
            self.spec_range = SpecRange((0.7, 0.95), (0.5, 3.0))

    streams = [_BenignStream(0.5, np.arange(8), 1000, Menu(), seed) for seed in (3, 3, 4)]
    for stream in streams:
        stream.time_of(300)
    same, other = streams[1], streams[2]
    for field in ("times", "client", "pool_row", "min_accuracy", "max_latency"):
        assert np.array_equal(getattr(streams[0], field), getattr(same, field))
        assert not np.array_equal(getattr(streams[0], field)[:300], getattr(other, field)[:300])


def test_sequential_seeds_add_the_next_seed_until_resolved_or_capped():
    wide = decide("psml - naive, budget 250", {0: 0.01, 1: 0.05, 2: 0.03})
    assert not wide.resolved and wide.next_seed == 3 and "next seed 3" in wide.reason
    tight = decide("psml - naive, budget 4000", {0: 0.041, 1: 0.040, 2: 0.042})
    assert tight.resolved and tight.next_seed is None
    capped = decide("protection", {s: (-1) ** s * 0.05 for s in range(10)}, cap=10)
    assert not capped.resolved and capped.next_seed is None and "cap of 10" in capped.reason
    gap = decide("psml - oracle", {0: 0.01, 2: 0.02})  # seed 1, not run, is the next one to run
    assert gap.next_seed == 1
    failed = decide("psml - oracle", {0: 0.01, 1: float("nan"), 2: 0.02})  # a failed seed is not run again
    assert failed.next_seed == 3 and failed.estimate.n == 2
    assert seeds_to_run([wide, tight, capped, gap]) == {1: ["psml - oracle"], 3: ["psml - naive, budget 250"]}
    assert decide("psml - naive, budget 250", {2: 0.03, 0: 0.01, 1: 0.05}) == wide  # a function of the cells alone
