"""The cell protocol: what a cell's key hashes, how one cell runs and is scored, and the row it gives.

A cell is one (zoo, victim, attack, defense, budget, seed). Its key is a content hash of all that
determines its result (zoo identity, routing menu, plugin identities, budget, seed, benign
workload size, :data:`PROTOCOL_VERSION`). :func:`execute` runs a :class:`CellTask` in the current
process (an executor's worker) and returns the cell's row.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _scoring as scoring
from ._config import content_hash
from ._errors import AttackFailed, BudgetExhausted, ExecutorError
from ._grid import Cell, GridConfig
from ._isolation import AttackLocator, run_attack
from ._manifests import load_submissions
from ._registries import DEFENSES
from ._sanity import defense_flags, surrogate_flags
from ._serving import Knowledge, Server
from ._version import __version__
from ._zoo import Zoo

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2

SURROGATE_METRICS = ("fidelity", "accuracy", "accuracy_norm", "kl", "l1")
COST_METRICS = ("goodput", "benign_accuracy_drop", "perturbation", "latency_overhead")
METRICS = SURROGATE_METRICS + ("queries", "fingerprint_queries", "victim_hit_rate", "fingerprint_accuracy") \
    + COST_METRICS

# Every cell runs on one thread, whatever the executor: float reductions then happen in the same
# order everywhere, so a cell's numbers do not depend on how the grid was parallelised.
CELL_THREADS = 1


def zoo_identity(zoo: Zoo) -> str:
    """Hash of what in a zoo card determines results: splits, preprocessing, each model's weights.

    Build-time measurements that routing does not use (timestamps, latency measured at build, train
    times) are left out, so a rebuild that reproduces the weights reuses every cached cell.
    """
    card = zoo.card
    return content_hash({
        "zoo": card["zoo"], "config_hash": card["config_hash"], "splits": card["splits"],
        "input_shape": card["input_shape"], "num_classes": card["num_classes"], "preprocess": card["preprocess"],
        "models": [{k: m[k] for k in ("id", "arch", "kwargs", "accuracy", "weights_sha256")} for m in card["models"]],
    })


def cell_key(zoo: Zoo, grid: GridConfig, cell: Cell, identity: str | None = None) -> str:
    """Content hash of everything that determines the cell's result (``identity``: the zoo's, if known)."""
    return content_hash({
        "protocol": PROTOCOL_VERSION, "zoo": identity or zoo_identity(zoo), "menu": [e.__dict__ for e in zoo.menu],
        "policy": grid.policy, "victim": cell.victim,
        "attack": cell.attack_plugin.identity, "defense": cell.defense_plugin.identity,
        "budget": cell.budget, "seed": cell.seed, "benign_queries": grid.benign_queries,
    })[:32]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance() -> dict[str, str]:
    """Versions and machine that produce a run's results (computed once per run, by the driver)."""
    import timm

    return {"psml_bench": __version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "timm": timm.__version__, "device": f"cpu ({platform.machine()})",
            "threads": str(CELL_THREADS)}


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to run one cell."""

    zoo_dir: str
    profile: str | None
    zoo_identity: str
    grid: GridConfig
    cell: Cell
    key: str
    provenance: dict[str, str]


def _benign_workload(zoo: Zoo, grid: GridConfig, seed: int, defense: Any
                     ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Send the seeded benign workload to ``defense``'s service.

    Returns, per query, whether the served model meets the client's spec and its profile latency,
    then the answers' top-1 accuracy and their perturbation by ``postprocess``.
    """
    server = Server(zoo, defense=defense, rng=np.random.default_rng([seed, 4]), policy=grid.policy)
    accuracies = np.array([e.accuracy for e in server.menu])
    latencies = np.array([e.latency_ms for e in server.menu])
    specs = scoring.benign_specs(accuracies, latencies, server.spec_range, grid.benign_queries,
                                 np.random.default_rng([seed, 3]))
    rows = torch.arange(len(specs)) % len(zoo.splits["test_x"])
    answers, raw = server.query(zoo.splits["test_x"][rows], specs, purpose="benign", with_raw=True)
    labels = zoo.splits["test_y"][rows].numpy()
    return (np.concatenate(server.log.meets_spec), latencies[server.log.served_ids()],
            scoring.accuracy(answers.argmax(1).numpy(), labels), scoring.l1_distance(answers, raw))


_UNDEFENDED: dict[tuple, tuple[np.ndarray, np.ndarray, float, float]] = {}


def defense_cost(zoo: Zoo, grid: GridConfig, cell: Cell) -> dict[str, float]:
    """What the cell's defense costs benign clients, from a fixed seeded workload.

    The workload is ``benign_queries`` specs feasible without any defense, each sent with a
    test-split input (its label is known, so answer accuracy can be measured), once to the
    defended service and once to the undefended one. Returns ``goodput``, ``benign_accuracy_drop``
    (top-1 accuracy of the answers, undefended minus defended), ``perturbation`` (mean halved
    L1 between the answers and the served models' own outputs) and ``latency_overhead`` (relative
    increase of the served models' mean profile latency).
    """
    meets_spec, defended_latency, defended_accuracy, perturbation = _benign_workload(
        zoo, grid, cell.seed, cell.defense_plugin.instantiate())
    key = (str(zoo.directory), zoo.profile_name, grid.policy, grid.benign_queries, cell.seed)
    if key not in _UNDEFENDED:  # the same for every cell of a seed; a worker computes it once
        _UNDEFENDED[key] = _benign_workload(zoo, grid, cell.seed, DEFENSES.get("none")())
    _, undefended_latency, undefended_accuracy, _ = _UNDEFENDED[key]
    return {"goodput": scoring.goodput(meets_spec),
            "benign_accuracy_drop": undefended_accuracy - defended_accuracy, "perturbation": perturbation,
            "latency_overhead": scoring.latency_overhead(defended_latency, undefended_latency)}


def row_identity(zoo: Zoo, cell: Cell) -> dict[str, Any]:
    """The columns that say which cell a row is, from the cell's resolved plugins."""
    attack, defense = cell.attack_plugin, cell.defense_plugin
    return {"zoo": zoo.name, "victim": cell.victim, "victim_model": zoo.role(cell.victim),
            "attack": attack.label, "attack_access": attack.access, "defense": defense.label,
            "budget": cell.budget, "seed": cell.seed, "status": "ok", "error": ""}


def failed_row(zoo: Zoo, task: CellTask, error: str) -> dict[str, Any]:
    """The row of a cell whose worker produced none (timeout, crash, memory)."""
    row = row_identity(zoo, task.cell)
    row.update(status="failed", error=error, wall_s=float("nan"), **dict.fromkeys(METRICS, float("nan")))
    return finish_row(row, zoo, task)


def finish_row(row: dict[str, Any], zoo: Zoo, task: CellTask) -> dict[str, Any]:
    """Add the cell key, the routing profile, the grid name and provenance to a row."""
    return {**row, "cell_key": task.key, "profile": zoo.profile_name, "grid": task.grid.name, **task.provenance}


def attack_locator(cell: Cell) -> AttackLocator:
    """Where the attack process finds the cell's attack: a registry name or a submission folder."""
    cls = cell.attack_plugin.cls
    folder = getattr(cls, "submission_folder", None)
    if folder is not None:
        return AttackLocator(cell.attack.name, tuple(sorted({**cls.defaults, **cell.attack.kwargs}.items())),
                             submission=str(folder), entry=cls.submission_entry, imports=cls.submission_imports)
    return AttackLocator(cell.attack.name, cell.attack.params)


def run_cell(zoo: Zoo, grid: GridConfig, cell: Cell) -> dict[str, Any]:
    """Run one cell and score it; a failing plugin gives a failed row, never an exception."""
    started = time.perf_counter()
    load_submissions()  # a fresh worker process registers them too
    victim_id = zoo.role(cell.victim)
    defense = cell.defense_plugin.instantiate()
    server = Server(zoo, defense=defense, rng=np.random.default_rng([cell.seed, 2]), budget=cell.budget,
                    model_ids=[victim_id] if cell.attack_plugin.access == "victim" else None, policy=grid.policy)
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=zoo.splits["attacker_x"], role=cell.victim)
    row = row_identity(zoo, cell)
    metrics = dict.fromkeys(SURROGATE_METRICS, float("nan"))
    flags = _defense_flags(zoo, grid, cell)
    try:
        surrogate = run_attack(server, attack_locator(cell), knowledge, cell.budget,
                               np.random.default_rng([cell.seed, 1]))
        test_x, test_y = zoo.splits["test_x"], zoo.splits["test_y"].numpy()
        probabilities = scoring.predict_probs(surrogate, test_x, zoo.num_classes)
        predicted = probabilities.argmax(1).numpy()
        victim_probs = zoo.test_predictions[victim_id]
        surrogate_accuracy = scoring.accuracy(predicted, test_y)
        metrics = {"fidelity": scoring.fidelity(predicted, victim_probs.argmax(1).numpy()),
                   "accuracy": surrogate_accuracy,
                   "accuracy_norm": scoring.accuracy_norm(surrogate_accuracy, zoo.entry(victim_id).accuracy),
                   "kl": scoring.kl_divergence(victim_probs, probabilities),
                   "l1": scoring.l1_distance(victim_probs, probabilities)}
        flags += surrogate_flags(zoo, victim_id, surrogate, metrics["fidelity"])
    except AttackFailed as exc:
        row.update(status="failed", error=str(exc))
    except BudgetExhausted as exc:
        row.update(status="failed", error=f"budget overrun: {exc}")
    except Exception as exc:  # noqa: BLE001 - a plugin crash fails its cell, not the grid
        log.debug("cell failed", exc_info=True)
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    try:
        costs = defense_cost(zoo, grid, cell)
    except Exception as exc:  # noqa: BLE001 - a defense crash fails its cell, not the grid
        log.debug("benign workload failed", exc_info=True)
        costs = dict.fromkeys(COST_METRICS, float("nan"))
        if row["status"] == "ok":
            row.update(status="failed", error=f"defense failed on the benign workload: {type(exc).__name__}: {exc}")
    victim_index = [e.id for e in server.menu].index(victim_id)
    row.update(metrics)
    row.update({
        "queries": server.used, "fingerprint_queries": server.log.count("fingerprint"),
        "victim_hit_rate": scoring.victim_hit_rate(server.log.served_ids("extract"), victim_index),
        "fingerprint_accuracy": scoring.fingerprint_accuracy(server.log.requested_ids("extract"), victim_index),
        **costs,
        "flags": "; ".join(flags),
        "wall_s": round(time.perf_counter() - started, 2),
    })
    return row


def _defense_flags(zoo: Zoo, grid: GridConfig, cell: Cell) -> list[str]:
    """The defense's sanity flags; a defense that crashes on the probe fails in the cell itself."""
    try:
        return defense_flags(zoo, grid, cell)
    except Exception:  # noqa: BLE001
        log.debug("defense probe failed", exc_info=True)
        return []


_ZOOS: dict[tuple[str, str | None], tuple[Zoo, str]] = {}


def execute(task: CellTask) -> dict[str, Any]:
    """Run one cell in this process (an executor's worker) on one thread; return its row.

    Raises:
        ExecutorError: the zoo this worker opened differs from the driver's.
    """
    opened = _ZOOS.get((task.zoo_dir, task.profile))
    if opened is None:
        zoo = Zoo(Path(task.zoo_dir), Path(task.profile) if task.profile else None)
        opened = _ZOOS[(task.zoo_dir, task.profile)] = (zoo, zoo_identity(zoo))
    zoo, identity = opened
    if identity != task.zoo_identity:
        raise ExecutorError(f"the zoo at {task.zoo_dir} on this worker differs from the driver's "
                            "(different weights); share the zoo cache between nodes")
    threads = torch.get_num_threads()
    torch.set_num_threads(CELL_THREADS)
    try:
        return finish_row(run_cell(zoo, task.grid, task.cell), zoo, task)
    finally:
        torch.set_num_threads(threads)
