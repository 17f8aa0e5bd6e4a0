"""Submitted plugins: manifests, their validation, registration and loading into the registries.

A submission is a folder ``submissions/<name>/`` with a ``manifest.json`` (schema
``schemas/manifest.schema.json``) and the plugin's code. Valid submissions are registered under
their name with the source ``submission <folder> v<version>``:

- a submitted **attack** is never imported by the harness: it is registered as a stand-in class
  built from the manifest (parameters, version, description) and its code is imported only in
  the isolated attack process (:mod:`psml_bench._isolation`);
- a submitted **defense** runs inside the serving system, so it is imported into the harness
  (defenses are trusted code, reviewed before merge; see docs/submissions.md).

``psml-bench validate`` checks the manifest and runs the conformance tests on ``fmnist-tiny``
(:mod:`psml_bench._conformance`); ``psml-bench run`` adds every valid submission to the grids its
manifest names and reports (and skips) every invalid one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jsonschema

from ._config import schema
from ._errors import ConfigError, ManifestError, PsmlError
from ._plugins import Attack, Defense
from ._registries import ATTACKS, DEFENSES

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUBMISSIONS_ENV = "PSML_BENCH_SUBMISSIONS"
_PY_TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
}


@dataclass(frozen=True)
class Parameter:
    """One declared plugin parameter."""

    name: str
    type: str
    default: Any
    description: str = ""


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json``."""

    folder: Path
    name: str
    kind: str
    entry: str
    version: str
    authors: tuple[str, ...]
    description: str
    license: str
    parameters: tuple[Parameter, ...]
    sweep: tuple[str, tuple[Any, ...]] | None = None
    grids: tuple[str, ...] = ("default",)
    imports: tuple[str, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.parameters}

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def source(self) -> str:
        return f"submission {self.folder.name}/ v{self.version}"

    def joins(self, grid_name: str) -> bool:
        return "*" in self.grids or grid_name in self.grids


def submissions_dirs() -> list[Path]:
    """``$PSML_BENCH_SUBMISSIONS`` (directories separated by ``os.pathsep``), else the checkout's
    ``submissions/`` if it exists."""
    explicit = os.environ.get(SUBMISSIONS_ENV)
    if explicit:
        return [Path(p) for p in explicit.split(os.pathsep) if p]
    checkout = Path(__file__).resolve().parents[1] / "submissions"
    return [checkout] if checkout.is_dir() else []


def submission_folders(directories: list[Path] | None = None) -> list[Path]:
    """Every submission folder (a subfolder not starting with ``.`` or ``_``) of ``directories``
    (default :func:`submissions_dirs`)."""
    folders = []
    for directory in directories if directories is not None else submissions_dirs():
        if directory.is_dir():
            folders += sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    return folders


def _field_errors(raw: Any, source: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema("manifest"))
    errors = []
    for error in sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "?"
            path = f"{path}.{missing}" if path else missing
            message = "is required"
        elif error.validator == "additionalProperties":
            known = sorted(error.schema.get("properties", {}))
            for extra in sorted(set(error.instance) - set(known)):
                errors.append(f"{source}: field '{f'{path}.' if path else ''}{extra}': is not a manifest field; "
                              f"expected one of {', '.join(known)}")
            continue
        else:
            message = error.message
            if error.validator == "pattern":
                message = f"{error.instance!r} does not match the expected pattern {error.validator_value}"
        errors.append(f"{source}: field '{path or '(top level)'}': {message}")
    return errors


def _semantic_errors(raw: dict[str, Any], folder: Path, source: str) -> list[str]:
    errors = []
    if raw["name"] != folder.name:
        errors.append(f"{source}: field 'name': expected the folder's name '{folder.name}', got '{raw['name']}'")
    for name, parameter in raw["parameters"].items():
        if not _PY_TYPES[parameter["type"]](parameter["default"]):
            errors.append(f"{source}: field 'parameters.{name}.default': expected a {parameter['type']}, "
                          f"got {parameter['default']!r}")
    if raw.get("imports") and raw["kind"] != "attack":
        errors.append(f"{source}: field 'imports': only an attack declares imports (a defense imports normally)")
    top_modules = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    for index, module in enumerate(raw.get("imports", [])):
        if module.split(".")[0] in top_modules:
            errors.append(f"{source}: field 'imports.{index}': expected an installed module, got '{module}', "
                          "which is the submission's own")
    sweep = raw.get("sweep")
    if sweep is not None:
        if raw["kind"] != "defense":
            errors.append(f"{source}: field 'sweep': only a defense declares a sweep parameter")
        elif sweep["parameter"] not in raw["parameters"]:
            errors.append(f"{source}: field 'sweep.parameter': expected one of the declared parameters "
                          f"({', '.join(sorted(raw['parameters'])) or 'none'}), got '{sweep['parameter']}'")
        else:
            kind = raw["parameters"][sweep["parameter"]]["type"]
            for index, value in enumerate(sweep["values"]):
                if not _PY_TYPES[kind](value):
                    errors.append(f"{source}: field 'sweep.values.{index}': expected a {kind}, got {value!r}")
    module = raw["entry"].partition(":")[0].split(".")
    candidates = [folder.joinpath(*module).with_suffix(".py"), folder.joinpath(*module, "__init__.py")]
    if not any(c.is_file() for c in candidates):
        errors.append(f"{source}: field 'entry': expected module '{'.'.join(module)}' as "
                      f"{candidates[0].relative_to(folder)} in {folder}, found no such file")
    return errors


def load_manifest(path: Path | str) -> Manifest:
    """Read and validate a submission's manifest (``path``: the folder or its manifest.json).

    Raises:
        ManifestError: one line per problem, each naming the field and what is expected.
    """
    path = Path(path)
    folder = path.parent if path.name == MANIFEST else path
    manifest_path = folder / MANIFEST
    source = str(manifest_path)
    try:
        raw = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ManifestError([f"{source}: no such file (a submission folder needs a {MANIFEST})"]) from None
    except json.JSONDecodeError as exc:
        raise ManifestError([f"{source}: invalid JSON: {exc}"]) from None
    errors = _field_errors(raw, source)
    if not errors:
        errors = _semantic_errors(raw, folder.resolve(), source)
    if errors:
        raise ManifestError(errors)
    sweep = raw.get("sweep")
    return Manifest(
        folder=folder.resolve(), name=raw["name"], kind=raw["kind"], entry=raw["entry"], version=raw["version"],
        authors=tuple(raw["authors"]), description=raw["description"], license=raw["license"],
        parameters=tuple(Parameter(n, p["type"], p["default"], p.get("description", ""))
                         for n, p in raw["parameters"].items()),
        sweep=(sweep["parameter"], tuple(sweep["values"])) if sweep else None,
        grids=tuple(raw.get("grids", ["default"])), imports=tuple(raw.get("imports", [])),
    )


def folder_hash(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file of a submission folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _attack_stand_in(manifest: Manifest) -> type[Attack]:
    """The harness's view of a submitted attack: parameters and identity, no code of the submission."""

    def run(self, target, knowledge, budget, rng):
        raise PsmlError(f"attack '{manifest.name}' is a submission: it runs only in the isolated attack process")

    digest = folder_hash(manifest.folder)
    return type(f"Submitted_{manifest.name.replace('-', '_')}", (Attack,), {
        "__doc__": manifest.description, "__module__": __name__, "run": run, "version": manifest.version,
        "defaults": manifest.defaults, "submission_folder": str(manifest.folder),
        "submission_entry": manifest.entry, "submission_imports": manifest.imports,
        "source_hash": classmethod(lambda cls: digest),
    })


def _import_defense(manifest: Manifest) -> type[Defense]:
    """Import a submitted defense from its folder (defenses run inside the server: trusted code)."""
    module_name, _, attr = manifest.entry.partition(":")
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(manifest.folder)):
        raise ConfigError(f"{manifest.folder / MANIFEST}: field 'entry': module '{top}' collides with an already "
                          "imported module; give the submission's module a unique name")
    sys.path.insert(0, str(manifest.folder))
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - any import failure invalidates the submission
        raise ConfigError(f"{manifest.folder / MANIFEST}: field 'entry': cannot import '{manifest.entry}': "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(manifest.folder))
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise ConfigError(f"{manifest.folder / MANIFEST}: field 'entry': expected a subclass of "
                          f"psml_bench.Defense, got {cls!r}")
    if dict(cls.defaults) != manifest.defaults:
        raise ConfigError(f"{manifest.folder / MANIFEST}: field 'parameters': expected the class's defaults "
                          f"{dict(cls.defaults)}, got {manifest.defaults}")
    if manifest.sweep and cls.strength != manifest.sweep[0]:
        raise ConfigError(f"{manifest.folder / MANIFEST}: field 'sweep.parameter': expected the class's strength "
                          f"parameter '{cls.strength}', got '{manifest.sweep[0]}'")
    digest = folder_hash(manifest.folder)
    cls.version = manifest.version
    cls.source_hash = classmethod(lambda c: digest)
    return cls


def register(manifest: Manifest) -> None:
    """Register a valid submission in the attack or defense registry."""
    if manifest.kind == "attack":
        ATTACKS.add(manifest.name, _attack_stand_in(manifest), source=manifest.source)
    else:
        DEFENSES.add(manifest.name, _import_defense(manifest), source=manifest.source)


@dataclass(frozen=True)
class Loaded:
    """The outcome of loading one submission folder."""

    folder: Path
    manifest: Manifest | None
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.errors


_LOADED: dict[str, list[Loaded]] = {}


def load_submissions(directories: list[Path] | None = None) -> list[Loaded]:
    """Validate and register every submission of ``directories`` (default :func:`submissions_dirs`),
    once per process; never raises. Invalid submissions are logged as warnings and left out."""
    directories = directories if directories is not None else submissions_dirs()
    key = os.pathsep.join(str(d.resolve()) for d in directories)
    if key in _LOADED:
        return _LOADED[key]
    results = []
    for folder in submission_folders(directories):
        try:
            manifest = load_manifest(folder)
            register(manifest)
            results.append(Loaded(folder, manifest))
        except ManifestError as exc:
            results.append(Loaded(folder, None, tuple(exc.errors)))
        except PsmlError as exc:
            results.append(Loaded(folder, None, (str(exc),)))
    for result in results:
        for error in result.errors:
            log.warning("submission %s skipped: %s", result.folder.name, error)
    _LOADED[key] = results
    return results


def grid_entries(grid_name: str, directories: list[Path] | None = None
                 ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """(attacks, defenses) of valid submissions joining ``grid_name``, as (name, params) pairs."""
    attacks, defenses = [], []
    for loaded in load_submissions(directories):
        manifest = loaded.manifest
        if not loaded.ok or not manifest.joins(grid_name):
            continue
        if manifest.kind == "attack":
            attacks.append((manifest.name, {}))
        elif manifest.sweep:
            defenses += [(manifest.name, {manifest.sweep[0]: value}) for value in manifest.sweep[1]]
        else:
            defenses.append((manifest.name, {}))
    return attacks, defenses
