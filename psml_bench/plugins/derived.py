"""A manifest's parameters derived from its plugin class (``psml-bench validate --write-parameters``).

The class is the one home of a parameter's default and rules. The manifest keeps a copy, because the
harness never imports a submission and builds cells, and their keys, from the manifest; that copy is
written from the class, as the generated parts of the docs are written from results, never by hand.
:func:`derive_parameters` makes it from the class's :class:`~psml_bench.isolation.declaration.Declaration`
(read in the sandbox) and the manifest's current ``parameters``:

- every parameter of the class's ``defaults``, and no other: one the manifest lacks is added at the end,
  in the class's order, one the class no longer has is dropped; the others keep their place and keys' order;
- ``type`` from the default's type (``integer``, ``number``, ``string``, ``boolean``; a manifest's ``number``
  for an integer default stays: the parameter accepts any number), ``default`` the class's;
- ``minimum``/``maximum``/``choices`` from the rule the submission's own classes declare in ``allowed``; a
  parameter whose class declares none (or one a manifest cannot hold) keeps the manifest's rule, which the
  harness checks when a grid loads (the rules of psml_bench's base classes, such as the surrogate
  parameters', apply to the harness's stand-in already, and are not copied);
- ``description`` the manifest's: the class cannot say it, so a new parameter without one is an error.

:func:`write_parameters` writes the result only when it differs, in the shipped manifests' style
(:func:`format_manifest`); ``validate`` fails while it would (:func:`parameter_differences`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.files import write_atomic
from ..contract.errors import ManifestError
from ..isolation.declaration import Declaration, read_declaration
from .folders import MANIFEST
from .manifests import entry_errors, manifest_folder, manifest_problems, read_raw

TYPE_NAMES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))
"""A default's Python type -> the manifest's parameter type (``bool`` first: it is an ``int``)."""
RULE_KEYS = ("minimum", "maximum", "choices")
KEY_ORDER = ("type", "default", *RULE_KEYS, "description")
"""The order of a parameter's keys, which places a key the tool adds (:func:`_placed`)."""
NEEDED = {"", "kind", "entry", "imports"}
"""Fields the class is found by: the tool needs them valid (``""``: the manifest as a whole)."""


@dataclass
class Derived:
    """A manifest's parameters derived from its class.

    Attributes:
        parameters: the new ``parameters`` object.
        changes: one line per difference from the manifest's (empty: they agree).
        notes: manifest rules kept because the class declares none, and class rules a manifest cannot hold.
        undescribed: parameters new to the manifest that have no description.
    """

    parameters: dict[str, dict[str, Any]]
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    undescribed: list[str] = field(default_factory=list)


def type_name(value: Any) -> str:
    """The manifest's type of a default."""
    return next(name for kind, name in TYPE_NAMES if isinstance(value, kind))


def same(a: Any, b: Any) -> bool:
    """Whether two manifest values are the same (``1`` and ``1.0`` are; ``True`` and ``1`` are not)."""
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _placed(old: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` in ``old``'s key order; each new key goes after the last key that :data:`KEY_ORDER` puts before it
    (none: before the first it puts after it)."""
    keys = [k for k in old if k in values]
    for key in (k for k in KEY_ORDER if k in values and k not in keys):
        rank = KEY_ORDER.index(key)
        earlier = [i for i, k in enumerate(keys) if k in KEY_ORDER and KEY_ORDER.index(k) < rank]
        later = [i for i, k in enumerate(keys) if k in KEY_ORDER and KEY_ORDER.index(k) > rank]
        keys.insert(earlier[-1] + 1 if earlier else later[0] if later else len(keys), key)
    return {k: values[k] for k in keys}


def _derive_one(name: str, old: dict[str, Any], default: Any, declaration: Declaration,
                derived: Derived) -> dict[str, Any]:
    """One parameter's object; its differences from ``old`` and notes go to ``derived``."""
    values = dict(old)
    kind = type_name(default)
    values["type"] = "number" if kind == "integer" and old.get("type") == "number" else kind
    values["default"] = default
    rule = declaration.rules.get(name)
    if rule is not None:
        for key in RULE_KEYS:
            values.pop(key, None)
        values.update(rule)
    elif any(key in old for key in RULE_KEYS) and name not in declaration.inherited:
        kept = ", ".join(k for k in RULE_KEYS if k in old)
        derived.notes.append(f"parameters.{name}: {kept} kept from the manifest, this rule's only home (class "
                             f"{declaration.cls} declares none for it; an Allowed in its allowed would move it there)")
    if name in declaration.unwritable:
        derived.notes.append(f"parameters.{name}: the class's rule ({declaration.unwritable[name]}) cannot be "
                             "written in a manifest; only the class checks it, when its process builds it")
    for key in values:  # an unchanged value keeps the manifest's spelling (1 for 1.0)
        if key in old and same(old[key], values[key]):
            values[key] = old[key]
    new = _placed(old, values)
    for key in KEY_ORDER:
        if key in old and key not in new:
            derived.changes.append(f"parameters.{name}.{key}: removed (class {declaration.cls} declares no such rule)")
        elif key in new and key not in old:
            derived.changes.append(f"parameters.{name}.{key}: set to {json.dumps(new[key])}")
        elif key in new and not same(old[key], new[key]):
            derived.changes.append(f"parameters.{name}.{key}: {json.dumps(old[key])} -> {json.dumps(new[key])}")
    return new


def derive_parameters(existing: Any, declaration: Declaration) -> Derived:
    """The manifest's ``parameters`` (``existing``, as parsed) rewritten from the class's ``declaration``."""
    existing = existing if isinstance(existing, dict) else {}
    derived = Derived({})
    order = [n for n in existing if n in declaration.defaults]
    order += [n for n in declaration.defaults if n not in existing]
    for name in order:
        old = existing.get(name)
        old = old if isinstance(old, dict) else {}
        new = _derive_one(name, old, declaration.defaults[name], declaration, derived)
        if name not in existing:
            derived.changes = [c for c in derived.changes if not c.startswith(f"parameters.{name}.")]
            derived.changes.append(f"parameters.{name}: added {json.dumps(new)}")
            if "description" not in new:
                derived.undescribed.append(name)
        derived.parameters[name] = new
    for name in existing:
        if name not in declaration.defaults:
            derived.changes.append(f"parameters.{name}: removed (not in the defaults of class {declaration.cls})")
    return derived


def format_manifest(raw: dict[str, Any]) -> str:
    """``raw`` as the shipped manifests are written: an object of 2-space-indented fields, one a line, each value
    on its line (``parameters``: one parameter a line)."""
    lines = []
    for key, value in raw.items():
        if key == "parameters" and isinstance(value, dict) and value:
            body = "{\n" + ",\n".join(f"    {json.dumps(name)}: {json.dumps(p, ensure_ascii=False)}"
                                      for name, p in value.items()) + "\n  }"
        else:
            body = json.dumps(value, ensure_ascii=False)
        lines.append(f"  {json.dumps(key)}: {body}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


@dataclass(frozen=True)
class Rewrite:
    """What :func:`write_parameters` did to one manifest."""

    path: Path
    cls: str
    changes: tuple[str, ...]
    notes: tuple[str, ...]
    written: bool


def _class_of(folder: Path, raw: Any, timeout_s: float | None = None,
              memory_mb: int | None = None) -> tuple[Declaration, list[str]]:
    """The declaration of the class ``raw`` (the parsed manifest of ``folder``) names, read in the sandbox, and the
    manifest's problems (:func:`~psml_bench.plugins.manifests.manifest_problems`, none in the fields it needs).

    Raises:
        ManifestError: the fields the class is found by are not valid (every problem of the manifest, listed).
        PsmlError: the class could not be read (:func:`~psml_bench.isolation.declaration.read_declaration`).
    """
    problems, bad = manifest_problems(raw, folder)
    if bad & NEEDED or entry_errors(folder.resolve(), raw["entry"]):
        raise ManifestError(problems)
    limits = {"timeout_s": timeout_s} if timeout_s else {}
    return read_declaration(folder, raw["kind"], raw["entry"], tuple(raw.get("imports", ())), memory_mb=memory_mb,
                            **limits), problems


def parameter_differences(path: Path | str, timeout_s: float | None = None,
                          memory_mb: int | None = None) -> tuple[str, list[str]]:
    """(the class's name, how the manifest's parameters differ from those derived from it: one line each,
    empty when they agree; descriptions aside) for the submission at ``path``."""
    folder = manifest_folder(path)
    raw = read_raw(folder)
    declaration, _ = _class_of(folder, raw, timeout_s, memory_mb)
    return declaration.cls, derive_parameters(raw.get("parameters"), declaration).changes


def write_parameters(path: Path | str) -> Rewrite:
    """Rewrite the manifest's ``parameters`` at ``path`` (a submission folder or its manifest.json) from its
    class (see the module's docstring); write the file only when they differ.

    Raises:
        ManifestError: the manifest cannot name its class, a new parameter has no description (one line naming
            them all), or the rewrite would make the manifest invalid (e.g. a sweep value the new rule forbids).
        PsmlError: the class could not be read in the sandbox.
    """
    folder = manifest_folder(path)
    source = folder / MANIFEST
    raw = read_raw(folder)
    declaration, problems = _class_of(folder, raw)
    derived = derive_parameters(raw.get("parameters"), declaration)
    if derived.undescribed:
        names = derived.undescribed
        raise ManifestError([f"{source}: field 'parameters': class {declaration.cls}'s parameter(s) "
                             f"{', '.join(names)} are not in the manifest and the class cannot give a description; "
                             f"add one to each first, e.g. \"{names[0]}\": {{\"description\": \"what it does\"}}"])
    rewrite = Rewrite(source, declaration.cls, tuple(derived.changes), tuple(derived.notes), bool(derived.changes))
    if not derived.changes:
        return rewrite
    new = {**raw, "parameters": derived.parameters}
    before = set(problems)
    introduced = [p for p in manifest_problems(new, folder)[0] if p not in before]
    if introduced:
        raise ManifestError([f"{p} (after writing the class's parameters; nothing written)" for p in introduced])
    write_atomic(source, format_manifest(new))
    return rewrite
