"""psml-bench: a benchmark for model extraction against model-zoo serving systems.

The public surface is listed in ``__all__``; everything else lives in private modules and may
change. Plugins (``attacks/``, ``defenses/``, ``strategies/``, ``submissions/``) import only from here.
"""

from __future__ import annotations

from ._version import PROTOCOL_VERSION
from .contract.errors import BudgetExhausted, ConfigError, DataError, InvalidQueryError, PsmlError, UnknownPluginError
from .extraction.extract import ActiveLearning, extract
from .contract.session import QuerySession, query_batched, sample_pool
from .contract.strategy import Strategy
from .serving.http_client import HttpTarget
from .contract.parameters import Allowed
from .contract.plugins import Attack, Defense
from .contract.registries import (ATTACKS, DEFENSES, POLICIES, STRATEGIES, register_attack, register_defense,
                                   register_policy, register_strategy)
from .contract.registry import Registry
from .contract.target import Knowledge, Target
from .contract.policy import Policy
from .contract.requests import Requests
from .contract.spec import Spec, SpecRange
from .contract.surrogate_config import SURROGATE_DEFAULTS, SurrogateConfig
from .extraction.surrogate import Surrogate, train_surrogate
from ._version import __version__

__all__ = [
    "ATTACKS", "ActiveLearning", "Allowed", "Attack", "BudgetExhausted", "ConfigError", "DEFENSES", "DataError",
    "Defense", "HttpTarget", "InvalidQueryError", "Knowledge", "POLICIES", "PROTOCOL_VERSION", "Policy", "PsmlError",
    "QuerySession", "Requests",
    "Registry", "STRATEGIES", "SURROGATE_DEFAULTS", "Spec", "SpecRange", "Strategy", "Surrogate", "SurrogateConfig",
    "Target", "UnknownPluginError", "__version__", "extract", "query_batched", "register_attack",
    "register_defense", "register_policy", "register_strategy", "sample_pool", "train_surrogate",
]
