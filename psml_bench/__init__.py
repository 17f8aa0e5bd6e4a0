"""psml-bench: a benchmark for model extraction against model-zoo serving systems.

The public surface is listed in ``__all__``; everything else lives in private modules and may
change. Plugins (``attacks/``, ``defenses/``, ``strategies/``, ``submissions/``) import only from here.
"""

from __future__ import annotations

from ._cell import PROTOCOL_VERSION
from ._errors import (BudgetExhausted, ConfigError, DataError, InvalidQueryError, PsmlError,
                      UnknownPluginError)
from ._extraction import ActiveLearning, QuerySession, Strategy, extract, query_batched, sample_pool
from ._http_target import HttpTarget
from ._parameters import Allowed
from ._plugins import Attack, Defense
from ._registries import (ATTACKS, DEFENSES, POLICIES, STRATEGIES, register_attack, register_defense,
                          register_strategy)
from ._registry import Registry
from ._serving import Knowledge, Policy, Requests, Spec, SpecRange, Target
from ._surrogate import SURROGATE_DEFAULTS, Surrogate, SurrogateConfig, train_surrogate
from ._version import __version__

__all__ = [
    "ATTACKS", "ActiveLearning", "Allowed", "Attack", "BudgetExhausted", "ConfigError", "DEFENSES", "DataError", "Defense",
    "HttpTarget", "InvalidQueryError", "Knowledge", "POLICIES", "PROTOCOL_VERSION", "Policy", "PsmlError", "QuerySession",
    "Requests",
    "Registry", "STRATEGIES", "SURROGATE_DEFAULTS", "Spec", "SpecRange", "Strategy", "Surrogate", "SurrogateConfig",
    "Target", "UnknownPluginError", "__version__", "extract", "query_batched", "register_attack",
    "register_defense", "register_strategy", "sample_pool", "train_surrogate",
]
