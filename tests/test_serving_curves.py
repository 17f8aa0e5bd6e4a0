"""Serving curves and capacity kept: each defense setting with benign clients only, against load
(bench/serving_curves)."""

from __future__ import annotations

import json

import pytest

from psml_bench.bench import serving_curves
from psml_bench.bench.grid import GridConfig, PluginSpec
from psml_bench.report.serving_report import capacity_rows, drawn, entries_of

SMALL = (("epochs", 1), ("min_steps", 1))


def _grid() -> GridConfig:
    defenses = (PluginSpec("none"), PluginSpec("label-only"), PluginSpec("spec-noise", (("scale", 0.05),)))
    return GridConfig("svc", "fmnist-tiny", "infaas-slo", ("rank:2",), (PluginSpec("naive", SMALL),), defenses,
                      (60,), (0,), 200, "test")


@pytest.fixture(scope="module")
def serving(tiny_zoo, tmp_path_factory):
    grid = _grid()
    out = tmp_path_factory.mktemp("serving")
    return grid, out, serving_curves.update(grid, {grid.zoo: tiny_zoo}, grid.cells(), out)


def test_every_setting_once_and_the_undefended_service_under_both_policies(serving):
    grid, _, content = serving
    found = sorted((e["defense"], e["policy"]) for e in content["entries"].values())
    assert found == [("label-only", "infaas-slo"), ("none", "infaas"), ("none", "infaas-slo"),
                     ("spec-noise(scale=0.05)", "infaas-slo")]
    for entry in content["entries"].values():
        assert set(entry["curve"]) == {str(x) for x in serving_curves.CURVE_LOADS}
        assert all(set(seeds) == {str(s) for s in serving_curves.SEEDS} for seeds in entry["curve"].values())


def test_capacity_kept_is_relative_to_the_undefended_service_of_the_same_policy(serving):
    _, _, content = serving
    by = {(e["defense"], e["policy"]): e for e in content["entries"].values()}
    assert by[("none", "infaas-slo")]["capacity_kept"] == 1.0 and by[("none", "infaas")]["capacity_kept"] == 1.0
    # an output defense neither refuses nor reroutes: the same service, the same curve and capacity
    assert by[("label-only", "infaas-slo")]["curve"] == by[("none", "infaas-slo")]["curve"]
    assert by[("label-only", "infaas-slo")]["capacity_kept"] == 1.0
    # spec noise sends some requests to models below their floor: below the 0.99 target at every load
    noisy = by[("spec-noise(scale=0.05)", "infaas-slo")]
    assert max(v["goodput"] for seeds in noisy["curve"].values() for v in seeds.values()) < 0.99
    assert noisy["highest_load"] == 0.0 and noisy["capacity_kept"] == 0.0
    # goodput does not rise with load on the undefended service (the same requests at every load)
    base = by[("none", "infaas-slo")]["curve"]
    means = [sum(v["goodput"] for v in base[str(x)].values()) for x in serving_curves.CURVE_LOADS]
    assert means[0] >= means[-1]


def test_a_rerun_reuses_every_entry_and_writes_the_same_file(serving, tiny_zoo, monkeypatch):
    grid, out, _ = serving
    before = (out / serving_curves.SERVING_FILE).read_bytes()
    monkeypatch.setattr(serving_curves, "entry", lambda *a: pytest.fail("recomputed a stored entry"))
    serving_curves.update(grid, {grid.zoo: tiny_zoo}, grid.cells(), out)
    assert (out / serving_curves.SERVING_FILE).read_bytes() == before


def test_the_page_draws_the_settings_that_differ_and_names_the_others(serving, tiny_zoo):
    _, out, _ = serving
    content = json.loads((out / serving_curves.SERVING_FILE).read_text())
    entries = entries_of(content, tiny_zoo.name)
    shown, same = drawn(entries)
    assert same == ["label-only"] and [e["defense"] for e in shown][0] == "none"
    rows = capacity_rows(entries)
    assert rows[0][:2] == ["none", "infaas-slo"] and any(r[2] == "0 (misses the target at any load)" for r in rows)


def test_a_defense_that_crashes_loses_its_curve_not_the_run(tiny_zoo, tmp_path, monkeypatch):
    grid = _grid()
    real = serving_curves.entry

    def crashing(zoo, setting, benign_queries):
        if setting.label == "label-only":
            raise RuntimeError("boom")
        return real(zoo, setting, benign_queries)

    monkeypatch.setattr(serving_curves, "entry", crashing)
    monkeypatch.setattr(serving_curves, "SEEDS", (0,))
    content = serving_curves.update(grid, {grid.zoo: tiny_zoo}, grid.cells(), tmp_path)
    failed = [e for e in content["entries"].values() if "error" in e]
    assert [e["defense"] for e in failed] == ["label-only"] and failed[0]["error"] == "RuntimeError: boom"
    assert len(content["entries"]) == 4
