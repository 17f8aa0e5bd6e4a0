"""The plugin author's pages run: the example of docs/writing-an-attack.md and docs/writing-a-defense.md."""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import torch

from psml_bench import Knowledge, Spec, Surrogate
from psml_bench.bench.sanity import are_probability_vectors
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for

DOCS = Path(__file__).resolve().parents[1] / "docs"


def example(page: str, section: str = "## The example") -> types.ModuleType:
    """The page's example (the first Python block after ``section``), run as a module."""
    text = (DOCS / page).read_text().split(section, 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType(page.replace("-", "_").removesuffix(".md"))
    exec(compile(code, str(DOCS / page), "exec"), module.__dict__)  # noqa: S102 - our own docs
    assert "psml_bench._" not in code and "psml_bench." not in code.replace("from psml_bench import", "")
    return module


def test_the_attack_example_steals_within_its_budget(tiny_zoo):
    attack = example("writing-an-attack.md").FloorAttack(floor=0.5, min_steps=10, epochs=1)
    server = Frontend(tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0), budget=150)
    knowledge = Knowledge(input_shape=tiny_zoo.input_shape, num_classes=tiny_zoo.num_classes,
                          spec_range=server.spec_range, pool=tiny_zoo.splits["attacker_x"][:400], role="rank:1")
    surrogate = attack.run(target_for(server), knowledge, 150, np.random.default_rng(1))
    assert isinstance(surrogate, Surrogate) and surrogate.recipe.startswith("test_resnet")
    assert server.used == 150
    (a_lo, a_hi), (_, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
    assert server.requested(np.array([a_lo + 0.5 * (a_hi - a_lo)]), np.array([l_hi]))[0] == \
        server.log.requested_ids()[0]


def test_the_defense_example_rounds_and_blocks_a_client_past_its_limit(tiny_zoo):
    defense = example("writing-a-defense.md").RoundAndLimit(decimals=1, limit=100)
    server = Frontend(tiny_zoo, defense=defense, rng=np.random.default_rng(0))
    inputs = tiny_zoo.splits["attacker_x"][:64]
    spec = Spec(*(bound[1] for bound in (server.spec_range.accuracy, server.spec_range.latency_ms)))
    first, raw = server.query(inputs, spec, with_raw=True)
    assert are_probability_vectors(first, tiny_zoo.num_classes) and not server.last_refused.any()
    rounded = torch.round(raw, decimals=1)
    assert torch.allclose(first, rounded / rounded.sum(dim=1, keepdim=True)) and not torch.equal(first, raw)
    second = server.query(inputs, spec)  # 128 requests in all: past the limit
    assert server.last_refused.all() and torch.isnan(second).all() and defense.blocked == {0}
    assert type(defense).deterministic is False and type(defense).strength == "decimals"


def test_the_client_work_example_prices_each_answer_and_the_service_waits_for_it(tiny_zoo):
    from psml_bench.serving.service import ServiceConfig, SimulatedService
    defense = example("writing-a-defense.md", "## Client work").PayPerQuery()
    service = SimulatedService(tiny_zoo, defense=defense, config=ServiceConfig(attacker_rate=1000.0), seed=0, budget=50,
                               benign_queries=20)
    spec = Spec(*(bound[1] for bound in (service.spec_range.accuracy, service.spec_range.latency_ms)))
    service.query(tiny_zoo.splits["attacker_x"][:10], spec)
    assert service.attacker_work_ms == sum(range(1, 11)) and service.clock >= 55.0
