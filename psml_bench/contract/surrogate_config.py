"""How an attacker trains its surrogate: the config and the rules on its parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .checks import TimmArchitecture, count, finite, surrogate_arch
from .errors import ConfigError
from .parameters import Allowed
from .registries import STRATEGIES


@dataclass(frozen=True)
class SurrogateConfig:
    """How the attacker trains its surrogate.

    Attributes:
        arch: timm architecture of the surrogate.
        epochs: passes over the queried set (at least ``min_steps`` optimiser steps in all).
        labels: ``"soft"`` (probability vectors) or ``"hard"`` (argmax class).
        strategy: the registered extraction :class:`Strategy` that chooses the queries.
    """

    arch: str = "test_resnet"
    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    labels: str = "soft"
    strategy: str = "random"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SurrogateConfig:
        """Take the surrogate fields (``surrogate`` = arch, ``epochs``, ``min_steps``, ``labels``, ``strategy``)
        from plugin params.

        Raises:
            ConfigError: ``labels`` is not soft or hard.
            UnknownPluginError: ``strategy`` is not registered (with "did you mean").
        """
        config = cls(arch=params.get("surrogate", cls.arch), epochs=int(params.get("epochs", cls.epochs)),
                     min_steps=int(params.get("min_steps", cls.min_steps)), labels=params.get("labels", cls.labels),
                     strategy=params.get("strategy", cls.strategy))
        check_surrogate_params({"labels": config.labels, "strategy": config.strategy})
        return config

    def __post_init__(self) -> None:
        surrogate_arch(self.arch)
        count("epochs", self.epochs)
        count("min_steps", self.min_steps)
        count("batch_size", self.batch_size, 1)
        finite("lr", self.lr, 0.0, exclusive=True)
        finite("weight_decay", self.weight_decay, 0.0)
        if self.labels not in ("soft", "hard"):
            raise ConfigError(f"parameter 'labels' must be 'soft' or 'hard', got {self.labels!r}")
        if not isinstance(self.strategy, str):
            raise ConfigError(f"strategy must be a registered strategy's name, got {self.strategy!r}")

    def steps(self, n: int) -> int:
        """Optimiser steps :func:`train_surrogate` takes on ``n`` examples."""
        return max(self.min_steps, self.epochs * math.ceil(n / self.batch_size))

    def recipe(self) -> str:
        """The training recipe as one string: architecture, epochs and least steps, and any optimiser setting
        that differs from the defaults (what the leaderboard compares with a block's recipe)."""
        default = SurrogateConfig()
        extra = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                 if f.name in ("batch_size", "lr", "weight_decay")
                 and getattr(self, f.name) != getattr(default, f.name)]
        return ", ".join([self.arch, f"epochs={self.epochs}", f"min_steps={self.min_steps}", *extra])

    def cheaper(self, fraction: float, n: int) -> SurrogateConfig:
        """This config for ``fraction`` of the steps it takes on ``n`` examples (a strategy's interim surrogate)."""
        return replace(self, epochs=0, min_steps=max(2, math.ceil(fraction * self.steps(n))))


SURROGATE_DEFAULTS: dict[str, Any] = {"surrogate": SurrogateConfig.arch, "epochs": SurrogateConfig.epochs,
                                      "min_steps": SurrogateConfig.min_steps, "labels": SurrogateConfig.labels,
                                      "strategy": SurrogateConfig.strategy}
"""The surrogate parameters every attack that trains a surrogate declares (``{**SURROGATE_DEFAULTS, ...}``)."""


SURROGATE_ALLOWED: dict[str, Allowed] = {"labels": Allowed(choices=("soft", "hard")),
                                         "strategy": Allowed(registry=STRATEGIES),
                                         "epochs": Allowed(minimum=0, integer=True),
                                         "min_steps": Allowed(minimum=0, integer=True),
                                         "surrogate": TimmArchitecture()}
"""The values the surrogate parameters accept; :class:`psml_bench.Attack` applies them to every attack."""


def check_surrogate_params(params: dict[str, Any]) -> None:
    """Check surrogate parameters against :data:`SURROGATE_ALLOWED`.

    Raises:
        ConfigError: a value outside what is allowed (``labels`` not soft or hard).
        UnknownPluginError: ``strategy`` is not registered (with "did you mean").
    """
    for key, rule in SURROGATE_ALLOWED.items():
        if key not in params:
            continue
        if rule.registry is not None:
            rule.check(params[key])
        elif not rule.accepts(params[key]):
            raise ConfigError(f"parameter '{key}' must be {rule.describe()}, got {params[key]!r}")
