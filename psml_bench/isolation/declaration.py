"""A submission's class read in the sandbox: its parameters' defaults and rules, for the manifest's copy.

The class is the one home of its parameters' defaults and rules; the manifest holds a copy, because the
harness never imports a submission and builds cells (and their keys) from the manifest. To derive that copy
(``psml-bench validate --write-parameters``, :mod:`psml_bench.plugins.derived`) or compare it, the class is read
where a run would import it: a *declaration process*, forked by the sandbox's zygote like an attack or defense
process (:mod:`psml_bench.isolation.sandbox`), imports the submission's ``.py`` files (read by the harness) from
memory, as its kind's process does (an attack's modules at the top level, a strategy's and a defense's under
their packages), and answers with JSON, never unpickled: every parameter of the class's ``defaults`` with its
default, in the class's order, and the rules its own classes declare in ``allowed``. The rules of psml_bench's
base classes (e.g. the surrogate parameters' of :class:`~psml_bench.Attack`) are not part of the copy: the
harness's stand-in subclasses the same base, so they apply to it already.
"""

from __future__ import annotations

import importlib
import math
import pickle
import resource
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..contract.errors import ProtocolError, PsmlError, sanitise
from ..contract.parameters import Allowed
from ..contract.registries import ATTACKS, DEFENSES, STRATEGIES
from .attack_process import STRATEGY_PACKAGE, PluginLocator, entry_class, failure_header, process_sandbox, receive_setup
from .channel import pack, unpack
from .jailed_defense import BUILD_ERROR_CHARS, DEFENSE_PACKAGE
from .sandbox import MemoryFinder, read_sources, sandbox_problem

DECLARATION_TARGET = 2
"""Index of :func:`declaration_main` in the sandbox's targets (``isolation.attack_process.SANDBOX_TARGETS``)."""
READ_TIMEOUT_S = 300.0
"""How long importing a submission's class and reading its declaration may take (default)."""
PACKAGES = {"attack": "", "strategy": STRATEGY_PACKAGE, "defense": DEFENSE_PACKAGE}
"""The package each kind of submission's modules are imported under in its process ('' for the top level)."""
VALUE_TYPES = (bool, int, float, str)
"""What a manifest parameter's default (and a choice) may be."""
_REPLY_LIMIT = 2**20


@dataclass(frozen=True)
class Declaration:
    """What a submission's class says about its parameters.

    Attributes:
        cls: the class's name.
        defaults: parameter -> default, in the class's order.
        rules: parameter -> the rule the submission's own classes declare for it, as a manifest writes it
            (``minimum``, ``maximum``, ``choices``; empty: a rule that allows every value of the type).
        unwritable: parameter -> a rule of its own classes that a manifest cannot hold (a registry, an
            exclusive minimum, a rule class of its own), described; only the class checks it.
        inherited: the parameters a rule of psml_bench's base classes applies to (e.g. ``labels``).
    """

    cls: str
    defaults: dict[str, Any]
    rules: dict[str, dict[str, Any]]
    unwritable: dict[str, str]
    inherited: tuple[str, ...] = ()


# --- the declaration process ----------------------------------------------------------------------

def manifest_rule(rule: Any, default: Any) -> dict[str, Any] | None:
    """``rule`` as a manifest parameter's ``minimum``/``maximum``/``choices`` (None: a manifest cannot hold it)."""
    if type(rule) is not Allowed or rule.registry is not None or rule.exclusive_minimum:
        return None
    numeric = type(default) in (int, float)
    if (rule.minimum is not None or rule.maximum is not None) and not numeric:
        return None
    if (rule.integer and type(default) is not int) or any(type(c) not in VALUE_TYPES for c in rule.choices):
        return None
    form: dict[str, Any] = {}
    if rule.minimum is not None:
        form["minimum"] = rule.minimum
    if rule.maximum is not None:
        form["maximum"] = rule.maximum
    if rule.choices:
        form["choices"] = list(rule.choices)
    return form


def class_declaration(cls: type) -> dict[str, Any]:
    """The JSON form of ``cls``'s :class:`Declaration`: its defaults, and the rules its own classes (those of its
    MRO outside psml_bench) declare, the most derived one per parameter.

    Raises:
        TypeError: a default is not an integer, a finite number, a string or a boolean.
    """
    defaults = dict(getattr(cls, "defaults", {}))
    for name, value in defaults.items():
        if type(value) not in VALUE_TYPES or (isinstance(value, float) and not math.isfinite(value)):
            raise TypeError(f"the default of parameter '{name}' is {value!r}; a manifest parameter's default is "
                            "an integer, a finite number, a string or a boolean")
    inherited = [vars(k).get("allowed", {}) for k in cls.__mro__ if k.__module__.split(".")[0] == "psml_bench"]
    rules: dict[str, dict[str, Any]] = {}
    unwritable: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.split(".")[0] == "psml_bench":
            continue
        for name, rule in vars(klass).get("allowed", {}).items():
            if name not in defaults or any(name in base and (base[name] is rule or base[name] == rule)
                                           for base in inherited):
                continue  # the base's rule: the harness's stand-in has it
            form = manifest_rule(rule, defaults[name])
            rules.pop(name, None)
            unwritable.pop(name, None)
            if form is None:
                unwritable[name] = str(rule.describe() if hasattr(rule, "describe") else rule)
            else:
                rules[name] = form
    return {"class": cls.__name__, "parameters": [[name, value] for name, value in defaults.items()],
            "rules": rules, "unwritable": unwritable,
            "inherited": sorted({name for base in inherited for name in base if name in defaults})}


def declaration_main(conn: Connection) -> None:
    """Entry point of a declaration process (forked by the sandbox's zygote): import the class, answer its
    declaration (or why it could not be read), exit."""
    setup = receive_setup(conn)
    if setup is None:
        return
    locator: PluginLocator = setup["locator"]
    kind = setup["kind"]
    try:
        for module in locator.imports:
            importlib.import_module(module)
        sys.meta_path.insert(0, MemoryFinder(setup["sources"], locator.submission))
        base = {"attack": ATTACKS, "strategy": STRATEGIES, "defense": DEFENSES}[kind].base
        cls = entry_class(locator, PACKAGES[kind] + "." if PACKAGES[kind] else "", base)
        reply = pack({"op": "declaration", **class_declaration(cls)})
    except BaseException as exc:  # noqa: BLE001 - everything the plugin does wrong is reported
        reply = pack(failure_header(exc))
    try:
        conn.send_bytes(reply)
    except (OSError, ValueError):
        pass


# --- the harness's side ---------------------------------------------------------------------------

def kind_sources(folder: Path, kind: str) -> dict[str, str]:
    """The submission's modules as its kind's process imports them (under its package, if any)."""
    sources = read_sources(folder)
    package = PACKAGES[kind]
    if not package:
        return sources
    return {f"{package}.{name}": source for name, source in sources.items()} | {f"{package}/__init__": ""}


def read_declaration(folder: Path, kind: str, entry: str, imports: tuple[str, ...] = (), *,
                     timeout_s: float = READ_TIMEOUT_S, memory_mb: int | None = None) -> Declaration:
    """The declaration of the class ``entry`` (``module:Class``) of the submission at ``folder``, read in a
    declaration process of this process's sandbox.

    Raises:
        PsmlError: bubblewrap cannot run here, the class could not be imported (or is not a plugin of
            ``kind``, or has a default a manifest cannot hold), or its process timed out, died or sent a
            malformed reply; one line, in the harness's words, quoting the class's.
    """
    folder = Path(folder).resolve()
    problem = sandbox_problem()
    if problem:
        raise PsmlError(f"refused to import the class of submission {folder} unsandboxed: {problem}")
    limit = (memory_mb * 2**20, memory_mb * 2**20) if memory_mb else resource.getrlimit(resource.RLIMIT_AS)
    locator = PluginLocator(folder.name, submission=str(folder), entry=entry, imports=tuple(imports))
    sandbox = process_sandbox()
    conn = sandbox.fork(DECLARATION_TARGET)
    try:
        conn.send_bytes(pickle.dumps({"locator": locator, "kind": kind, "sources": kind_sources(folder, kind),
                                      "memory_limit": limit}, protocol=pickle.HIGHEST_PROTOCOL))
        if not conn.poll(timeout_s):
            sandbox.stop()  # ends the process and everything it started
            raise PsmlError(f"{folder}: importing class {entry} in the sandbox took over {timeout_s:g}s")
        header, _ = unpack(conn.recv_bytes(_REPLY_LIMIT))
    except (EOFError, OSError, ProtocolError) as exc:
        sandbox.stop()
        raise PsmlError(f"{folder}: the process importing class {entry} ended or broke the protocol "
                        f"({sanitise(exc, 200)})") from None
    finally:
        conn.close()
    if header.get("op") == "failed":
        kind = sanitise(header.get("type", "Error"), 60)
        message = sanitise(header.get("message", ""), BUILD_ERROR_CHARS)
        raise PsmlError(f"{folder}: importing class {entry} in the sandbox raised {kind}: {message}")
    return _parse(header, folder, entry)


def _parse(header: dict[str, Any], folder: Path, entry: str) -> Declaration:
    """The reply as a :class:`Declaration`, its shape checked (the process ran the submission's code)."""
    parameters, rules, unwritable = header.get("parameters"), header.get("rules"), header.get("unwritable")
    inherited = header.get("inherited")
    ok = (header.get("op") == "declaration" and isinstance(header.get("class"), str) and isinstance(parameters, list)
          and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) in VALUE_TYPES
                  for p in parameters)
          and isinstance(rules, dict) and isinstance(unwritable, dict)
          and all(isinstance(r, dict) and set(r) <= {"minimum", "maximum", "choices"} for r in rules.values())
          and all(isinstance(u, str) for u in unwritable.values())
          and isinstance(inherited, list) and all(isinstance(n, str) for n in inherited))
    if not ok:
        raise PsmlError(f"{folder}: the process importing class {entry} sent a malformed declaration")
    return Declaration(header["class"], {name: value for name, value in parameters}, rules, unwritable,
                       tuple(inherited))
