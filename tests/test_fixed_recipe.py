"""The fixed-recipe track is verified: only weights the worker trained itself carry a recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from psml_bench import Knowledge, SurrogateConfig
from psml_bench.bench.grid import load_grid
from psml_bench.isolation.attack_process import PluginLocator, run_attack
from psml_bench.report.ranking import FIXED, OWN, describe_grid, group_track, recipe_text, track
from psml_bench.contract.registries import ATTACKS, DEFENSES
from psml_bench.serving.frontend import Frontend

CLAIMS = '''
import torch

from psml_bench import Attack, Spec, Surrogate, SurrogateConfig, train_surrogate

CONFIG = SurrogateConfig(arch="test_resnet", epochs=1, min_steps=5)


def _trained(target, knowledge, budget, rng):
    inputs = knowledge.pool[:budget]
    answers = target.query(inputs, Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1]))
    return train_surrogate(inputs, answers, knowledge, CONFIG, rng)


class Honest(Attack):
    def run(self, target, knowledge, budget, rng):
        return _trained(target, knowledge, budget, rng)


class Untrained(Attack):
    """Trains through the worker, then returns a fresh surrogate carrying that training's recipe and hash."""

    def run(self, target, knowledge, budget, rng):
        trained = _trained(target, knowledge, budget, rng)
        fake = Surrogate(CONFIG.arch, knowledge.input_shape[0], knowledge.num_classes, trained.mean.flatten(),
                         trained.std.flatten())
        from psml_bench.extraction.surrogate import weights_digest
        fake.recipe, fake.digest = trained.recipe, weights_digest(fake)
        return fake.eval()


class Tampered(Attack):
    """Changes one weight of the worker's training and forges the hash."""

    def run(self, target, knowledge, budget, rng):
        trained = _trained(target, knowledge, budget, rng)
        with torch.no_grad():
            next(trained.parameters()).add_(0.01)
        from psml_bench.extraction.surrogate import weights_digest
        trained.digest = weights_digest(trained)
        return trained
'''


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    folder = tmp_path_factory.mktemp("claims")
    (folder / "recipe_claims.py").write_text(CLAIMS)
    return folder


@pytest.mark.parametrize(("attack", "recipe"), [
    ("Honest", SurrogateConfig(arch="test_resnet", epochs=1, min_steps=5).recipe()),
    ("Untrained", ""), ("Tampered", "")])
def test_only_the_workers_own_weights_carry_a_recipe(tiny_zoo, claims, monkeypatch, attack, recipe):
    monkeypatch.syspath_prepend(str(claims))
    server = Frontend(tiny_zoo, defense=DEFENSES.get("none")(), rng=np.random.default_rng([0, 2]), budget=20)
    knowledge = Knowledge(input_shape=tiny_zoo.input_shape, num_classes=tiny_zoo.num_classes,
                          spec_range=server.spec_range, pool=tiny_zoo.splits["attacker_x"], role="rank:1")
    locator = PluginLocator(f"recipe_claims:{attack}")
    ATTACKS.get(locator.name)
    surrogate = run_attack(server, locator, knowledge, 20, np.random.default_rng(0), timeout_s=120)
    assert surrogate.recipe == recipe


def test_a_row_whose_weights_the_worker_did_not_train_is_own_training():
    blocks, _ = describe_grid(load_grid("tiny"))
    block = blocks[0]
    psml = next(label for label in block.attacks if label.startswith("psml"))
    assert block.declared[psml]
    fixed = recipe_text(block.recipe)
    assert track({"attack": psml, "surrogate_recipe": fixed}, block) == FIXED
    assert track({"attack": psml, "surrogate_recipe": ""}, block) == OWN  # recorded: not the worker's weights
    assert track({"attack": psml}, block) == FIXED  # a row from before the record: judged by declaration
    cells = pd.DataFrame([{"attack": psml, "status": "ok", "surrogate_recipe": fixed},
                          {"attack": psml, "status": "ok", "surrogate_recipe": ""},
                          {"attack": psml, "status": "failed", "surrogate_recipe": ""}])
    assert group_track(cells, block) == OWN  # one seed's surrogate unverified: the attack is not ranked
    assert group_track(cells.iloc[[0, 2]], block) == FIXED
