"""Every built-in attack and defense passes the same conformance checks as a submission (`psml-bench validate`)."""

from __future__ import annotations

import pytest

from psml_bench.contract.registries import ATTACKS, DEFENSES
from psml_bench.bench.conformance import attack_conformance, defense_conformance, victim_roles

BUILTIN_ATTACKS = [e.name for e in ATTACKS if e.source == "built-in"]
BUILTIN_DEFENSES = [e.name for e in DEFENSES if e.source == "built-in"]


def test_every_builtin_is_covered():
    assert {"oracle", "naive", "psml", "psml-adaptive", "psml-timing", "psml-stealth"} <= set(BUILTIN_ATTACKS)
    assert {"none", "spec-noise", "spec-quantize", "random-routing", "label-only", "top-k", "reverse-sigmoid",
            "prob-noise", "prada", "adaptive-misinformation", "prediction-poisoning"} <= set(BUILTIN_DEFENSES)


@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_builtin_attack_conforms(name, tiny_zoo):
    """On the middle victim role (rank:2 of 3), where an attack must fingerprint to find its victim."""
    checks = attack_conformance(tiny_zoo, name, ["rank:2"])
    assert len(checks) == 4 and all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_builtin_attack_conforms_on_every_victim_role(name, tiny_zoo):
    assert victim_roles(tiny_zoo) == ["rank:1", "rank:2", "rank:3"]
    checks = attack_conformance(tiny_zoo, name)
    assert len(checks) == 12 and all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize("name", BUILTIN_DEFENSES)
def test_builtin_defense_conforms(name, tiny_zoo):
    checks = defense_conformance(tiny_zoo, name, [])
    assert len(checks) == 3 and all(c.ok for c in checks), [c for c in checks if not c.ok]
