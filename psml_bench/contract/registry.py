"""One generic plugin registry: decorator registration, entry points, "did you mean" errors."""

from __future__ import annotations

import ast
import difflib
import importlib
import logging
import pkgutil
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .errors import PsmlError, UnknownPluginError

log = logging.getLogger(__name__)

T = TypeVar("T", bound=type)
PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""What a decorator-registered plugin may be called (its label appends ``(param=value,...)``)."""


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered plugin class and where it came from."""

    name: str
    plugin: T
    source: str


class Registry(Generic[T]):
    """Plugins of one kind, looked up by name.

    Built-ins register with :meth:`register` as a decorator when their package is imported
    (``builtin_package``: every module in it, or that module itself, is imported on first use).
    ``base`` may be given as a ``module:Class`` target, so that registries can be declared below the
    modules defining their base classes (see :mod:`psml_bench.contract.registries`). Third parties register
    through the entry-point group ``entry_point_group`` (``name = "module:Class"``), loaded on
    first use too, so a plugin never goes missing because nobody imported its module.
    """

    def __init__(self, kind: str, base: type | str, *, builtin_package: str | None = None,
                 entry_point_group: str | None = None):
        self.kind = kind
        self._base = base
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Registered[T]] = {}
        self._loaded = False

    @property
    def base(self) -> type:
        """The class every plugin of this kind subclasses (a ``module:Class`` target is imported on first use)."""
        if isinstance(self._base, str):
            module_name, _, attr = self._base.partition(":")
            self._base = getattr(importlib.import_module(module_name), attr)
        return self._base

    def register(self, name: str, *, source: str | None = None) -> Callable[[T], T]:
        """Class decorator: register ``cls`` under ``name``.

        The source defaults to ``built-in`` for classes of psml_bench or of the built-in package and
        ``module <name>`` otherwise; entry points and submissions relabel their plugins when loaded.
        """

        if not isinstance(name, str) or not PLUGIN_NAME.match(name):
            raise PsmlError(f"{self.kind} name {name!r} must be letters, digits, '-', '_' or '.', starting with a "
                            "letter or digit (a label adds '(param=value)' to it)")

        def decorate(cls: T) -> T:
            if not isinstance(cls, type):
                raise PsmlError(f"register_{self.kind}('{name}') decorates a class, got {type(cls).__name__}")
            self.add(name, cls, source=source or self._default_source(cls))
            return cls

        return decorate

    def _default_source(self, cls: type) -> str:
        module = cls.__module__
        packages = [p for p in (self.builtin_package, "psml_bench") if p]
        if any(module == p or module.startswith(f"{p}.") for p in packages):
            return "built-in"
        return f"module {module}"

    def add(self, name: str, cls: T, *, source: str) -> None:
        """Register ``cls`` under ``name``; re-registering the same class is a no-op."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PsmlError(f"{self.kind} '{name}' from {source} must be a subclass of {self.base.__name__}")
        existing = self._entries.get(name)
        if existing is not None and existing.plugin is not cls:
            if f"{existing.plugin.__module__}.{existing.plugin.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
                raise PsmlError(f"{self.kind} name '{name}' from {source} collides with the one from {existing.source}")
        cls.name = name
        self._entries[name] = Registered(name, cls, source)

    @contextmanager
    def including(self, entries: Iterable[tuple[str, T, str]]) -> Iterator[None]:
        """Within the block, lookups also find ``entries`` (name, class, source), added as :meth:`add` adds;
        after it the registry holds exactly what it held before.

        For checking plugins that are read but not registered, such as the submissions a grid names
        while it loads (loading a grid registers nothing).
        """
        self._load()
        saved = dict(self._entries)
        try:
            for name, cls, source in entries:
                self.add(name, cls, source=source)
            yield
        finally:
            self._entries = saved

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.builtin_package:
            package = importlib.import_module(self.builtin_package)
            for module in pkgutil.iter_modules(getattr(package, "__path__", [])):  # a module: imported is enough
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.builtin_package}.{module.name}")
        if self.entry_point_group:
            for entry_point in metadata.entry_points(group=self.entry_point_group):
                dist = entry_point.dist
                source = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "entry point"
                try:
                    self.add(entry_point.name, entry_point.load(), source=f"installed: {source}")
                except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not break the rest
                    log.warning("skipping %s '%s' from %s: %s", self.kind, entry_point.name, source, exc)

    def get(self, name: str) -> T:
        """The plugin class registered under ``name``.

        Raises:
            UnknownPluginError: with close matches and the list of available names.
        """
        return self.entry(name).plugin

    def find(self, name: str) -> Registered[T] | None:
        """The entry registered under ``name`` (built-ins and entry points loaded first), or None."""
        self._load()
        return self._entries.get(name)

    def entry(self, name: str) -> Registered[T]:
        """The entry registered under ``name`` (see :meth:`get`)."""
        self._load()
        if name not in self._entries and ":" in name:
            self._import_target(name)
        if name not in self._entries:
            raise UnknownPluginError(f"unknown {self.kind} '{name}';{self._hint(name)} "
                                     f"available: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def _hint(self, name: str) -> str:
        """How to name what ``name`` probably means: a close registered name, the registered name of a
        class called ``name``, or the ``module:Class`` target of a class in a module nobody imported."""
        for entry in self._entries.values():
            if entry.plugin.__name__ == name:
                return f" class {name} is registered as '{entry.name}'; name it so."
        for module, cls in _defined_here(name):
            on_path = "" if any(Path(p or ".").resolve() == Path.cwd() for p in sys.path) else \
                " with this folder on PYTHONPATH"
            return f" {module}.py here defines {cls}, which nobody imported; name it '{module}:{cls}'{on_path}."
        close = difflib.get_close_matches(name, self._entries, n=1)
        return f" did you mean '{close[0]}'?" if close else ""

    def _import_target(self, target: str) -> None:
        """Register a lazy ``module:Class`` target under that name (plugins under development)."""
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownPluginError(f"cannot load {self.kind} '{target}': {exc}") from None
        self.add(target, cls, source=f"module {module_name}")

    def __iter__(self) -> Iterator[Registered[T]]:
        self._load()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return [entry.name for entry in self]


def _defined_here(name: str) -> Iterator[tuple[str, str]]:
    """(module, class) for each class in the current directory's ``.py`` files that is called
    ``name`` or registered under it by a decorator (``@register_attack("name")``); read, not imported."""
    for path in sorted(Path.cwd().glob("*.py")):
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            registered = [d.args[0].value for d in node.decorator_list if isinstance(d, ast.Call) and d.args
                          and isinstance(d.args[0], ast.Constant)]
            if node.name == name or name in registered:
                yield path.stem, node.name
