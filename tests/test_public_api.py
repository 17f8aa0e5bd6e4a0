"""The public surface is stated once and plugins use nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import psml_bench

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "ATTACKS", "ActiveLearning", "Allowed", "Attack", "BudgetExhausted", "ConfigError", "DEFENSES", "DataError",
    "Defense", "HttpTarget", "InvalidQueryError", "Knowledge", "POLICIES", "PROTOCOL_VERSION", "Policy", "PsmlError",
    "QuerySession", "Registry", "Requests", "STRATEGIES", "SURROGATE_DEFAULTS", "Spec", "SpecRange", "Strategy",
    "Surrogate", "SurrogateConfig",
    "Target", "UnknownPluginError", "__version__", "extract", "query_batched", "register_attack",
    "register_defense", "register_policy", "register_strategy", "sample_pool", "train_surrogate",
}


def test_public_surface_is_pinned():
    assert set(psml_bench.__all__) == EXPECTED
    for name in psml_bench.__all__:
        assert hasattr(psml_bench, name), name


def test_protocol_version_matches_runner():
    from psml_bench._version import PROTOCOL_VERSION

    assert psml_bench.PROTOCOL_VERSION == PROTOCOL_VERSION


def test_builtin_plugins_import_only_the_public_api():
    for folder in ("attacks", "defenses", "strategies"):
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text()
            assert not re.search(r"psml_bench\._|from psml_bench\.\w+ import|import psml_bench\.\w", text), path


def test_target_is_narrow():
    public = {name for name in dir(psml_bench.Target) if not name.startswith("_")}
    assert public == {"query", "remaining_budget", "last_refused", "last_latency_ms"}
