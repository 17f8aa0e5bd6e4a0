"""The evaluation inputs kept out of the attacker's queries: the server counts queries that repeat a scored input."""

from __future__ import annotations

import base64
import json

import numpy as np
import torch

from psml_bench import Spec
from psml_bench.bench.grid import load_grid
from psml_bench.contract.registries import make_defense
from psml_bench.plugins.folders import SUBMISSIONS_ENV
from psml_bench.runner import make_executor, run_grid
from psml_bench.serving.eval_guard import NEAR_RMS, EvalInputGuard
from psml_bench.serving.frontend import Frontend


def test_exact_and_nearly_equal_scored_inputs_count_and_distinct_ones_do_not(tiny_zoo):
    test_x, pool = tiny_zoo.splits["test_x"], tiny_zoo.splits["attacker_x"]
    guard = EvalInputGuard(test_x, pool)
    generator = torch.Generator().manual_seed(0)
    noisy = (test_x[:4] + 0.5 * NEAR_RMS * torch.randn(4, *test_x.shape[1:], generator=generator)).clamp(0, 1)
    far = (test_x[4:6] + 3 * NEAR_RMS * torch.randn(2, *test_x.shape[1:], generator=generator)).clamp(0, 1)
    assert guard.observe(test_x[10:13]) == 3
    assert guard.observe(noisy) == 4
    assert guard.observe(far) == 0
    assert guard.observe(pool[:50]) == 0
    assert guard.count == 7


def test_an_input_of_the_attackers_own_pool_is_not_counted(tiny_zoo):
    test_x = tiny_zoo.splits["test_x"]
    guard = EvalInputGuard(test_x, allowed=test_x[:3])  # as if the dataset held these in both splits
    assert guard.observe(test_x[:5]) == 2


def test_the_server_counts_every_call_of_its_client(tiny_zoo):
    server = Frontend(tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0))
    server.eval_guard = EvalInputGuard(tiny_zoo.splits["test_x"], tiny_zoo.splits["attacker_x"])
    spec = Spec(server.spec_range.accuracy[0], server.spec_range.latency_ms[1])
    server.query(tiny_zoo.splits["test_x"][:6], spec)
    server.query(tiny_zoo.splits["attacker_x"][:6], spec)
    assert server.eval_guard.count == 6


REBUILT_TEST = '''
import base64

import numpy as np
import torch

from psml_bench import SURROGATE_DEFAULTS, Attack, Spec, SurrogateConfig, extract

SCORED = np.frombuffer(base64.b64decode("{data}"), dtype=np.uint8).reshape({shape})


class Rebuilt(Attack):
    defaults = dict(SURROGATE_DEFAULTS)

    def run(self, target, knowledge, budget, rng):
        spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
        target.query(torch.from_numpy(SCORED.astype(np.float32) / 255), spec)
        return extract(target, knowledge, spec, budget - len(SCORED), rng, SurrogateConfig.from_params(self.params))
'''


def test_an_attack_that_queries_the_test_split_is_flagged(tiny_zoo, cache_dir, tmp_path, monkeypatch):
    scored = (tiny_zoo.splits["test_x"][:12] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(scored.astype(np.float32) / 255, tiny_zoo.splits["test_x"][:12].numpy())
    folder = tmp_path / "subs" / "rebuilt"
    folder.mkdir(parents=True)
    (folder / "rebuilt.py").write_text(REBUILT_TEST.format(data=base64.b64encode(scored.tobytes()).decode(),
                                                           shape=tuple(scored.shape)))
    manifest = {"name": "rebuilt", "kind": "attack", "entry": "rebuilt:Rebuilt", "version": "1", "authors": ["M"],
                "description": "Queries inputs of the test split it carries.", "license": "MIT",
                "parameters": {"surrogate": {"type": "string", "default": "test_resnet"},
                               "epochs": {"type": "integer", "default": 10},
                               "min_steps": {"type": "integer", "default": 200},
                               "labels": {"type": "string", "default": "soft"},
                               "strategy": {"type": "string", "default": "random"}},
                "grids": ["eval-guard"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv(SUBMISSIONS_ENV, str(tmp_path / "subs"))
    grid_path = tmp_path / "grid.toml"
    grid_path.write_text('name = "eval-guard"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [60]\n'
                         'seeds = [0]\nbenign_queries = 60\n[[attacks]]\nname = "naive"\n'
                         'params = { min_steps = 10, epochs = 1 }\n[[defenses]]\nname = "none"\n')
    grid = load_grid(grid_path)
    summary = run_grid(grid, tmp_path / "lb", cache_dir=cache_dir, executor=make_executor("inline"), progress=False)
    rows = {row.attack: row for row in summary.rows}
    flagged = next(row for name, row in rows.items() if name.startswith("rebuilt"))
    assert flagged.status == "ok", flagged.error
    assert flagged.eval_queries == 12
    assert "queried 12 inputs the cell is scored on" in flagged.flags
    honest = rows["naive(epochs=1,min_steps=10)"]
    assert honest.eval_queries == 0 and "scored on" not in honest.flags
