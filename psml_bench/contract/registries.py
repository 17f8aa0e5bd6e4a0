"""Every plugin registry of psml-bench, declared in one place.

Each registry names its base class as a ``module:Class`` target, imported on first use, so this
module sits below every module that defines a base class or registers a plugin, and nothing
imports upwards to reach a registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import Registry

if TYPE_CHECKING:
    from .strategy import Strategy
    from .plugins import Attack, Defense
    from .policy import Policy

ATTACKS: Registry[type[Attack]] = Registry("attack", "psml_bench.contract.plugins:Attack", builtin_package="attacks",
                             entry_point_group="psml_bench.attacks")
DEFENSES: Registry[type[Defense]] = Registry("defense", "psml_bench.contract.plugins:Defense",
                                             builtin_package="defenses", entry_point_group="psml_bench.defenses")
STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "psml_bench.contract.strategy:Strategy",
                                                builtin_package="strategies", entry_point_group="psml_bench.strategies")
# slo_routing imports policies, so importing it registers every built-in policy ("infaas" and "infaas-slo")
POLICIES: Registry[type[Policy]] = Registry("policy", "psml_bench.contract.policy:Policy",
                                            builtin_package="psml_bench.serving.slo_routing")


def register_attack(name: str):
    """Class decorator registering a built-in or submitted attack."""
    return ATTACKS.register(name)


def register_defense(name: str):
    """Class decorator registering a built-in or submitted defense."""
    return DEFENSES.register(name)


def register_strategy(name: str):
    """Class decorator registering a built-in or third-party extraction strategy."""
    return STRATEGIES.register(name)


def register_policy(name: str):
    """Class decorator registering a built-in or third-party routing policy (a :class:`~psml_bench.Policy`)."""
    return POLICIES.register(name)


def make_defense(name: str, params: dict[str, Any] | None = None) -> Defense:
    """Instantiate a registered defense with parameters."""
    return DEFENSES.get(name)(**(params or {}))
