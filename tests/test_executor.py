"""Executors: hostile cells fail alone, a killed run resumes, Ray gives the local results."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psml_bench.bench.row import VOLATILE_FIELDS
from psml_bench.bench.grid import load_grid
from psml_bench.runner import make_executor, run_grid

HOSTILE = '''
import os
import time

import numpy as np

from psml_bench import Attack


class Hangs(Attack):
    """Never returns."""

    def run(self, target, knowledge, budget, rng):
        while True:
            time.sleep(1)


class Crashes(Attack):
    """Kills its own process."""

    def run(self, target, knowledge, budget, rng):
        os._exit(3)


class Hogs(Attack):
    """Allocates far more memory than a cell may use."""

    def run(self, target, knowledge, budget, rng):
        hog = [np.ones(2**27) for _ in range(64)]  # 64 GiB
        return hog
'''


def grid_file(tmp_path: Path, attacks: list[str], budgets=(50,), seeds=(0,)) -> Path:
    entries = "".join(f'[[attacks]]\nname = "{a}"\nparams = {{ min_steps = 20, epochs = 1 }}\n'
                      if ":" not in a else f'[[attacks]]\nname = "{a}"\n' for a in attacks)
    path = tmp_path / "grid.toml"
    path.write_text(f'name = "g"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = {list(budgets)}\n'
                    f'seeds = {list(seeds)}\nbenign_queries = 50\n{entries}[[defenses]]\nname = "none"\n')
    return path


def test_hung_crashed_and_memory_hungry_cells_fail_alone(tiny_zoo, cache_dir, tmp_path, monkeypatch):
    (tmp_path / "hostile_cells.py").write_text(HOSTILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = load_grid(grid_file(tmp_path, ["hostile_cells:Hangs", "hostile_cells:Crashes", "hostile_cells:Hogs",
                                          "naive"]))
    executor = make_executor("local", jobs=2, timeout_s=90, memory_mb=2048)
    summary = run_grid(grid, tmp_path / "lb", cache_dir=cache_dir, executor=executor, progress=False)
    by_attack = {row.attack: row for row in summary.rows}
    assert by_attack["hostile_cells:Hangs"].error == "timed out after 90s"
    assert "ended without a result" in by_attack["hostile_cells:Crashes"].error
    assert "memory" in by_attack["hostile_cells:Hogs"].error.lower()
    assert by_attack["naive(epochs=1,min_steps=20)"].status == "ok"
    assert summary.failed == 3 and len(list((tmp_path / "lb" / "cells").glob("*.json"))) == 4


def _cell_files(directory: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (directory / "cells").glob("*.json")}


def test_killed_runs_resume_without_recomputing_or_corrupting(tiny_zoo, cache_dir, tmp_path):
    grid = grid_file(tmp_path, ["naive", "oracle"], budgets=(50, 60), seeds=(0, 1))
    out = tmp_path / "lb"
    env = {**os.environ, "PSML_BENCH_CACHE": str(cache_dir)}
    command = [sys.executable, "-m", "psml_bench.cli", "-q", "run", "--grid", str(grid), "--out", str(out),
               "--jobs", "2"]
    rng = random.Random(0)
    seen: dict[str, float] = {}
    for _ in range(3):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        time.sleep(rng.uniform(4.0, 14.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        files = _cell_files(out)
        for name, mtime in seen.items():
            assert files[name] == mtime, f"finished cell {name} was recomputed"
        for path in (out / "cells").glob("*.json"):
            json.loads(path.read_text())  # never half-written
        seen = files
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    files = _cell_files(out)
    assert len(files) == 8 and all(files[name] == mtime for name, mtime in seen.items())
    assert f"({len(seen)} cached, {8 - len(seen)} computed, 0 failed)" in result.stdout


def test_same_seeds_give_a_byte_identical_results_csv(tiny_zoo, cache_dir, tmp_path):
    grid = load_grid(grid_file(tmp_path, ["psml", "naive"], budgets=(60,), seeds=(0, 1)))
    first = run_grid(grid, tmp_path / "a", cache_dir=cache_dir, executor=make_executor("local", jobs=2),
                     progress=False)
    second = run_grid(grid, tmp_path / "b", cache_dir=cache_dir, executor=make_executor("inline"), progress=False)
    assert first.computed == second.computed == 4
    assert (tmp_path / "a" / "results.csv").read_bytes() == (tmp_path / "b" / "results.csv").read_bytes()


def test_ray_executor_matches_the_local_executor(tiny_zoo, cache_dir, tmp_path):
    ray = pytest.importorskip("ray")
    grid = load_grid(grid_file(tmp_path, ["psml", "oracle"], budgets=(60,), seeds=(0,)))
    local = run_grid(grid, tmp_path / "local", cache_dir=cache_dir, executor=make_executor("local", jobs=2),
                     progress=False)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = run_grid(grid, tmp_path / "ray", cache_dir=cache_dir, executor=make_executor("ray"),
                          progress=False)
    finally:
        ray.shutdown()
    # as the cell files store them (NaN, e.g. queries_to_detection of an undetected attacker, equal to itself)
    strip = lambda rows: json.dumps([{k: v for k, v in r.as_dict().items() if k not in VOLATILE_FIELDS}  # noqa: E731
                                     for r in rows], sort_keys=True)
    assert remote.failed == 0 and strip(remote.rows) == strip(local.rows)
