"""Conformance tests every plugin passes (``psml-bench validate`` and the built-ins' tests)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cell import run_cell
from ..contract.errors import DefenseError, ManifestError, PsmlError
from .grid import Cell, GridConfig, PluginSpec
from .row import CellRow
from ..isolation.jailed_defense import SubmittedDefense
from ..plugins.derived import parameter_differences
from ..plugins.manifests import MANIFEST, load_manifest, name_clashes
from ..plugins.registration import register
from ..contract.registries import ATTACKS, DEFENSES
from ..serving.config import ServiceConfig
from .sanity import defense_flags
from ..zoo.model_zoo import Zoo
from ..zoo.build import open_zoo


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
CONFORMANCE_BUDGET = 200
"""Queries per conformance cell: enough for a fingerprinting attack to fingerprint the tiny zoo and
still extract (on rank:2 psml spends 46 queries fingerprinting, psml-adaptive 73)."""
VALIDATE_TIMEOUT_S = 600.0
"""Wall-clock limit of each attack process ``validate`` runs (its sandbox ends with every child at the limit)."""
VALIDATE_MEMORY_MB = 4096
"""Address-space limit of each attack process ``validate`` runs."""
GLOBAL_SEEDS = (11, 12)
"""The two runs of an attack reseed the attack process's global generators (``random``, numpy's
and torch's) differently: an attack whose result depends on global random state gives two results."""
DETERMINISM_CALLS = 10
"""Identical calls the defense probe of ``validate`` makes (a leaderboard cell's probe makes two): a
defense that claims determinism must answer every one like the first."""
SAME_SURROGATE = ("queries", "fingerprint_queries", "victim_hit_rate", "fingerprint_accuracy", "fidelity",
                  "accuracy", "kl", "l1")
"""Row fields that must agree between two runs with the same seed: the same queries reach the same
models, and the surrogates give the same probabilities on the test split (KL and L1 to the victim)."""


def _conformance_grid(attack, defense, victims=("rank:1",)):
    return GridConfig(name="validate", zoo=CONFORMANCE_ZOO, policy="infaas", victims=tuple(victims),
                      attacks=(attack,), defenses=(defense,), budgets=(CONFORMANCE_BUDGET,), seeds=(0,),
                      benign_queries=100, source="psml-bench validate")


def validate_submission(path: Path | str, *, cache_dir: Path | None = None, run: bool = True,
                        progress: bool = False) -> Validation:
    """Check the submission at ``path``, import it, and run the conformance tests on ``fmnist-tiny``.

    Every manifest problem is reported at once, with any clash of its name with another
    submission folder (of ``$PSML_BENCH_SUBMISSIONS`` or ``submissions/``) or a built-in. Its class,
    read in the sandbox, must have the manifest's parameters (:func:`parameters_check`). An
    attack is imported only in the isolated attack process: it runs against the undefended tiny
    zoo for every victim role, twice per role (see :func:`attack_conformance`); a strategy passes
    the same checks as the ``strategy`` of the built-in ``naive`` attack. A submitted defense runs in
    its sandboxed defense process: it must agree with its manifest, instantiate at its defaults and every sweep
    value, answer with probability vectors, keep its determinism claim, and let the ``naive``
    attack complete a cell.
    """
    path = Path(path)
    folder = path.parent if path.name == MANIFEST else path
    result = Validation(folder)
    manifest = None
    try:
        manifest = load_manifest(folder)
    except ManifestError as exc:
        result.manifest_errors = list(exc.errors)
    result.manifest_errors += name_clashes(folder)
    if manifest is None or result.manifest_errors:
        return result
    try:
        register(manifest)
        result.checks.append(Check("registers", True))
    except ManifestError as exc:
        result.manifest_errors = list(exc.errors)
        return result
    except PsmlError as exc:
        result.checks.append(Check("registers", False, str(exc)))
        return result
    if not run:
        return result
    result.checks.append(parameters_check(folder))
    if not result.checks[-1].ok:
        return result
    zoo = open_zoo(CONFORMANCE_ZOO, cache_dir, progress=progress)
    if manifest.kind == "attack":
        result.checks += attack_conformance(zoo, manifest.name)
    elif manifest.kind == "strategy":
        result.checks += attack_conformance(zoo, STRATEGY_HOST, params={"strategy": manifest.name})
    else:
        values = [{manifest.sweep[0]: v} for v in manifest.sweep[1]] if manifest.sweep else []
        result.checks += defense_conformance(zoo, manifest.name, values)
    return result


def parameters_check(folder: Path) -> Check:
    """Whether the manifest's parameters are those derived from the class (read in the sandbox; descriptions
    aside): what ``validate --write-parameters`` would write (:mod:`psml_bench.plugins.derived`)."""
    try:
        cls, changes = parameter_differences(folder, VALIDATE_TIMEOUT_S, VALIDATE_MEMORY_MB)
    except PsmlError as exc:
        return Check("the manifest's parameters are the class's", False, str(exc))
    fix = f"; `psml-bench validate --write-parameters {folder}` writes them from the class" if changes else ""
    return Check(f"the manifest's parameters are class {cls}'s", not changes, "; ".join(changes) + fix)


SMALL_SURROGATE = {"min_steps": 20, "epochs": 1}
STRATEGY_HOST = "naive"
"""The built-in attack a submitted strategy is validated in (as its ``strategy`` parameter): every
query it sends is the strategy's."""


def victim_roles(zoo: Zoo) -> list[str]:
    """Every victim role of ``zoo``: ``rank:1`` to ``rank:k`` for its k frontier models."""
    return [f"rank:{k}" for k in range(1, len(zoo.frontier) + 1)]


def attack_conformance(zoo: Zoo, name: str, victims: list[str] | None = None,
                       params: dict[str, Any] | None = None) -> list[Check]:
    """The checks every attack passes: for each victim role (default :func:`victim_roles`), one cell
    against the undefended tiny zoo, run twice with the same seed and differently seeded global
    generators. Each run must return a surrogate within the budget and raise no sanity flag; the
    two runs must send the same queries, get the same answers (a hash of every query and answer)
    and agree on every field of :data:`SAME_SURROGATE`. The first role whose run fails
    ends the checks. ``params``: the attack's parameters besides a small surrogate (e.g. a strategy)."""
    defaults = ATTACKS.get(name).defaults
    small = {k: v for k, v in SMALL_SURROGATE.items() if k in defaults}
    attack = PluginSpec(name, tuple(sorted({**small, **(params or {})}.items())))
    defense = PluginSpec("none", ())
    service = ServiceConfig(latency_visible=ATTACKS.get(name).requires_latency)
    checks = []
    for victim in victims or victim_roles(zoo):
        grid = _conformance_grid(attack, defense, (victim,))
        cell = Cell(victim, attack, defense, CONFORMANCE_BUDGET, 0, service)
        transcripts = [hashlib.sha256(), hashlib.sha256()]
        first = run_cell(zoo, grid, cell, global_seed=GLOBAL_SEEDS[0], transcript=transcripts[0],
                         timeout_s=VALIDATE_TIMEOUT_S, memory_mb=VALIDATE_MEMORY_MB)
        second = first
        if first.status == "ok":
            second = run_cell(zoo, grid, cell, global_seed=GLOBAL_SEEDS[1], transcript=transcripts[1],
                              timeout_s=VALIDATE_TIMEOUT_S, memory_mb=VALIDATE_MEMORY_MB)
        failed = next((row for row in (first, second) if row.status != "ok"), None)
        checks.append(Check(f"{victim}: runs in the isolated attack process and returns a Surrogate",
                            failed is None, failed.error if failed else ""))
        if failed is not None:
            break  # the other roles would fail the same way
        checks.append(Check(f"{victim}: stays within its budget ({CONFORMANCE_BUDGET} queries)",
                            first.queries <= CONFORMANCE_BUDGET,
                            f"{first.queries} queries, {first.fingerprint_queries} to fingerprint"))
        differ = [f"{k} {getattr(first, k)} then {getattr(second, k)}" for k in SAME_SURROGATE
                  if not _same(getattr(first, k), getattr(second, k))]
        if transcripts[0].digest() != transcripts[1].digest():
            differ.insert(0, "the two runs sent different queries or got different answers")
        checks.append(Check(f"{victim}: same seed gives the same queries and the same surrogate", not differ,
                            "; ".join(differ) + (" (does it draw from global random state, e.g. np.random.* or "
                                                 "torch.rand* without a generator? use the rng argument)"
                                                 if differ else "")))
        checks.append(Check(f"{victim}: no sanity flag", not first.flags, first.flags or ""))
    return checks


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def defense_conformance(zoo: Zoo, name: str, sweep: list[dict[str, Any]]) -> list[Check]:
    """The checks every defense passes, at its defaults and every ``sweep`` setting."""
    cls = DEFENSES.get(name)
    values = [{}] + list(sweep)
    for params in values:
        try:
            defense = cls(**params)
            if isinstance(defense, SubmittedDefense):
                defense.start()  # imports and builds it in its defense process, checked against the manifest
        except Exception as exc:  # noqa: BLE001
            detail = str(exc) if isinstance(exc, DefenseError) else f"{type(exc).__name__}: {exc}"
            return [Check(f"instantiates with {params or 'its defaults'}", False, detail)]
    checks = [Check("instantiates at its defaults and every sweep value", True)]
    attack = PluginSpec("naive", tuple(sorted(SMALL_SURROGATE.items())))
    undefended = PluginSpec("none", ())
    baseline = run_cell(zoo, _conformance_grid(attack, undefended), Cell("rank:1", attack, undefended,
                                                                         CONFORMANCE_BUDGET, 0))
    for params in values:
        defense = PluginSpec(name, tuple(sorted(params.items())))
        grid = _conformance_grid(attack, defense)
        cell = Cell("rank:1", attack, defense, CONFORMANCE_BUDGET, 0)
        label = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        try:
            flags = defense_flags(zoo, grid, cell, calls=DETERMINISM_CALLS)
        except Exception as exc:  # noqa: BLE001
            detail = str(exc) if isinstance(exc, DefenseError) else f"{type(exc).__name__}: {exc}"
            checks.append(Check(f"{label}: answers queries", False, detail))
            continue
        checks.append(Check(f"{label}: probability vectors, determinism as claimed over {DETERMINISM_CALLS} calls",
                            not flags, "; ".join(flags)))
        row = run_cell(zoo, grid, cell, timeout_s=VALIDATE_TIMEOUT_S, memory_mb=VALIDATE_MEMORY_MB)
        checks.append(Check(f"{label}: a naive attack completes a cell", row.status == "ok",
                            row.error if row.status != "ok" else cost_summary(row, baseline)))
    return checks


def cost_summary(row: CellRow, baseline: CellRow) -> str:
    """What a defense cost the benign clients of a conformance cell, beside the same cell undefended."""
    detected = "detected" if row.detected == 1 else "not detected"
    return (f"goodput {row.goodput:.3f} (undefended {baseline.goodput:.3f}), benign requests refused "
            f"{row.refused_benign:.3f}, false-positive benign clients {row.false_positive_clients:.3f}, "
            f"benign accuracy drop {row.benign_accuracy_drop:.3f}; the naive attacker {detected}")
