"""Submitted plugins: manifests, registration, conformance tests and the leaderboard's sanity flags.

A submission is a folder ``submissions/<name>/`` with a ``manifest.json`` (schema
``schemas/manifest.schema.json``) and the plugin's code. Valid submissions are registered under
their name with the source ``submission <folder> v<version>``:

- a submitted **attack** is never imported by the harness: it is registered as a stand-in class
  built from the manifest (parameters, version, description) and its code is imported only in
  the isolated attack process (:mod:`psml_bench._isolation`);
- a submitted **defense** runs inside the serving system, so it is imported into the harness
  (defenses are trusted code, reviewed before merge; see docs/submissions.md).

``psml-bench validate`` checks the manifest and runs the conformance tests on ``fmnist-tiny``;
``psml-bench run`` adds every valid submission to the grids its manifest names and reports (and
skips) every invalid one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jsonschema
import numpy as np
import torch

from ._config import schema
from ._errors import ConfigError, PsmlError
from ._plugins import ATTACKS, DEFENSES, Attack, Defense

if TYPE_CHECKING:
    from ._runner import Cell, GridConfig
    from ._zoo import Zoo

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUBMISSIONS_ENV = "PSML_BENCH_SUBMISSIONS"
_PY_TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
}


class ManifestError(ConfigError):
    """A submission's manifest is invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


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


# --- sanity checks (flags on the leaderboard) ------------------------------------------------------

PROBABILITY_TOLERANCE = 1e-3
CEILING_Z = 3.0
CEILING_SHIFT = 0.02
UNSEEN_SAMPLES = 2000


def are_probability_vectors(outputs: Any, num_classes: int) -> bool:
    """Rows of finite, non-negative numbers summing to 1 (within 1e-3), one column per class."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2 or outputs.shape[1] != num_classes:
        return False
    outputs = outputs.double()
    return bool(torch.isfinite(outputs).all() and (outputs >= -PROBABILITY_TOLERANCE).all()
                and ((outputs.sum(dim=1) - 1).abs() <= PROBABILITY_TOLERANCE).all())


def defense_flags(zoo: Zoo, grid: GridConfig, cell: Cell, probe_size: int = 64) -> list[str]:
    """Probe the cell's defense on a fresh server: outputs are probabilities; determinism as claimed.

    The probe has its own generator (``[seed, 5]``), so it changes none of the cell's numbers.
    """
    from ._serving import Server, Spec

    defense = DEFENSES.get(cell.defense.name)(**cell.defense.kwargs)
    server = Server(zoo, defense=defense, rng=np.random.default_rng([cell.seed, 5]), policy=grid.policy)
    inputs = zoo.splits["benign_x"][:probe_size]
    spec = Spec(sum(server.spec_range.accuracy) / 2, sum(server.spec_range.latency_ms) / 2)
    first = server.query(inputs, spec, purpose="probe")
    second = server.query(inputs, spec, purpose="probe")
    flags = []
    if not (are_probability_vectors(first, zoo.num_classes) and are_probability_vectors(second, zoo.num_classes)):
        flags.append("defense outputs are not probability vectors")
    if defense.deterministic and not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
                                      and first.shape == second.shape and torch.equal(first, second)):
        flags.append("defense claims deterministic = True but answered identical calls differently")
    return flags


def agreement_ceiling(unseen_agreement: float, n_unseen: int, n_test: int) -> float:
    """The most test-split fidelity an honest surrogate is expected to reach.

    An honest surrogate never saw the test inputs, so it agrees with the victim on them about as
    often as on other inputs it never saw from the same source (the ``benign`` split, never given
    to attacks): the ceiling is that agreement plus ``CEILING_Z`` standard errors of the difference
    of two proportions plus ``CEILING_SHIFT`` for the shift between the two splits.
    """
    p = min(max(unseen_agreement, 0.01), 0.99)
    return unseen_agreement + CEILING_Z * math.sqrt(p * (1 - p) * (1 / n_unseen + 1 / n_test)) + CEILING_SHIFT


_VICTIM_LABELS: dict[tuple[str, str], np.ndarray] = {}


def surrogate_flags(zoo: Zoo, victim_id: str, surrogate: torch.nn.Module, fidelity: float) -> list[str]:
    """Flag a surrogate that agrees with the victim on the test split more than the ceiling allows."""
    from . import _scoring as scoring

    unseen = zoo.splits["benign_x"][:UNSEEN_SAMPLES]
    key = (str(zoo.directory), victim_id)
    if key not in _VICTIM_LABELS:
        with torch.no_grad():
            victim = zoo.model(victim_id)
            _VICTIM_LABELS[key] = torch.cat([victim(unseen[i:i + 512]).argmax(1)
                                             for i in range(0, len(unseen), 512)]).numpy()
    victim_labels = _VICTIM_LABELS[key]
    agreement = scoring.fidelity(scoring.predict_labels(surrogate, unseen, zoo.num_classes), victim_labels)
    ceiling = agreement_ceiling(agreement, len(unseen), len(zoo.splits["test_x"]))
    if fidelity > ceiling:
        return [f"fidelity {fidelity:.3f} above the agreement ceiling {ceiling:.3f} (agreement {agreement:.3f} on "
                "unseen benign inputs): the surrogate may have seen test data"]
    return []


# --- conformance tests (psml-bench validate) -------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One conformance check's outcome."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Validation:
    """Everything ``psml-bench validate`` found about one submission."""

    folder: Path
    manifest_errors: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.manifest_errors and all(c.ok for c in self.checks)


CONFORMANCE_ZOO = "fmnist-tiny"
CONFORMANCE_BUDGET = 120


def _conformance_grid(attack, defense):
    from ._runner import GridConfig

    return GridConfig(name="validate", zoo=CONFORMANCE_ZOO, policy="infaas", victims=("rank:1",), attacks=(attack,),
                      defenses=(defense,), budgets=(CONFORMANCE_BUDGET,), seeds=(0,), benign_queries=100,
                      source="psml-bench validate")


def validate_submission(path: Path | str, *, cache_dir: Path | None = None, run: bool = True,
                        progress: bool = False) -> Validation:
    """Check a submission's manifest, import it, and run the conformance tests on ``fmnist-tiny``.

    An attack is imported only in the isolated attack process: the checks run one cell with it
    against the undefended tiny zoo (it must return a surrogate within its budget, and the same
    seed must give the same surrogate). A defense is imported here: it must instantiate at its
    defaults and every sweep value, answer with probability vectors, keep its determinism claim,
    and let the ``naive`` attack complete a cell.
    """
    from ._zoo import open_zoo

    path = Path(path)
    result = Validation(path.parent if path.name == MANIFEST else path)
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        result.manifest_errors = list(exc.errors)
        return result
    try:
        register(manifest)
        result.checks.append(Check("registers" + (" (imports)" if manifest.kind == "defense" else ""), True))
    except PsmlError as exc:
        result.checks.append(Check("registers", False, str(exc)))
        return result
    if not run:
        return result
    zoo = open_zoo(CONFORMANCE_ZOO, cache_dir, progress=progress)
    if manifest.kind == "attack":
        result.checks += attack_conformance(zoo, manifest.name)
    else:
        values = [{manifest.sweep[0]: v} for v in manifest.sweep[1]] if manifest.sweep else []
        result.checks += defense_conformance(zoo, manifest.name, values)
    return result


SMALL_SURROGATE = {"min_steps": 20, "epochs": 1}


def attack_conformance(zoo: Zoo, name: str) -> list[Check]:
    """The checks every attack passes: one cell twice against the undefended tiny zoo."""
    from ._runner import Cell, PluginSpec, run_cell

    defaults = ATTACKS.get(name).defaults
    attack = PluginSpec(name, tuple(sorted((k, v) for k, v in SMALL_SURROGATE.items() if k in defaults)))
    defense = PluginSpec("none", ())
    grid = _conformance_grid(attack, defense)
    rows = [run_cell(zoo, grid, Cell("rank:1", attack, defense, CONFORMANCE_BUDGET, 0)) for _ in range(2)]
    first = rows[0]
    checks = [Check("runs in the isolated attack process and returns a Surrogate", first["status"] == "ok",
                    first["error"])]
    if first["status"] == "ok":
        checks.append(Check(f"stays within its budget ({CONFORMANCE_BUDGET} queries)",
                            first["queries"] <= CONFORMANCE_BUDGET, f"{first['queries']} queries"))
        same = all(rows[1][k] == first[k] for k in ("fidelity", "accuracy", "queries", "fingerprint_queries"))
        checks.append(Check("same seed gives the same result", same,
                            "" if same else f"fidelity {first['fidelity']} then {rows[1]['fidelity']}"))
        checks.append(Check("no sanity flag", not first.get("flags"), first.get("flags", "")))
    return checks


def defense_conformance(zoo: Zoo, name: str, sweep: list[dict[str, Any]]) -> list[Check]:
    """The checks every defense passes, at its defaults and every ``sweep`` setting."""
    from ._runner import Cell, PluginSpec, run_cell

    cls = DEFENSES.get(name)
    values = [{}] + list(sweep)
    for params in values:
        try:
            cls(**params)
        except Exception as exc:  # noqa: BLE001
            return [Check(f"instantiates with {params or 'its defaults'}", False, f"{type(exc).__name__}: {exc}")]
    checks = [Check("instantiates at its defaults and every sweep value", True)]
    attack = PluginSpec("naive", tuple(sorted(SMALL_SURROGATE.items())))
    for params in values:
        defense = PluginSpec(name, tuple(sorted(params.items())))
        grid = _conformance_grid(attack, defense)
        cell = Cell("rank:1", attack, defense, CONFORMANCE_BUDGET, 0)
        label = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        try:
            flags = defense_flags(zoo, grid, cell)
        except Exception as exc:  # noqa: BLE001
            checks.append(Check(f"{label}: answers queries", False, f"{type(exc).__name__}: {exc}"))
            continue
        checks.append(Check(f"{label}: probability vectors, determinism as claimed", not flags, "; ".join(flags)))
        row = run_cell(zoo, grid, cell)
        checks.append(Check(f"{label}: a naive attack completes a cell (goodput {row['goodput']:.3f})",
                            row["status"] == "ok", row["error"]))
    return checks
