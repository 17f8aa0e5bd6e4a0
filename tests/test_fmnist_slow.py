"""Checks on the full fmnist zoo (slow: builds it, about 19 minutes on 2 cores, if not cached)."""

from __future__ import annotations

import pytest

from psml_bench.bench.cell import run_cell
from psml_bench.bench.grid import Cell, PluginSpec, load_grid
from psml_bench.zoo.build import open_zoo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fmnist():
    return open_zoo("fmnist", progress=False)


def test_fmnist_zoo_has_the_promised_spread(fmnist):
    # issue 17: real serving architectures, a frontier of at least 5, accuracies spread over at least 15 points
    assert not any(m["arch"].startswith("test_") for m in fmnist.card["models"]) and len(fmnist.frontier) >= 5
    accuracies = sorted(fmnist.entry(m).accuracy for m in fmnist.frontier)
    assert accuracies[-1] - accuracies[0] >= 0.15


@pytest.mark.parametrize("victim", ["rank:1", "rank:2", "rank:3"])
def test_psml_fingerprints_every_frontier_role(fmnist, victim):
    grid = load_grid("default")
    row = run_cell(fmnist, grid, Cell(victim, PluginSpec("psml", (("min_steps", 10), ("epochs", 1))),
                                      PluginSpec("none"), 1000, 0))
    extraction = row.queries - row.fingerprint_queries
    assert row.status == "ok" and row.fingerprint_queries < 100
    assert row.victim_hit_rate * row.queries >= extraction
