"""Broken defenses fail with one message naming them: a dropped answer row, specs of the wrong length, late
nondeterminism."""

from __future__ import annotations

import numpy as np
import pytest

from psml_bench import Defense, Spec
from psml_bench.bench.cell import run_cell
from psml_bench.bench.conformance import DETERMINISM_CALLS, defense_conformance
from psml_bench.contract.errors import DefenseError
from psml_bench.bench.grid import Cell, GridConfig, PluginSpec
from psml_bench.contract.registries import DEFENSES
from psml_bench.bench.sanity import defense_flags
from psml_bench.serving.frontend import Frontend


class DropsARow(Defense):
    def postprocess(self, probabilities, rng):
        return probabilities[:-1]


class WrongSpecLength(Defense):
    def perturb_spec(self, min_accuracy, max_latency_ms, spec_range, rng):
        return np.append(min_accuracy, min_accuracy[:1]), max_latency_ms


class ReroutesAway(Defense):
    def reroute(self, served, candidates, rng):
        return served + candidates.shape[1]


class LateNondeterministic(Defense):
    """Claims determinism and keeps it for the first three calls, then answers with the classes rolled."""

    def postprocess(self, probabilities, rng):
        self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1
        return probabilities.roll(1, dims=1) if self.calls > 3 else probabilities


BROKEN = {"drops-a-row": (DropsARow, r"answer\(\)/postprocess\(\) must return a torch.Tensor of shape \(4, 10\), "
                                     r"got shape \(3, 10\), one row per answered query"),
          "wrong-spec-length": (WrongSpecLength, r"perturb_spec\(\) must return two arrays of shape \(4,\), one spec "
                                                 r"per request, got shapes \(5,\) and \(4,\)")}


@pytest.fixture
def broken_defenses():
    for name, (cls, _) in BROKEN.items():
        DEFENSES.add(name, cls, source="test")
    DEFENSES.add("late-nondeterministic", LateNondeterministic, source="test")
    yield
    for name in [*BROKEN, "late-nondeterministic"]:
        DEFENSES._entries.pop(name)


def _grid(defense: str) -> GridConfig:
    naive = PluginSpec("naive", (("epochs", 1), ("min_steps", 20)))
    return GridConfig("broken", "fmnist-tiny", "infaas", ("rank:1",), (naive,), (PluginSpec(defense),), (60,), (0,),
                      50, "test")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_defense_is_named_by_the_server_validate_and_the_cell(tiny_zoo, broken_defenses, name):
    cls, message = BROKEN[name]
    server = Frontend(tiny_zoo, defense=cls(), rng=np.random.default_rng(0))
    spec = Spec(sum(server.spec_range.accuracy) / 2, sum(server.spec_range.latency_ms) / 2)
    with pytest.raises(DefenseError, match=f"^defense '{name}' {message}$"):
        server.query(tiny_zoo.splits["benign_x"][:4], spec)
    failed = [c for c in defense_conformance(tiny_zoo, name, []) if not c.ok]
    assert len(failed) == 1 and failed[0].detail.startswith(f"defense '{name}' "), failed
    grid = _grid(name)
    row = run_cell(tiny_zoo, grid, Cell("rank:1", grid.attacks[0], grid.defenses[0], 60, 0))
    assert row.status == "failed"
    assert row.error.startswith(f"DefenseError: defense '{name}' ") and "\n" not in row.error, row.error


def test_a_defense_rerouting_outside_the_menu_is_named(tiny_zoo):
    ReroutesAway.name = "reroutes-away"
    server = Frontend(tiny_zoo, defense=ReroutesAway(), rng=np.random.default_rng(0))
    spec = Spec(sum(server.spec_range.accuracy) / 2, sum(server.spec_range.latency_ms) / 2)
    with pytest.raises(DefenseError, match="^defense 'reroutes-away' rerouted to models outside the menu$"):
        server.query(tiny_zoo.splits["benign_x"][:4], spec)


def test_determinism_is_checked_over_more_than_two_calls(tiny_zoo, broken_defenses):
    grid = _grid("late-nondeterministic")
    cell = Cell("rank:1", grid.attacks[0], grid.defenses[0], 60, 0)
    assert defense_flags(tiny_zoo, grid, cell) == []  # the leaderboard cell's two-call probe cannot see it
    checks = {c.name: c for c in defense_conformance(tiny_zoo, "late-nondeterministic", [])}
    check = checks[f"defaults: probability vectors, determinism as claimed over {DETERMINISM_CALLS} calls"]
    assert not check.ok
    assert check.detail == (f"defense claims deterministic = True but answered identical calls differently "
                            f"(call 4 of {DETERMINISM_CALLS} differed from the first)")


class RefusesEverything(Defense):
    deterministic = False

    def admit(self, requests, rng):
        return np.zeros(len(requests), dtype=bool)


def test_a_probe_failing_on_refused_rows_says_what_the_probe_sends(tiny_zoo):
    DEFENSES.add("refuses-everything", RefusesEverything, source="test")
    grid = _grid("refuses-everything")
    flags = defense_flags(tiny_zoo, grid, Cell("rank:1", grid.attacks[0], grid.defenses[0], 60, 0))
    assert flags == ["defense outputs are not probability vectors (64 NaN rows in the first call were refused "
                     "requests: the probe is one client sending the same 64 inputs in each of 2 identical calls, and "
                     "it must answer the first)"]


def test_validate_shows_a_defense_beside_the_undefended_service(tiny_zoo):
    checks = defense_conformance(tiny_zoo, "label-only", [])
    completes = next(c for c in checks if c.name == "defaults: a naive attack completes a cell")
    assert completes.ok and "(undefended " in completes.detail and "false-positive benign clients 0.000" in \
        completes.detail and "benign requests refused 0.000" in completes.detail, completes.detail
