"""Typed plugin parameters: the :class:`Plugin` base with its defaults, and the :class:`Allowed` rules."""

from __future__ import annotations

import difflib
import hashlib
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError, PsmlError
from .registry import Registry


@dataclass(frozen=True)
class Allowed:
    """The values a parameter accepts beyond its type, e.g. ``Allowed(minimum=0, maximum=1)``."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()
    registry: Registry | None = None

    def __post_init__(self) -> None:
        for bound in ("minimum", "maximum"):
            value = getattr(self, bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
                raise ConfigError(f"Allowed({bound}=...) must be a number, got {value!r}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ConfigError(f"Allowed(minimum={self.minimum!r}, maximum={self.maximum!r}): the minimum is above "
                              "the maximum, so no value is allowed")

    def check(self, value: Any) -> None:
        """Raise if ``value`` is not allowed (a registry's error says "did you mean")."""
        if self.registry is not None:
            self.registry.get(value)
        elif not self.accepts(value):
            raise ConfigError(f"must be {self.describe()}, got {value!r}")

    def accepts(self, value: Any) -> bool:
        if self.registry is not None:
            return value in self.registry.names()
        if self.choices:
            return value in self.choices
        # written so that NaN fails every comparison
        if self.integer and not float(value).is_integer():
            return False
        if self.minimum is not None and not (value > self.minimum if self.exclusive_minimum else value >= self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def describe(self) -> str:
        if self.registry is not None:
            return f"a registered {self.registry.kind}"
        if self.choices:
            return " or ".join(repr(c) for c in self.choices)
        prefix = "an integer " if self.integer else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{prefix}in {'(' if self.exclusive_minimum else '['}{self.minimum:g}, {self.maximum:g}]"
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
            close = [m for name in unknown for m in difflib.get_close_matches(name, self.defaults, n=1)]
            hint = f" did you mean {', '.join(repr(m) for m in close)}?" if close else ""
            raise ConfigError(f"{self.kind} '{self.name}' has no parameter(s) {', '.join(unknown)};{hint} "
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
                if key in self.params:
                    try:
                        rule.check(self.params[key])
                    except PsmlError as exc:
                        separator = ":" if rule.registry is not None else ""
                        raise ConfigError(f"{self.kind} '{self.name}' parameter '{key}'{separator} {exc}") from None

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
        """sha256 of the plugin's own source (part of every cell's cache key).

        That is the plugin's module and every module outside psml_bench defining a class of its MRO, so a plugin
        subclassing another plugin changes its key when its parent's file changes. A plugin in one
        module hashes exactly that module's source.
        """
        sources: list[str] = []
        for klass in cls.__mro__:
            module = inspect.getmodule(klass)
            if klass is not cls and (not issubclass(klass, Plugin) or module is None
                                     or module.__name__.split(".")[0] == "psml_bench"):
                continue
            try:
                source = inspect.getsource(module)
            except (OSError, TypeError):
                source = klass.__qualname__
            if source not in sources:
                sources.append(source)
        if len(sources) == 1:
            return hashlib.sha256(sources[0].encode()).hexdigest()
        return hashlib.sha256("".join(hashlib.sha256(s.encode()).hexdigest() for s in sources).encode()).hexdigest()


def declares_version(cls: type) -> bool:
    """Whether a plugin class (or a base class below :class:`Plugin`'s subclasses in psml_bench) sets ``version``."""
    return any("version" in vars(c) for c in cls.__mro__ if not c.__module__.startswith("psml_bench"))


def declaration_mismatches(cls: type, parameters: dict[str, Any], version: str) -> list[str]:
    """How a manifest's ``parameters`` (name -> default) and ``version`` disagree with the plugin class.

    Every parameter of the class's ``defaults`` must be declared with the same default, no other
    may be declared, and a class that sets its own ``version`` must set the manifest's.
    """
    defaults = dict(getattr(cls, "defaults", {}))
    problems = []
    missing = sorted(set(defaults) - set(parameters))
    phantom = sorted(set(parameters) - set(defaults))
    if missing:
        problems.append(f"field 'parameters': the class's parameter(s) {', '.join(missing)} are not declared "
                        f"(class defaults: {', '.join(f'{k}={defaults[k]!r}' for k in missing)})")
    if phantom:
        problems.append(f"field 'parameters': {', '.join(phantom)} declared but not in the class's defaults "
                        f"({', '.join(sorted(defaults)) or 'none'})")
    for name in sorted(set(defaults) & set(parameters)):
        if defaults[name] != parameters[name] or isinstance(defaults[name], bool) != isinstance(parameters[name], bool):
            problems.append(f"field 'parameters.{name}.default': the class's default is {defaults[name]!r}, "
                            f"the manifest's {parameters[name]!r}; declare one value")
    if declares_version(cls) and str(cls.version) != version:
        problems.append(f"field 'version': the class sets version {cls.version!r}, the manifest {version!r}; "
                        "declare one (or drop the class's)")
    return problems
