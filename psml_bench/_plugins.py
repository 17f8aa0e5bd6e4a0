"""Base classes of attack and defense plugins, and their registries."""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ._errors import ConfigError, PsmlError
from ._registry import Registry

if TYPE_CHECKING:
    from ._serving import Knowledge, SpecRange, Target


@dataclass(frozen=True)
class Allowed:
    """The values a parameter accepts beyond its type, e.g. ``Allowed(minimum=0, maximum=1)``."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        # written so that NaN fails every comparison
        if self.integer and not float(value).is_integer():
            return False
        if self.minimum is not None and not (value > self.minimum if self.exclusive_minimum else value >= self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def describe(self) -> str:
        if self.choices:
            return " or ".join(repr(c) for c in self.choices)
        prefix = "an integer " if self.integer else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{prefix}in [{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"{prefix}{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        return f"{prefix}<= {self.maximum:g}" if self.maximum is not None else prefix.strip()


class Plugin:
    """Common parts of attacks and defenses: a name, a version and typed parameters.

    Subclasses declare ``defaults`` (every parameter with its default value) and may declare
    ``allowed`` (parameter -> :class:`Allowed`; declarations accumulate along the class
    hierarchy). Unknown parameters, values of the wrong type and values outside what is
    allowed are configuration errors, raised when the plugin is built.
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    defaults: ClassVar[dict[str, Any]] = {}
    allowed: ClassVar[dict[str, Allowed]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(f"{self.kind} '{self.name}' has no parameter(s) {', '.join(unknown)}; "
                              f"parameters: {allowed}")
        for key, value in params.items():
            default = self.defaults[key]
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if numeric \
                else isinstance(value, type(default))
            if not ok:
                raise ConfigError(f"{self.kind} '{self.name}' parameter '{key}' must be "
                                  f"{type(default).__name__}, got {value!r}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        for cls in reversed(type(self).__mro__):
            for key, rule in vars(cls).get("allowed", {}).items():
                if key in self.params and not rule.accepts(self.params[key]):
                    raise ConfigError(f"{self.kind} '{self.name}' parameter '{key}' must be {rule.describe()}, "
                                      f"got {self.params[key]!r}")

    @property
    def label(self) -> str:
        """Name with the parameters that differ from the defaults, e.g. ``spec-noise(scale=0.05)``.

        A defense's strength parameter is always shown, so a sweep reads as one.
        """
        strength = getattr(self, "strength", None)
        return self._label({k: v for k, v in self.params.items() if v != self.defaults[k] or k == strength})

    @property
    def family(self) -> str:
        """The label without the strength parameter: what a strength sweep has in common."""
        strength = getattr(self, "strength", None)
        return self._label({k: v for k, v in self.params.items() if v != self.defaults[k] and k != strength})

    def _label(self, shown: dict[str, Any]) -> str:
        if not shown:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in sorted(shown.items()))})"

    @classmethod
    def source_hash(cls) -> str:
        """sha256 of the source file that defines the plugin (part of every cell's cache key)."""
        try:
            source = inspect.getsource(inspect.getmodule(cls))
        except (OSError, TypeError):
            source = cls.__qualname__
        return hashlib.sha256(source.encode()).hexdigest()


class Attack(Plugin, ABC):
    """An extraction attack. Sees only the :class:`Target` and :class:`Knowledge`.

    ``access`` says what the harness connects ``target`` to: ``"service"`` (the zoo behind
    the serving policy and the defense) or ``"victim"`` (a service that hosts the victim
    alone: the single-model setting, an upper bound).
    """

    kind: ClassVar[str] = "attack"
    access: ClassVar[str] = "service"
    allowed: ClassVar[dict[str, Allowed]] = {"labels": Allowed(choices=("soft", "hard"))}

    def __init__(self, **params: Any):
        super().__init__(**params)
        if "strategy" in self.params:  # a grid with a misspelt strategy fails when it loads, not per cell
            from ._extraction import STRATEGIES  # imports this module: not at the top

            try:
                STRATEGIES.get(self.params["strategy"])
            except PsmlError as exc:
                raise ConfigError(f"attack '{self.name}' parameter 'strategy': {exc}") from None

    @abstractmethod
    def run(self, target: Target, knowledge: Knowledge, budget: int,
            rng: np.random.Generator) -> torch.nn.Module:
        """Spend at most ``budget`` queries on ``target``; return a surrogate (inputs -> logits)."""


class Defense(Plugin):
    """A defense: hooks the serving system calls around routing.

    ``perturb_spec`` runs before the policy on every query's spec, ``reroute`` after it on the
    policy's choice, ``postprocess`` on the probabilities the served model returns. ``strength`` names the parameter that sets how
    strong the defense is (the one a sweep varies), ``deterministic`` whether identical
    calls give identical answers.
    """

    kind: ClassVar[str] = "defense"
    strength: ClassVar[str | None] = None
    deterministic: ClassVar[bool] = True

    def perturb_spec(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray, spec_range: SpecRange,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Specs the policy sees, one per query. The server clips them to the advertised range."""
        return min_accuracy, max_latency_ms

    def reroute(self, served: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The model that answers each query, after the policy chose ``served``.

        Args:
            served: the policy's choice, a menu index per query.
            candidates: ``(queries, models)`` booleans, the models meeting the spec the policy saw
                (all ``False`` in a row whose spec nothing meets).
        """
        return served

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Answers returned to the client, one row per query (a ``(queries, classes)`` tensor)."""
        return probabilities


ATTACKS: Registry[type[Attack]] = Registry("attack", Attack, builtin_package="attacks",
                                           entry_point_group="psml_bench.attacks")
DEFENSES: Registry[type[Defense]] = Registry("defense", Defense, builtin_package="defenses",
                                             entry_point_group="psml_bench.defenses")


def register_attack(name: str):
    """Class decorator registering a built-in or submitted attack."""
    return ATTACKS.register(name)


def register_defense(name: str):
    """Class decorator registering a built-in or submitted defense."""
    return DEFENSES.register(name)


def make_attack(name: str, params: dict[str, Any] | None = None) -> Attack:
    """Instantiate a registered attack with parameters."""
    return ATTACKS.get(name)(**(params or {}))


def make_defense(name: str, params: dict[str, Any] | None = None) -> Defense:
    """Instantiate a registered defense with parameters."""
    return DEFENSES.get(name)(**(params or {}))
