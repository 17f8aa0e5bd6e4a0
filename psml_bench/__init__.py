"""psml-bench: a benchmark for model extraction against model-zoo serving systems.

The public surface is listed in ``__all__``; everything else lives in private modules and may
change. Plugins (``attacks/``, ``defenses/``, ``strategies/``, ``submissions/``) import only from here.
"""

from __future__ import annotations

from ._errors import (BudgetExhausted, ConfigError, DataError, InvalidQueryError, PsmlError,
                      UnknownPluginError)
from ._extraction import (STRATEGIES, SURROGATE_DEFAULTS, ActiveLearning, QuerySession, Strategy, Surrogate,
                          SurrogateConfig, extract, query_batched, register_strategy, sample_pool, train_surrogate)
from ._plugins import ATTACKS, DEFENSES, Allowed, Attack, Defense, register_attack, register_defense
from ._registry import Registry
from ._serving import POLICIES, Knowledge, Policy, Spec, SpecRange, Target

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

__all__ = [
    "ATTACKS", "ActiveLearning", "Allowed", "Attack", "BudgetExhausted", "ConfigError", "DEFENSES", "DataError", "Defense",
    "InvalidQueryError", "Knowledge", "POLICIES", "PROTOCOL_VERSION", "Policy", "PsmlError", "QuerySession",
    "Registry", "STRATEGIES", "SURROGATE_DEFAULTS", "Spec", "SpecRange", "Strategy", "Surrogate", "SurrogateConfig",
    "Target", "UnknownPluginError", "__version__", "extract", "query_batched", "register_attack",
    "register_defense", "register_strategy", "sample_pool", "train_surrogate",
]
