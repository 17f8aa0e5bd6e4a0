"""Conformance tests every plugin passes (``psml-bench validate`` and the built-ins' tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cell import run_cell
from ._errors import ManifestError, PsmlError
from ._grid import Cell, GridConfig, PluginSpec
from ._manifests import MANIFEST, load_manifest, register
from ._registries import ATTACKS, DEFENSES
from ._service import ServiceConfig
from ._sanity import defense_flags
from ._zoo import Zoo
from ._zoo_build import open_zoo


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
VALIDATE_TIMEOUT_S = 600.0
"""Wall-clock limit of each attack process ``validate`` runs (its sandbox ends with every child at the limit)."""
VALIDATE_MEMORY_MB = 4096
"""Address-space limit of each attack process ``validate`` runs."""


def _conformance_grid(attack, defense):
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
    defaults = ATTACKS.get(name).defaults
    attack = PluginSpec(name, tuple(sorted((k, v) for k, v in SMALL_SURROGATE.items() if k in defaults)))
    defense = PluginSpec("none", ())
    grid = _conformance_grid(attack, defense)
    service = ServiceConfig(latency_visible=ATTACKS.get(name).requires_latency)
    rows = [run_cell(zoo, grid, Cell("rank:1", attack, defense, CONFORMANCE_BUDGET, 0, service),
                     timeout_s=VALIDATE_TIMEOUT_S, memory_mb=VALIDATE_MEMORY_MB) for _ in range(2)]
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
        row = run_cell(zoo, grid, cell, timeout_s=VALIDATE_TIMEOUT_S, memory_mb=VALIDATE_MEMORY_MB)
        checks.append(Check(f"{label}: a naive attack completes a cell (goodput {row['goodput']:.3f})",
                            row["status"] == "ok", row["error"]))
    return checks
