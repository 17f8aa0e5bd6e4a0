"""The lock: a run writes each model's weights hash into zoos.json, zoo build matches it, run tells a preflight."""

from __future__ import annotations

import json

import pytest

from psml_bench.bench.grid import GridConfig, PluginSpec
from psml_bench.cli import main
from psml_bench.contract.errors import RecomputeRefused
from psml_bench.render import rerender
from psml_bench.report.zoo_summary import read_zoo_summaries
from psml_bench.runner import make_executor, run_grid
from psml_bench.zoo.lock import LOCK_FILE, match_lines, read_locks

NAIVE = PluginSpec("naive", (("epochs", 1), ("min_steps", 20)))


def _grid(budgets: tuple[int, ...]) -> GridConfig:
    return GridConfig("lock-test", "fmnist-tiny", "infaas", ("rank:1",), (NAIVE,), (PluginSpec("none"),), budgets, (0,),
                      50, "test")


@pytest.fixture(scope="module")
def first_run(tiny_zoo, cache_dir, tmp_path_factory):
    """One tiny cell run into a fresh leaderboard directory, and the preflight it told."""
    out = tmp_path_factory.mktemp("lock") / "lb"
    told = []
    summary = run_grid(_grid((60,)), out, cache_dir=cache_dir, progress=False, executor=make_executor("inline"),
                       on_preflight=told.append)
    assert summary.failed == 0, [row.error for row in summary.rows]
    return out, told[0]


def test_a_run_writes_the_lock_with_each_models_weights_hash(tiny_zoo, first_run):
    out, plan = first_run
    assert (plan.reused, plan.to_compute, plan.estimate_s) == (0, 1, None)  # no stored cell: no estimate
    assert "0 of 1 cells reused" in plan.text() and "no estimate" in plan.text()
    written = json.loads((out / LOCK_FILE).read_text())["fmnist-tiny"]
    card = tiny_zoo.card
    assert written["config_hash"] == card["config_hash"]
    assert [(m["id"], m["weights_sha256"], m["accuracy"]) for m in written["models"]] == \
        [(m["id"], m["weights_sha256"], m["accuracy"]) for m in card["models"]]
    environment = written["build_environment"]
    assert {k: environment[k] for k in ("kernels", "cpu", "torch_build")} == \
        {k: card["environment"][k] for k in ("kernels", "cpu", "torch_build")}
    assert "built_at" not in environment  # a rebuild with the same weights leaves the lock as it is
    lock = read_locks(out / LOCK_FILE)["fmnist-tiny"]
    assert lock.hashed and lock.model(card["models"][0]["id"]).weights_sha256 == card["models"][0]["weights_sha256"]
    before = (out / LOCK_FILE).read_bytes()
    rerender(_grid((60,)), out, figures=False)  # render keeps the lock from the summaries alone
    assert (out / LOCK_FILE).read_bytes() == before


def test_a_zoos_json_without_hashes_still_renders_and_matches_nothing(tiny_zoo, first_run, tmp_path):
    out, _ = first_run
    data = json.loads((out / LOCK_FILE).read_text())
    for summary in data.values():
        summary.pop("config_hash"), summary.pop("build_environment")
        for model in summary["models"]:
            model.pop("weights_sha256")
    old = tmp_path / LOCK_FILE
    old.write_text(json.dumps(data))
    assert read_zoo_summaries(tmp_path)["fmnist-tiny"].frontier == tiny_zoo.frontier
    assert match_lines(tiny_zoo.card, read_locks(old), str(old)) == [
        f"matches the committed leaderboard: unknown ({old} records no weights hashes: it was written before the "
        "lock; a run of its grid writes them)"]


def test_zoo_build_says_whether_each_model_matches_the_lock(tiny_zoo, first_run, tmp_path, capsys):
    out, _ = first_run
    cache = str(tiny_zoo.directory.parent.parent)
    models = [m["id"] for m in tiny_zoo.card["models"]]
    assert main(["--cache", cache, "zoo", "build", "fmnist-tiny", "--lock", str(out / LOCK_FILE)]) == 0
    printed = capsys.readouterr().out
    for model in models:
        assert f"  {model}: matches the committed leaderboard: yes\n" in printed
    assert "matches the committed leaderboard: no" not in printed

    changed = json.loads((out / LOCK_FILE).read_text())
    changed["fmnist-tiny"]["models"][1]["weights_sha256"] = "0" * 64
    changed["fmnist-tiny"]["build_environment"]["cpu"] = "Some Other CPU"
    (tmp_path / LOCK_FILE).write_text(json.dumps(changed))
    assert main(["--cache", cache, "zoo", "build", "fmnist-tiny", "--lock", str(tmp_path / LOCK_FILE)]) == 0
    printed = capsys.readouterr().out
    assert f"  {models[0]}: matches the committed leaderboard: yes\n" in printed
    assert f"  {models[1]}: matches the committed leaderboard: no (weights " in printed
    assert f"the lock's {'0' * 12}" in printed
    here = tiny_zoo.card["environment"]["cpu"]
    assert f"why: the lock's zoo was built with CPU Some Other CPU; this one with CPU {here}; the committed " in printed

    assert main(["--cache", cache, "zoo", "build", "fmnist-tiny", "--lock", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.strip() == f"psml-bench: error: lock {tmp_path / 'missing.json'} does not exist"


def test_the_preflight_counts_reused_cells_and_require_cached_refuses(tiny_zoo, cache_dir, first_run):
    out, _ = first_run
    stored = {path.name: path.read_bytes() for path in (out / "cells").glob("*.json")}
    wall_s = json.loads(next(iter(stored.values())))["wall_s"]
    with pytest.raises(RecomputeRefused) as refused:
        run_grid(_grid((60, 80)), out, cache_dir=cache_dir, progress=False, executor=make_executor("inline"),
                 require_cached=True)
    assert str(refused.value) == (f"--require-cached: 1 of 2 cells of grid lock-test are not in {out / 'cells'}; "
                                  "no cell was computed")
    assert {path.name: path.read_bytes() for path in (out / "cells").glob("*.json")} == stored  # nothing computed
    told = []
    summary = run_grid(_grid((60, 80)), out, cache_dir=cache_dir, progress=False, executor=make_executor("inline"),
                       on_preflight=told.append)
    plan = told[0]
    assert (plan.reused, plan.to_compute, summary.cached, summary.computed) == (1, 1, 1, 1)
    assert plan.estimate_s == pytest.approx(wall_s) and plan.differences == ()
    assert plan.text().startswith(f"grid lock-test: 1 of 2 cells reused from {out / 'cells'}, 1 to compute. ")
    assert "(an estimate: " in plan.text()
    again = []
    run_grid(_grid((60, 80)), out, cache_dir=cache_dir, progress=False, executor=make_executor("inline"),
             on_preflight=again.append, require_cached=True)  # everything stored: it goes on
    assert again[0].text() == f"grid lock-test: all 2 cells reused from {out / 'cells'}; none to compute."


def test_the_preflight_says_why_a_zoo_differs_from_the_lock(tiny_zoo, first_run, tmp_path):
    from psml_bench.bench.preflight import preflight

    out, _ = first_run
    (tmp_path / "cells").mkdir()
    for path in (out / "cells").glob("*.json"):
        (tmp_path / "cells" / path.name).write_bytes(path.read_bytes())
    lock = json.loads((out / LOCK_FILE).read_text())
    lock["fmnist-tiny"]["models"][0]["weights_sha256"] = "f" * 64
    lock["fmnist-tiny"]["build_environment"]["training_capability"] = "AVX512"
    (tmp_path / LOCK_FILE).write_text(json.dumps(lock))
    plan = preflight("lock-test", tmp_path, {"fmnist-tiny": tiny_zoo.card}, 0, {"fmnist-tiny": 4}, jobs=2)
    model = tiny_zoo.card["models"][0]["id"]
    assert plan.differences == (
        f"zoo fmnist-tiny differs from the lock in {tmp_path / LOCK_FILE}: 1 of {len(tiny_zoo.card['models'])} models "
        f"have other weights ({model}): the lock's zoo was built with training kernel capability AVX512; this one with "
        f"training kernel capability {tiny_zoo.card['environment']['training_capability']}",)
    assert "Zoo fmnist-tiny differs from the lock" in plan.text() and "2 at a time" in plan.text()
    assert plan.refusal().startswith("--require-cached: 4 of 4 cells of grid lock-test are not in ")
    for model in lock["fmnist-tiny"]["models"]:
        model.pop("weights_sha256")
    (tmp_path / LOCK_FILE).write_text(json.dumps(lock))
    plan = preflight("lock-test", tmp_path, {"fmnist-tiny": tiny_zoo.card}, 0, {"fmnist-tiny": 4}, jobs=2)
    assert plan.differences == (f"the lock in {tmp_path / LOCK_FILE} records no weights hashes for zoo fmnist-tiny "
                                "(it was written before the lock), so whether its weights differ cannot be told",)
