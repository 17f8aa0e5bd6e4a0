"""Grids of cells: config, the per-cell protocol, the result cache and local parallelism.

A cell is one (zoo, victim, attack, defense, budget, seed). Its key is a content hash of all
that determines its result (zoo card, latency profile, plugin names, versions, source hashes
and parameters, budget, seed, benign workload size, protocol version). Each finished cell is
written at once, atomically, to ``<out>/cells/<key>.json``; a later run with the same key
reuses it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _scoring as scoring
from ._config import content_hash, read_toml, resolve_config, validate, write_atomic
from ._errors import BudgetExhausted, ConfigError, PsmlError
from ._extraction import STRATEGIES
from ._plugins import ATTACKS, DEFENSES, Attack, Defense, make_attack, make_defense
from ._isolation import AttackFailed, AttackLocator, run_attack
from ._submissions import defense_flags, grid_entries, load_submissions, surrogate_flags
from ._serving import POLICIES, Knowledge, Server
from ._executor import CELL_THREADS, CellTask, Executor, InlineExecutor, LocalExecutor, RayExecutor
from ._leaderboard import write_leaderboard
from ._zoo import Zoo, open_zoo

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2

SURROGATE_METRICS = ("fidelity", "accuracy", "accuracy_norm", "kl", "l1")
COST_METRICS = ("goodput", "benign_accuracy_drop", "perturbation", "latency_overhead")
METRICS = SURROGATE_METRICS + ("queries", "fingerprint_queries", "victim_hit_rate", "fingerprint_accuracy") \
    + COST_METRICS


@dataclass(frozen=True)
class PluginSpec:
    """A plugin name with fixed parameters, as a grid names it."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Block:
    """One part of a grid: the cross product of its lists is a set of cells."""

    name: str
    victims: tuple[str, ...]
    attacks: tuple[PluginSpec, ...]
    defenses: tuple[PluginSpec, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]

    def cells(self) -> list[Cell]:
        return [Cell(v, a, d, b, s) for v, a, d, b, s in itertools.product(
            self.victims, self.attacks, self.defenses, self.budgets, self.seeds)]


@dataclass(frozen=True)
class GridConfig:
    """A validated grid: the union of its blocks' cells, or the cross product of its lists.

    With ``blocks`` the top-level lists are the union of the blocks' lists (for display).
    """

    name: str
    zoo: str
    policy: str
    victims: tuple[str, ...]
    attacks: tuple[PluginSpec, ...]
    defenses: tuple[PluginSpec, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    benign_queries: int
    source: str
    blocks: tuple[Block, ...] = ()

    def parts(self) -> tuple[Block, ...]:
        """The grid's blocks; a grid built without them is one block of its lists."""
        return self.blocks or (Block("", self.victims, self.attacks, self.defenses, self.budgets, self.seeds),)

    def cells(self) -> list[Cell]:
        return list(dict.fromkeys(cell for block in self.parts() for cell in block.cells()))


@dataclass(frozen=True)
class Cell:
    victim: str
    attack: PluginSpec
    defense: PluginSpec
    budget: int
    seed: int


def _expand(entries: list[dict[str, Any]], registry, source: str, field_name: str) -> tuple[PluginSpec, ...]:
    specs = []
    for index, entry in enumerate(entries):
        try:
            plugin = registry.get(entry["name"])
        except PsmlError as exc:
            raise ConfigError(f"{source}: field '{field_name}.{index}.name': {exc}") from None
        sweep = entry.get("sweep", {})
        keys = sorted(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)):
            params = {**entry.get("params", {}), **dict(zip(keys, values))}
            try:
                plugin(**params)  # validates names and types now, not mid-run
            except PsmlError as exc:
                raise ConfigError(f"{source}: field '{field_name}.{index}': {exc}") from None
            specs.append(PluginSpec(entry["name"], tuple(sorted(params.items()))))
    return tuple(dict.fromkeys(specs))


def load_grid(name_or_path: str | Path) -> GridConfig:
    """Load and validate a grid config by shipped name or path; plugin names are checked too."""
    path = resolve_config("grids", name_or_path)
    raw = read_toml(path)
    validate(raw, "grid", str(path))
    policy = raw.get("policy", "infaas")
    try:
        POLICIES.get(policy)
    except PsmlError as exc:
        raise ConfigError(f"{path}: field 'policy': {exc}") from None
    load_submissions()  # registers every valid submission; invalid ones are logged and skipped
    blocks = _blocks(raw, str(path))
    union = lambda field: tuple(dict.fromkeys(x for block in blocks for x in getattr(block, field)))  # noqa: E731
    return GridConfig(
        name=raw["name"], zoo=raw["zoo"], policy=policy, victims=union("victims"),
        attacks=union("attacks"), defenses=union("defenses"), budgets=union("budgets"),
        seeds=tuple(raw["seeds"]), benign_queries=raw.get("benign_queries", 1000), source=str(path),
        blocks=blocks,
    )


def _blocks(raw: dict[str, Any], source: str) -> tuple[Block, ...]:
    """The grid's blocks (a grid without ``blocks`` is one block that every submission joins)."""
    if "blocks" not in raw:
        missing = [f for f in ("attacks", "defenses", "budgets") if f not in raw]
        if missing:
            raise ConfigError(f"{source}: a grid without 'blocks' needs the field(s) {', '.join(missing)}")
        entries = [{**raw, "name": "", "submissions": ["attack", "defense"]}]
    else:
        entries = raw["blocks"]
    submitted_attacks, submitted_defenses = grid_entries(raw["name"])
    blocks = []
    for index, entry in enumerate(entries):
        where = f"blocks.{index}." if "blocks" in raw else ""
        for field_name in ("victims", "budgets", "attacks", "defenses"):
            if field_name not in entry and field_name not in raw:
                raise ConfigError(f"{source}: field '{where}{field_name}' is missing (and has no grid-level default)")
        attack_entries, defense_entries = entry.get("attacks", raw.get("attacks")), entry.get("defenses", raw.get("defenses"))
        attacks = _expand(attack_entries, ATTACKS, source, f"{where}attacks")
        defenses = _expand(defense_entries, DEFENSES, source, f"{where}defenses")
        named = {e["name"] for e in attack_entries + defense_entries}
        joining = entry.get("submissions", [])
        if "attack" in joining:
            attacks += tuple(PluginSpec(n, tuple(sorted(p.items()))) for n, p in submitted_attacks if n not in named)
        if "defense" in joining:
            defenses += tuple(PluginSpec(n, tuple(sorted(p.items()))) for n, p in submitted_defenses if n not in named)
        blocks.append(Block(entry["name"], tuple(entry.get("victims", raw.get("victims"))),
                            tuple(dict.fromkeys(attacks)), tuple(dict.fromkeys(defenses)),
                            tuple(entry.get("budgets", raw.get("budgets"))), tuple(raw["seeds"])))
    return tuple(blocks)


def _plugin_identity(registry, spec: PluginSpec) -> dict[str, Any]:
    cls = registry.get(spec.name)
    identity = {"name": spec.name, "version": cls.version, "source_sha256": cls.source_hash(), "params": spec.kwargs}
    if "strategy" in cls.defaults:  # the extraction strategy is code the attack runs: its source counts too
        strategy = STRATEGIES.get({**cls.defaults, **spec.kwargs}["strategy"])
        identity["strategy"] = {"version": strategy.version, "source_sha256": strategy.source_hash()}
    return identity


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


def cell_key(zoo: Zoo, grid: GridConfig, cell: Cell) -> str:
    """Content hash of everything that determines the cell's result."""
    return content_hash({
        "protocol": PROTOCOL_VERSION, "zoo": zoo_identity(zoo), "menu": [e.__dict__ for e in zoo.menu],
        "policy": grid.policy, "victim": cell.victim,
        "attack": _plugin_identity(ATTACKS, cell.attack), "defense": _plugin_identity(DEFENSES, cell.defense),
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
    """Versions and machine that produced a result."""
    import timm

    from . import __version__

    return {"psml_bench": __version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "timm": timm.__version__, "device": f"cpu ({platform.machine()})",
            "threads": str(CELL_THREADS)}


def _benign_workload(zoo: Zoo, grid: GridConfig, seed: int, defense: Defense
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
        zoo, grid, cell.seed, DEFENSES.get(cell.defense.name)(**cell.defense.kwargs))
    key = (str(zoo.directory), zoo.profile_name, grid.policy, grid.benign_queries, cell.seed)
    if key not in _UNDEFENDED:  # the same for every cell of a seed; a worker computes it once
        _UNDEFENDED[key] = _benign_workload(zoo, grid, cell.seed, DEFENSES.get("none")())
    _, undefended_latency, undefended_accuracy, _ = _UNDEFENDED[key]
    return {"goodput": scoring.goodput(meets_spec),
            "benign_accuracy_drop": undefended_accuracy - defended_accuracy, "perturbation": perturbation,
            "latency_overhead": scoring.latency_overhead(defended_latency, undefended_latency)}


def _row_identity(zoo: Zoo, cell: Cell, attack_label: str, defense_label: str) -> dict[str, Any]:
    return {"zoo": zoo.name, "victim": cell.victim, "victim_model": zoo.role(cell.victim),
            "attack": attack_label, "attack_access": ATTACKS.get(cell.attack.name).access,
            "defense": defense_label, "budget": cell.budget, "seed": cell.seed,
            "status": "ok", "error": ""}


def failed_row(zoo: Zoo, task: CellTask, error: str) -> dict[str, Any]:
    """The row of a cell whose worker produced none (timeout, crash, memory)."""
    cell = task.cell
    row = _row_identity(zoo, cell, make_attack(cell.attack.name, cell.attack.kwargs).label,
                        make_defense(cell.defense.name, cell.defense.kwargs).label)
    row.update(status="failed", error=error, wall_s=float("nan"),
               **dict.fromkeys(METRICS, float("nan")))
    return finish_row(row, zoo, task)


def finish_row(row: dict[str, Any], zoo: Zoo, task: CellTask) -> dict[str, Any]:
    """Add the cell key, the routing profile, the grid name and provenance to a row."""
    return {**row, "cell_key": task.key, "profile": zoo.profile_name, "grid": task.grid.name, **provenance()}


def attack_locator(spec: PluginSpec) -> AttackLocator:
    """Where the attack process finds the attack of ``spec``: a registry name or a submission folder."""
    cls = ATTACKS.get(spec.name)
    folder = getattr(cls, "submission_folder", None)
    if folder is not None:
        return AttackLocator(spec.name, tuple(sorted({**cls.defaults, **spec.kwargs}.items())),
                             submission=str(folder), entry=cls.submission_entry, imports=cls.submission_imports)
    return AttackLocator(spec.name, spec.params)


def run_cell(zoo: Zoo, grid: GridConfig, cell: Cell) -> dict[str, Any]:
    """Run one cell and score it; a failing plugin gives a failed row, never an exception."""
    started = time.perf_counter()
    load_submissions()  # a fresh worker process registers them too
    victim_id = zoo.role(cell.victim)
    attack: Attack = ATTACKS.get(cell.attack.name)(**cell.attack.kwargs)
    defense: Defense = DEFENSES.get(cell.defense.name)(**cell.defense.kwargs)
    server = Server(zoo, defense=defense, rng=np.random.default_rng([cell.seed, 2]), budget=cell.budget,
                    model_ids=[victim_id] if attack.access == "victim" else None, policy=grid.policy)
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=zoo.splits["attacker_x"], role=cell.victim)
    row = _row_identity(zoo, cell, attack.label, defense.label)
    metrics = dict.fromkeys(SURROGATE_METRICS, float("nan"))
    flags = _defense_flags(zoo, grid, cell)
    try:
        surrogate = run_attack(server, attack_locator(cell.attack), knowledge, cell.budget,
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


@dataclass
class RunSummary:
    rows: list[dict[str, Any]]
    cached: int
    computed: int
    failed: int
    seconds: float
    out_dir: Path


def make_executor(name: str, *, jobs: int = 0, timeout_s: float | None = None, memory_mb: int | None = None,
                  address: str | None = None) -> Executor:
    """An executor by name: ``local`` (process pool), ``ray`` or ``inline`` (this process, for debugging)."""
    if jobs <= 0:
        jobs = os.cpu_count() or 1
    if name == "local":
        return LocalExecutor(jobs, timeout_s, memory_mb)
    if name == "ray":
        return RayExecutor(address, timeout_s, num_cpus=jobs)
    if name == "inline":
        return InlineExecutor()
    raise ConfigError(f"unknown executor '{name}'; available: inline, local, ray")


def run_grid(grid: GridConfig, out_dir: Path, *, cache_dir: Path | None = None, executor: Executor | None = None,
             progress: bool = True, profile: Path | None = None, retry_failed: bool = False) -> RunSummary:
    """Run every cell of ``grid`` not already in ``out_dir/cells``; return all rows of the grid.

    Each finished cell is written at once (atomically) by this process, so an interrupted run
    keeps every cell that finished. ``retry_failed`` recomputes cells whose stored row failed.
    """
    started = time.perf_counter()
    executor = executor or make_executor("local")
    zoo = open_zoo(grid.zoo, cache_dir, progress=progress, profile=profile)
    for victim in grid.victims:
        zoo.role(victim)  # a bad role fails before any work
    cells_dir = out_dir / "cells"
    rows: dict[str, dict[str, Any]] = {}
    tasks = []
    profile_arg = str(profile) if profile else None
    identity = zoo_identity(zoo)
    for cell in grid.cells():
        key = cell_key(zoo, grid, cell)
        path = cells_dir / f"{key}.json"
        if path.is_file():
            try:
                row = json.loads(path.read_text())
                if not (retry_failed and row.get("status") != "ok"):
                    rows[key] = row
                    continue
            except json.JSONDecodeError:
                log.warning("ignoring unreadable cell file %s", path)
        tasks.append(CellTask(str(zoo.directory), profile_arg, identity, grid, cell, key))
    cached = len(rows)
    bar = tqdm(total=len(tasks), desc=f"grid {grid.name}", disable=not progress, unit="cell")
    counts = {"failed": 0}
    bar.set_postfix(cached=cached, failed=0)

    def on_result(task: CellTask, row: dict[str, Any] | None, error: str) -> None:
        row = row if row is not None else failed_row(zoo, task, error)
        write_atomic(cells_dir / f"{task.key}.json", json.dumps(row, indent=1, sort_keys=True) + "\n")
        rows[task.key] = row
        counts["failed"] += row["status"] != "ok"
        bar.set_postfix(cached=cached, failed=counts["failed"])
        bar.update()

    executor.map(tasks, on_result)
    bar.close()
    ordered = sorted(rows.values(), key=_row_order)
    write_leaderboard(ordered, zoo, grid, out_dir)
    failed = sum(r["status"] != "ok" for r in ordered)
    return RunSummary(ordered, cached, len(tasks), failed, time.perf_counter() - started, out_dir)


def _row_order(row: dict[str, Any]) -> tuple:
    return (row["zoo"], row["victim"], row["attack"], row["defense"], int(row["budget"]), int(row["seed"]))
