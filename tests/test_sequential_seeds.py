"""Sequential seeds: a block's fields checked at load, the cells its next round asks for (from the rows alone), and
a run on the tiny zoo that adds seeds up to the cap, then a rerun that computes nothing and asks for the same cells."""

from __future__ import annotations

import random

import pytest

from helpers import tiny_grid
from psml_bench.bench.grid import load_grid
from psml_bench.bench.row import CellRow
from psml_bench.contract.errors import ConfigError
from psml_bench.report.ranking import describe_grid
from psml_bench.report.results import results_frame
from psml_bench.report.sequential_seeds import block_decisions, cells_asked
from psml_bench.runner import make_executor, run_grid

NOISE = '{ name = "spec-noise", sweep = { scale = [0.1] } }'
ZOO = "fmnist-tiny"


def sequential_grid(tmp_path, *, block: str = "sequential_seeds = true\nseed_cap = 4\nseeds = [0, 1, 2]"):
    return load_grid(tiny_grid(tmp_path / "seq.toml", budget=200, defense="none", attacks=("psml", "naive"),
                               defenses=(NOISE,), block=block))


@pytest.mark.parametrize("block, message", [
    ("seed_cap = 5", r"field 'blocks.0.seed_cap': seed_cap applies to sequential seeds only"),
    ("target_half_width = 0.02", r"field 'blocks.0.target_half_width': target_half_width applies to sequential"),
    ("sequential_seeds = true\nseed_cap = 1", r"field 'blocks.0.seed_cap': seed_cap must be an integer from 2 to 100"),
    ("sequential_seeds = true\nseeds = [0, 1, 2, 3]\nseed_cap = 3",
     r"seed_cap must be an integer from 4 to 100 .*got 3"),
    ("sequential_seeds = true\nseed_cap = 2.5", r"seed_cap must be an integer"),
    ("sequential_seeds = true\ntarget_half_width = 0", r"field 'blocks.0.target_half_width': target_half_width must "
                                                       r"be a number in \(0, 1\].*got 0"),
    ("sequential_seeds = true\ntarget_half_width = \"wide\"", r"target_half_width must be a number in \(0, 1\]"),
    ("sequential_seeds = \"yes\"", r"field 'blocks.0.sequential_seeds': 'yes' is not of type 'boolean'"),
])
def test_a_bad_sequential_field_is_refused_with_one_line(tmp_path, block, message):
    with pytest.raises(ConfigError, match=message):
        sequential_grid(tmp_path, block=block)


def test_a_sequential_block_without_a_headline_comparison_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'blocks.0.sequential_seeds': block 'b' has no headline comparison"):
        load_grid(tiny_grid(tmp_path / "lone.toml", budget=200, defense="none", block="sequential_seeds = true"))


def rows_of(grid, fidelity: dict[tuple[str, str], list[float | None]], **costs: float) -> list[CellRow]:
    """Hand-made rows of the grid's block (seed i: the i-th value; None: a failed cell), on the service."""
    label = {spec.name: grid.plugin(kind, spec).label for kind, specs in (("attack", grid.attacks),
                                                                          ("defense", grid.defenses)) for spec in specs}
    rows = []
    for (attack, defense), values in fidelity.items():
        for seed, value in enumerate(values):
            rows.append(CellRow(
                zoo=ZOO, victim="rank:2", attack=label[attack], defense=label[defense], budget=200, seed=seed,
                status="ok" if value is not None else "failed", attack_access="service", load=0.5,
                fidelity=value if value is not None else float("nan"), goodput=1.0, perturbation=0.0,
                latency_overhead=0.0, refused_benign=0.0, false_positive_clients=0.0,
                benign_accuracy_drop=costs.get(defense, 0.0), cell_key=f"{attack}-{defense}-{seed}"))
    return rows


UNDEFENDED = {("psml", "none"): [0.80, 0.85, 0.75], ("naive", "none"): [0.70, 0.72, 0.71]}
"""psml - naive: 0.10, 0.13, 0.04 (a half-width far above 0.01)."""


def asked(grid, rows) -> set[tuple[str, str, int]]:
    return {(c.attack.name, c.defense.name, c.seed) for c in cells_asked(grid, rows, {ZOO: ZOO})}


def test_the_next_round_asks_for_the_cells_of_each_open_comparison_only(tmp_path):
    grid = sequential_grid(tmp_path)
    tight = {**UNDEFENDED, ("psml", "spec-noise"): [0.79, 0.84, 0.74], ("naive", "spec-noise"): [0.70, 0.71, 0.70]}
    rows = rows_of(grid, tight)  # protection 0.01 on every seed: resolved; psml - naive open
    assert asked(grid, rows) == {("psml", "none", 3), ("naive", "none", 3)}
    assert asked(grid, random.Random(0).sample(rows, len(rows))) == asked(grid, rows)  # the rows alone decide
    wide = {**tight, ("psml", "spec-noise"): [0.60, 0.84, 0.74]}  # protection 0.20, 0.01, 0.01: open too
    assert asked(grid, rows_of(grid, wide)) == {(a, d, 3) for a in ("psml", "naive") for d in ("none", "spec-noise")}
    ineligible = rows_of(grid, wide, **{"spec-noise": 0.2})  # an ineligible setting's protection is no headline
    assert asked(grid, ineligible) == {("psml", "none", 3), ("naive", "none", 3)}


def test_a_comparison_stops_at_the_cap_and_a_failed_seed_counts(tmp_path):
    grid = sequential_grid(tmp_path)
    views, settings = describe_grid(grid)
    four = {("psml", "none"): [0.80, 0.85, 0.75, 0.90], ("naive", "none"): [0.70, 0.72, 0.71, None]}
    rows = rows_of(grid, four)
    assert asked(grid, rows) == set()
    (comparison, decision), = block_decisions(results_frame(rows), views[0], settings, 0.01, 0.05)
    assert comparison.what.startswith("psml(") and sorted(comparison.differences) == [0, 1, 2, 3]
    assert decision.status == "open at the cap" and decision.estimate.n == 3
    assert "open at the cap of 4 seeds (1 of them failed)" in decision.reason


def test_the_most_cells_a_sequential_block_may_add_are_its_comparisons_cells_up_to_the_cap(tmp_path):
    grid = sequential_grid(tmp_path)  # psml, naive x none, spec-noise; seeds 0-2 declared, cap 4
    block, = grid.parts()
    cells = {(c.attack.name, c.defense.name, c.seed) for c in grid.sequential_cells(block)}
    assert cells == {(a, d, 3) for a in ("psml", "naive") for d in ("none", "spec-noise")}
    assert set(grid.sequential_cells(block)) >= set(cells_asked(grid, rows_of(grid, UNDEFENDED), {ZOO: ZOO}))
    plain = load_grid(tiny_grid(tmp_path / "plain.toml", budget=200, defense="none", attacks=("psml", "naive")))
    assert plain.sequential_cells(plain.parts()[0]) == []


def test_a_run_adds_seeds_up_to_the_cap_and_a_rerun_computes_nothing(tiny_zoo, cache_dir, tmp_path):
    grid = load_grid(tiny_grid(tmp_path / "seq.toml", budget=200, defense="none", attacks=("psml", "naive"),
                               block="sequential_seeds = true\nseed_cap = 3\ntarget_half_width = 0.000001"))
    out = tmp_path / "board"
    told = []
    first = run_grid(grid, out, cache_dir=cache_dir, progress=False, executor=make_executor("inline"),
                     on_preflight=told.append)
    assert told[0].to_compute == 2  # the declared seed's cells, then the most the later seeds may add
    assert told[0].sequential_at_most == 4 and "may then add up to 4 cells (later seeds" in told[0].text()
    assert first.failed == 0 and first.computed == 6 and len(first.rounds) == 2
    assert sorted((r.attack.split("(")[0], r.seed) for r in first.rows) == [
        (a, s) for a in ("naive", "psml") for s in range(3)]
    page = (out / "README.md").read_text()
    assert "### Seeds until the headline separates: block `b`" in page
    assert "open at the cap of 3 seeds" in page and "0 of 1 headline comparisons resolved" in page
    again = run_grid(grid, out, cache_dir=cache_dir, progress=False, executor=make_executor("inline"),
                     require_cached=True)
    assert again.computed == 0 and again.cached == 6 and again.rounds == first.rounds
    assert (out / "README.md").read_text() == page
