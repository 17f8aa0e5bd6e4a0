"""Submitted plugins: manifests, their validation, and reading a submissions directory (no registration).

A submission is a folder ``submissions/<name>/`` with a ``manifest.json`` (schema
``schemas/manifest.schema.json``) and the plugin's code. Reading one (:func:`load_manifest`,
:func:`scan_submissions`) is pure: it checks the manifest, the folder and whether the name is free,
and registers nothing. A run registers the valid ones (:mod:`psml_bench.plugins.registration`) under
their name with the source ``submission <folder> v<version>``:

- a submitted **attack** is never imported by the harness: it is registered as a stand-in class
  built from the manifest (parameters, version, description) and its code is imported only in
  the isolated attack process (:mod:`psml_bench.isolation.attack_process`);
- a submitted **strategy** (an extraction :class:`Strategy`) runs inside the attack process, so it
  is handled like an attack: a stand-in in the harness, its code imported only in the isolated
  attack process of any attack whose ``strategy`` parameter names it;
- a submitted **defense** is not imported by the harness either: its stand-in
  (:class:`~psml_bench.isolation.jailed_defense.SubmittedDefense`) has each hook the server calls answered
  by the submission's class in a defense process of the sandbox (:mod:`psml_bench.isolation.jailed_defense`).

A grid checks the plugins it names against the registries and the valid submissions
(:func:`declared_submissions`), so loading a grid registers nothing.
``psml-bench validate`` checks the manifest and runs the conformance tests on ``fmnist-tiny``
(:mod:`psml_bench.bench.conformance`); ``psml-bench run`` adds every valid submission to the grids its
manifest names and reports (and skips) every invalid one.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema

from ..common.files import schema
from ..contract.errors import ManifestError, PsmlError
from ..contract.parameters import Allowed
from ..contract.registries import ATTACKS, DEFENSES, STRATEGIES
from .folders import MANIFEST, folder_hash, folder_problems, submission_folders, submissions_dirs

log = logging.getLogger(__name__)

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
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def rule(self) -> Allowed | None:
        """The manifest's ``minimum``/``maximum``/``choices`` as the plugin's :class:`Allowed` rule (None: no rule)."""
        if self.minimum is None and self.maximum is None and not self.choices:
            return None
        return Allowed(minimum=self.minimum, maximum=self.maximum, choices=self.choices)


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
    def allowed(self) -> dict[str, Allowed]:
        """The parameters' rules declared in the manifest."""
        return {p.name: p.rule for p in self.parameters if p.rule is not None}

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def source(self) -> str:
        return f"submission {self.folder.name}/ v{self.version}"

    def joins(self, grid_name: str) -> bool:
        return "*" in self.grids or grid_name in self.grids


def _field_errors(raw: Any, source: str) -> tuple[list[str], set[str]]:
    """Schema problems, one line each, and the top-level fields they concern."""
    validator = jsonschema.Draft202012Validator(schema("manifest"))
    errors, fields = [], set()
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
                fields.add(path.split(".")[0] if path else extra)
            continue
        else:
            message = error.message
            if error.validator == "pattern":
                message = f"{error.instance!r} does not match the expected pattern {error.validator_value}"
        fields.add(path.split(".")[0])
        errors.append(f"{source}: field '{path or '(top level)'}': {message}")
    return errors, fields


def _rule_errors(name: str, parameter: dict[str, Any], values: list[tuple[str, Any]]) -> list[str]:
    """Problems of one parameter's ``minimum``/``maximum``/``choices`` and of ``values`` under them."""
    kind, errors = parameter["type"], []
    bounded = "minimum" in parameter or "maximum" in parameter
    if bounded and kind not in ("integer", "number"):
        errors.append(f"field 'parameters.{name}': minimum and maximum apply to integer and number parameters, "
                      f"not {kind}")
        return errors
    for index, choice in enumerate(parameter.get("choices", [])):
        if not _PY_TYPES[kind](choice):
            errors.append(f"field 'parameters.{name}.choices.{index}': expected a {kind}, got {choice!r}")
    if parameter.get("minimum", -float("inf")) > parameter.get("maximum", float("inf")):
        errors.append(f"field 'parameters.{name}': minimum {parameter['minimum']} exceeds maximum "
                      f"{parameter['maximum']}")
    if errors:
        return errors
    rule = Parameter(name, kind, parameter["default"], minimum=parameter.get("minimum"),
                     maximum=parameter.get("maximum"), choices=tuple(parameter.get("choices", ()))).rule
    for where, value in values:
        if rule is not None and _PY_TYPES[kind](value) and not rule.accepts(value):
            errors.append(f"field '{where}': {value!r} is not allowed; the parameter must be {rule.describe()}")
    return errors


def entry_errors(folder: Path, entry: str) -> list[str]:
    """Problems of ``module:Class`` found without running the submission's code: the module file
    exists, parses, and defines ``Class`` at its top level."""
    module_name, _, attr = entry.partition(":")
    module = module_name.split(".")
    candidates = [folder.joinpath(*module).with_suffix(".py"), folder.joinpath(*module, "__init__.py")]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return [f"field 'entry': expected module '{module_name}' as {candidates[0].relative_to(folder)} in "
                f"{folder}, found no such file"]
    try:
        tree = ast.parse(found.read_text(), filename=str(found))
    except SyntaxError as exc:
        return [f"field 'entry': {found.relative_to(folder)} line {exc.lineno}: SyntaxError: {exc.msg}"]
    names, star = set(), False
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            star = star or any(alias.name == "*" for alias in node.names)
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    if attr in names or star:
        return []
    classes = sorted(n.name for n in tree.body if isinstance(n, ast.ClassDef))
    close = difflib.get_close_matches(attr, classes, n=1)
    hint = f"did you mean '{module_name}:{close[0]}'? " if close else ""
    return [f"field 'entry': {found.relative_to(folder)} defines no class '{attr}'; {hint}"
            f"classes there: {', '.join(classes) or 'none'}"]


def _semantic_errors(raw: dict[str, Any], folder: Path, bad: set[str]) -> list[str]:
    """Problems the schema cannot see, for the fields that passed it (``bad``: fields that did not)."""
    errors = []
    kind = raw.get("kind") if "kind" not in bad else None
    if "name" not in bad and raw["name"] != folder.name:
        errors.append(f"field 'name': expected the folder's name '{folder.name}', got '{raw['name']}'")
    parameters = raw["parameters"] if "parameters" not in bad else {}
    sweep = raw.get("sweep") if "sweep" not in bad else None
    for name, parameter in parameters.items():
        if not _PY_TYPES[parameter["type"]](parameter["default"]):
            errors.append(f"field 'parameters.{name}.default': expected a {parameter['type']}, "
                          f"got {parameter['default']!r}")
        values = [(f"parameters.{name}.default", parameter["default"])]
        if sweep is not None and sweep["parameter"] == name:
            values += [(f"sweep.values.{i}", v) for i, v in enumerate(sweep["values"])]
        errors += _rule_errors(name, parameter, values)
    if "imports" not in bad:
        if raw.get("imports") and kind == "defense":
            errors.append("field 'imports': only an attack or a strategy declares imports (a defense imports normally)")
        top_modules = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
        for index, module in enumerate(raw.get("imports", [])):
            if module.split(".")[0] in top_modules:
                errors.append(f"field 'imports.{index}': expected an installed module, got '{module}', "
                              "which is the submission's own")
    if sweep is not None:
        if kind is not None and kind != "defense":
            errors.append("field 'sweep': only a defense declares a sweep parameter")
        elif "parameters" in bad:
            pass
        elif sweep["parameter"] not in parameters:
            close = difflib.get_close_matches(sweep["parameter"], parameters, n=1)
            errors.append(f"field 'sweep.parameter': expected one of the declared parameters "
                          f"({', '.join(sorted(parameters)) or 'none'}), got '{sweep['parameter']}'"
                          + (f"; did you mean '{close[0]}'?" if close else ""))
        else:
            kind_of = parameters[sweep["parameter"]]["type"]
            for index, value in enumerate(sweep["values"]):
                if not _PY_TYPES[kind_of](value):
                    errors.append(f"field 'sweep.values.{index}': expected a {kind_of}, got {value!r}")
    if "entry" not in bad:
        errors += entry_errors(folder, raw["entry"])
    return errors


def manifest_folder(path: Path | str) -> Path:
    """The submission folder of ``path``, the folder or its manifest.json."""
    path = Path(path)
    return path.parent if path.name == MANIFEST else path


def read_raw(folder: Path) -> Any:
    """The parsed manifest.json of ``folder``, unchecked.

    Raises:
        ManifestError: there is no such file, or it is not JSON.
    """
    source = folder / MANIFEST
    try:
        return json.loads(source.read_text())
    except FileNotFoundError:
        raise ManifestError([f"{source}: no such file (a submission folder needs a {MANIFEST})"]) from None
    except json.JSONDecodeError as exc:
        raise ManifestError([f"{source}: invalid JSON: {exc}"]) from None


def manifest_problems(raw: Any, folder: Path) -> tuple[list[str], set[str]]:
    """Every problem of ``raw``, the parsed manifest of ``folder`` (one line each, naming the file and the field),
    and the top-level fields the schema rejected (``""``: the manifest as a whole)."""
    source = str(folder / MANIFEST)
    errors, bad = _field_errors(raw, source)
    if isinstance(raw, dict) and "" not in bad:
        errors += [f"{source}: {e}" for e in _semantic_errors(raw, folder.resolve(), bad)]
    return errors, bad


def load_manifest(path: Path | str) -> Manifest:
    """Read and validate a submission's manifest (``path``: the folder or its manifest.json).

    Every problem is found in one pass: the schema's, then the checks of the fields that passed
    it (types of defaults, rules, sweep, imports, the entry module and class, read without
    running it), then the folder's data files and size (:func:`folder_problems`), so a grid skips
    such a folder as ``validate`` rejects it.

    Raises:
        ManifestError: one line per problem, each naming the field and what is expected.
    """
    folder = manifest_folder(path)
    raw = read_raw(folder)
    errors, _ = manifest_problems(raw, folder)
    errors += folder_problems(folder)
    if errors:
        raise ManifestError(errors)
    sweep = raw.get("sweep")
    declared = tuple(Parameter(n, p["type"], p["default"], p.get("description", ""), p.get("minimum"),
                               p.get("maximum"), tuple(p.get("choices", ())))
                     for n, p in raw["parameters"].items())
    return Manifest(
        folder=folder.resolve(), name=raw["name"], kind=raw["kind"], entry=raw["entry"], version=raw["version"],
        authors=tuple(raw["authors"]), description=raw["description"], license=raw["license"],
        parameters=declared,
        sweep=(sweep["parameter"], tuple(sweep["values"])) if sweep else None,
        grids=tuple(raw.get("grids", ["default"])), imports=tuple(raw.get("imports", [])),
    )


def declared_class(manifest: Manifest, defense_base: type | None = None) -> type:
    """The harness's view of a submission: parameters and identity, no code of the submission (an
    attack's or strategy's runs only in the isolated attack process, a defense's only in its
    defense process, :mod:`psml_bench.isolation.jailed_defense`).

    ``defense_base``: the base of a defense's class. The default, :class:`~psml_bench.Defense`, checks
    parameters and labels the plugin as the registered stand-in does; a run registers the subclass of
    :class:`~psml_bench.isolation.jailed_defense.SubmittedDefense` (:mod:`psml_bench.plugins.registration`).
    """
    attrs: dict[str, Any] = {}
    if manifest.kind == "defense":
        base = defense_base or DEFENSES.base
        attrs["strength"] = manifest.sweep[0] if manifest.sweep else None
    else:
        base, method = {"attack": (ATTACKS.base, "run"), "strategy": (STRATEGIES.base, "collect")}[manifest.kind]

        def refuse(self, *args, **kwargs):
            raise PsmlError(f"{manifest.kind} '{manifest.name}' is a submission: it runs only in the isolated "
                            "attack process")

        attrs[method] = refuse
    digest = folder_hash(manifest.folder)
    return type(f"Submitted_{manifest.name.replace('-', '_')}", (base,), {
        "__doc__": manifest.description, "__module__": __name__, "version": manifest.version,
        "defaults": manifest.defaults, "allowed": manifest.allowed, "submission_folder": str(manifest.folder),
        "submission_entry": manifest.entry, "submission_imports": manifest.imports,
        "source_hash": classmethod(lambda cls: digest), **attrs,
    })


KIND_REGISTRIES = {"attack": ATTACKS, "defense": DEFENSES, "strategy": STRATEGIES}
"""The registry of each kind of submission."""


def _raw_name(folder: Path) -> str | None:
    try:
        name = json.loads((folder / MANIFEST).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def name_clashes(folder: Path, directories: list[Path] | None = None) -> list[str]:
    """Problems of the submission at ``folder`` taking a name that is not free: the name of another
    submission folder of ``directories`` (default :func:`submissions_dirs`), or of a built-in,
    installed or ``module:Class`` plugin of any kind. Each names both places."""
    folder = folder.resolve()
    name = _raw_name(folder)
    if name is None:
        return []
    source = folder / MANIFEST
    problems = []
    for other in submission_folders(directories):
        if other.resolve() != folder and _raw_name(other) == name:
            problems.append(f"{source}: field 'name': '{name}' is also the name of the submission in {other}; "
                            "a submission's name must be unique")
    for kind, registry in KIND_REGISTRIES.items():
        entry = registry.find(name)
        if entry is not None and getattr(entry.plugin, "submission_folder", None) is None \
                and not entry.source.startswith("submission "):
            problems.append(f"{source}: field 'name': '{name}' is also the name of the {entry.source} {kind} "
                            f"({_where(entry.plugin)}); choose another name")
    return problems


def _where(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return str(getattr(module, "__file__", None) or cls.__module__)


def registration_errors(manifest: Manifest, claimed: dict[tuple[str, str], Path] | None = None) -> list[str]:
    """Why ``manifest`` cannot be registered (empty: it can): its name is that of a built-in, installed or
    ``module:Class`` plugin, or of a submission in another folder, registered or in ``claimed``
    ((kind, name) -> folder of the submissions read before it)."""
    existing = KIND_REGISTRIES[manifest.kind].find(manifest.name)
    folder = None
    if existing is not None:
        folder = getattr(existing.plugin, "submission_folder", None)
        if folder is None:
            return [f"{manifest.folder / MANIFEST}: field 'name': '{manifest.name}' is also the name of "
                    f"the {existing.source} {manifest.kind} ({_where(existing.plugin)})"]
    elif claimed:
        folder = claimed.get((manifest.kind, manifest.name))
    if folder is not None and Path(folder) != manifest.folder:
        return [f"{manifest.folder / MANIFEST}: field 'name': '{manifest.name}' is also the name of "
                f"the submission in {folder}; a submission's name must be unique"]
    return []


@dataclass(frozen=True)
class Loaded:
    """The outcome of loading one submission folder."""

    folder: Path
    manifest: Manifest | None
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.errors


def scan_submissions(directories: list[Path] | None = None) -> list[Loaded]:
    """Read and check every submission of ``directories`` (default :func:`submissions_dirs`), registering
    none; never raises. Invalid submissions are logged as warnings and marked (``ok`` is False).

    A submission is invalid when its manifest or folder is (:func:`load_manifest`) or its name is not
    free (:func:`registration_errors`; of two folders with one name, the first read keeps it).
    """
    directories = directories if directories is not None else submissions_dirs()
    results: list[Loaded] = []
    claimed: dict[tuple[str, str], Path] = {}
    for folder in submission_folders(directories):
        try:
            manifest = load_manifest(folder)
        except ManifestError as exc:
            results.append(Loaded(folder, None, tuple(exc.errors)))
            continue
        except PsmlError as exc:
            results.append(Loaded(folder, None, (str(exc),)))
            continue
        errors = registration_errors(manifest, claimed)
        if errors:
            results.append(Loaded(folder, None, tuple(errors)))
            continue
        claimed[(manifest.kind, manifest.name)] = manifest.folder
        results.append(Loaded(folder, manifest))
    for result in results:
        for error in result.errors:
            log.warning("submission %s skipped: %s", result.folder.name, error)
    return results


@contextmanager
def declared_submissions(loaded: list[Loaded]) -> Iterator[None]:
    """Within the block, the registries also find every valid submission of ``loaded`` not registered yet (as
    its :func:`declared_class`); after it they hold what they held before. A grid checks and resolves the
    plugins it names inside such a block, so loading it registers nothing."""
    entries: dict[str, list[tuple[str, type, str]]] = {kind: [] for kind in KIND_REGISTRIES}
    for result in loaded:
        manifest = result.manifest
        if result.ok and KIND_REGISTRIES[manifest.kind].find(manifest.name) is None:
            entries[manifest.kind].append((manifest.name, declared_class(manifest), manifest.source))
    with ExitStack() as stack:
        for kind, registry in KIND_REGISTRIES.items():
            stack.enter_context(registry.including(entries[kind]))
        yield


def grid_entries(grid_name: str, directories: list[Path] | None = None, loaded: list[Loaded] | None = None
                 ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """(attacks, defenses) of valid submissions joining ``grid_name``, as (name, params) pairs (``loaded``: the
    submissions already read, else those of ``directories``, read now)."""
    attacks, defenses = [], []
    for loaded in (loaded if loaded is not None else scan_submissions(directories)):
        manifest = loaded.manifest
        if not loaded.ok or manifest.kind == "strategy":  # a strategy joins through an attack's parameter
            continue
        if not manifest.joins(grid_name):
            log.info("submission %s left out of grid '%s': its manifest's 'grids' lists %s (add '%s' or '*' to "
                     "join)", manifest.name, grid_name, ", ".join(manifest.grids), grid_name)
            continue
        if manifest.kind == "attack":
            attacks.append((manifest.name, {}))
        elif manifest.sweep:
            defenses += [(manifest.name, {manifest.sweep[0]: value}) for value in manifest.sweep[1]]
        else:
            defenses.append((manifest.name, {}))
    return attacks, defenses
