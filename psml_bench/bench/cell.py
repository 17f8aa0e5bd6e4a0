"""The cell protocol: what a cell's key hashes, how one cell runs and is scored, and the row it gives.

A cell is one (zoo, victim, attack, defense, budget, seed, service load and clients). Its key is a
content hash of all that determines its result (zoo identity, routing menu, batch service times, plugin identities,
budget, seed, service parameters, benign workload size, :data:`PROTOCOL_VERSION`). The attack runs
against the cell's :class:`~psml_bench.serving.service.SimulatedService`, beside its benign clients. :func:`execute`
runs a :class:`CellTask` in the current process (an executor's worker) and returns the cell's row
(a :class:`~psml_bench.bench.row.CellRow`).
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..common import metrics as scoring
from ..common.files import content_hash
from ..common.device import device_label, intra_op_threads, key_part, make_deterministic
from ..contract.errors import AttackFailed, BudgetExhausted, ExecutorError
from .context import RunContext, default_context
from .grid import Cell, GridConfig, ResolvedPlugin, threat_attack_label
from .ownership import ownership_queries
from .row import CellRow
from ..isolation.attack_process import PluginLocator, run_attack
from ..contract.registries import STRATEGIES
from .sanity import defense_flags, surrogate_flags
from ..serving.eval_guard import EvalInputGuard
from ..serving.service import SimulatedService, service_times
from ..contract.target import Knowledge
from ..extraction.surrogate import Surrogate, weights_digest
from .._version import PROTOCOL_VERSION, __version__
from ..zoo.attacker_data import IN_DISTRIBUTION, attacker_pool
from ..zoo.model_zoo import Zoo

log = logging.getLogger(__name__)

SURROGATE_METRICS = ("fidelity", "accuracy", "accuracy_norm", "kl", "l1")
ATTACK_METRICS = ("queries", "fingerprint_queries", "victim_hit_rate", "fingerprint_accuracy", "detected",
                  "queries_to_detection", "eval_queries", "attacker_time_s", "attacker_work_s")
COST_METRICS = ("goodput", "spec_goodput", "latency_p50_ms", "latency_p99_ms", "refused_benign", "dropped_benign",
                "false_positive_clients", "benign_accuracy_drop", "perturbation", "latency_overhead",
                "benign_requests", "benign_repeats")
OWNERSHIP_METRICS = ("watermark_pairs", "watermark_agreement", "ownership_queries", "ownership_claimed",
                     "innocent_claims", "innocent_agreement")
METRICS = SURROGATE_METRICS + ATTACK_METRICS + COST_METRICS + OWNERSHIP_METRICS


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


def cell_key(zoo: Zoo, grid: GridConfig, cell: Cell, identity: str | None = None,
             device: torch.device | str = "cpu") -> str:
    """Content hash of everything that determines the cell's result (``identity``: the zoo's, if known).

    A cell on another device than the CPU has its device type in the key (its floats round
    differently); a CPU cell's key has no device, as before devices were an option. The menu's
    routing latencies and each model's batch service time (:func:`service_times`, from the profile's
    batch fits) are in the key: re-measuring or editing a profile recomputes the cells it changes.
    """
    intercept, slope = service_times(zoo)
    hashed = {
        "protocol": PROTOCOL_VERSION, "zoo": identity or zoo_identity(zoo), "menu": [e.__dict__ for e in zoo.menu],
        "service_times": [[float(a), float(s)] for a, s in zip(intercept, slope)],
        "policy": grid.policy, "victim": cell.victim,
        "attack": cell.attack_plugin.identity, "defense": cell.defense_plugin.identity,
        "budget": cell.budget, "seed": cell.seed, "benign_queries": grid.benign_queries,
        "service": cell.service.as_dict(),
    }
    if cell.attacker_data != IN_DISTRIBUTION:  # absent at the default, so every key made before it stands
        hashed["attacker_data"] = cell.attacker_data
    if cell.attacker_identities != 1:
        hashed["attacker_identities"] = cell.attacker_identities
    if key_part(device) is not None:
        hashed["device"] = key_part(device)
    return content_hash(hashed)[:32]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(device: torch.device | str = "cpu") -> dict[str, str]:
    """Versions and machine that produce a run's results (computed once per run, by the driver)."""
    import timm

    return {"psml_bench": __version__, "protocol": str(PROTOCOL_VERSION), "git_commit": _git_commit(),
            "torch": torch.__version__,
            "timm": timm.__version__, "device": device_label(device), "threads": str(CELL_THREADS)}


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
    device: str = "cpu"


def service_costs(zoo: Zoo, service: SimulatedService) -> dict[str, float]:
    """What the cell's defense cost its benign clients, from every benign request of the cell.

    ``goodput``: share of benign requests answered by a model meeting the client's accuracy floor
    within the client's latency bound end to end (queueing, batching and service included);
    ``spec_goodput``: share answered by a model meeting the spec by its routing latency alone (the
    protocol-2 figure); ``latency_p50_ms``/``latency_p99_ms``: end-to-end latency of the answered
    ones; ``refused_benign`` (by the defense); ``dropped_benign`` (timed out in an overloaded queue, or
    rejected at admission by the policy); ``false_positive_clients``: share of benign clients the defense
    detected or blocked; ``benign_accuracy_drop``: top-1 accuracy of the answers the same requests get
    from the undefended service (the same policy, no defense: :meth:`SimulatedService.undefended_run`) minus that
    of the defended answers (a refused or rejected request counts as wrong); ``perturbation``: mean halved L1 between
    each answer and the serving model's own
    output; ``latency_overhead``: mean end-to-end latency of the answered requests over that of the
    same requests, at the same times, routed with no defense, minus 1.
    """
    outcome = service.benign_outcome()
    n = len(outcome["refused"])
    answered = _answered(outcome)
    labels = zoo.splits["attacker_y"][torch.from_numpy(outcome["pool_row"])].numpy()
    defended_correct = answered & (outcome["answers"].nan_to_num(-1.0).argmax(1).numpy() == labels)
    undefended_served, undefended_latency = service.undefended_run(outcome)
    undefended = service.pool_answers(outcome["pool_row"], np.maximum(undefended_served, 0)).argmax(1).numpy()
    undefended_correct = (undefended_served >= 0) & (undefended == labels)
    latency = outcome["latency"][answered]
    baseline = undefended_latency[answered]
    both = np.isfinite(baseline)  # requests the undefended service would have dropped have no latency to compare
    detected = service.defense.detected
    benign_detected = sum(int(c) in detected for c in service.benign_ids)
    return {
        **slo_costs(service, outcome),
        "spec_goodput": float(np.mean(outcome["meets_spec"])) if n else float("nan"),
        "false_positive_clients": benign_detected / len(service.benign_ids),
        "benign_accuracy_drop": float(np.mean(undefended_correct)) - float(np.mean(defended_correct)) if n
        else float("nan"),
        "perturbation": scoring.l1_distance(outcome["answers"][torch.from_numpy(answered)],
                                            outcome["raw"][torch.from_numpy(answered)]) if answered.any() else 0.0,
        "latency_overhead": scoring.latency_overhead(latency[both], baseline[both]) if both.any() else float("nan"),
        "benign_requests": float(n),
        "benign_repeats": _repeat_share(outcome["client"], outcome["pool_row"]),
    }


def _answered(outcome: dict[str, np.ndarray]) -> np.ndarray:
    """Per benign request, whether it was answered (neither refused nor dropped)."""
    return ~outcome["refused"] & ~np.isinf(outcome["latency"])


def slo_costs(service: SimulatedService, outcome: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The SLO part of :func:`service_costs` (``goodput``, ``latency_p50_ms``, ``latency_p99_ms``,
    ``refused_benign``, ``dropped_benign``), without the undefended re-run the other costs need
    (``outcome``: :meth:`SimulatedService.benign_outcome`, if the caller has it)."""
    outcome = service.benign_outcome() if outcome is None else outcome
    n = len(outcome["refused"])
    answered = _answered(outcome)
    dropped = ~outcome["refused"] & np.isinf(outcome["latency"])
    accuracies = np.array([e.accuracy for e in service.benign_frontend.menu])
    accurate_enough = answered & (accuracies[np.maximum(outcome["served"], 0)] >= outcome["min_accuracy"])
    in_time = answered & (outcome["latency"] <= outcome["max_latency"])
    latency = outcome["latency"][answered]
    return {
        "goodput": scoring.goodput(accurate_enough & in_time) if n else float("nan"),
        "latency_p50_ms": float(np.percentile(latency, 50)) if len(latency) else float("nan"),
        "latency_p99_ms": float(np.percentile(latency, 99)) if len(latency) else float("nan"),
        "refused_benign": float(np.mean(outcome["refused"])) if n else float("nan"),
        "dropped_benign": float(np.mean(dropped)) if n else float("nan"),
    }


def _repeat_share(clients: np.ndarray, rows: np.ndarray) -> float:
    """Share of the requests whose input their client had already sent (0 while no client exhausts its share)."""
    if not len(rows):
        return float("nan")
    pairs = np.stack([np.asarray(clients, dtype=np.int64), np.asarray(rows, dtype=np.int64)], axis=1)
    return 1.0 - len(np.unique(pairs, axis=0)) / len(pairs)


def row_identity(zoo: Zoo, cell: Cell) -> CellRow:
    """The row that says which cell it is, from the cell's resolved plugins (status ``ok``, no metric yet)."""
    attack, defense = cell.attack_plugin, cell.defense_plugin
    # the fields are set only away from their defaults, so a grid without the parameters writes the
    # results it wrote before them
    label = threat_attack_label(attack.label, cell.attacker_data, cell.attacker_identities)
    return CellRow(zoo=zoo.name, victim=cell.victim, victim_model=zoo.role(cell.victim), attack=label,
                   attack_access=attack.access, defense=defense.label, budget=cell.budget, seed=cell.seed,
                   load=cell.service.load, benign_clients=cell.service.benign_clients,
                   attacker_rate=cell.service.attacker_rate, latency_visible=cell.service.latency_visible,
                   status="ok", error="",
                   attacker_data=cell.attacker_data if cell.attacker_data != IN_DISTRIBUTION else None,
                   attacker_identities=cell.attacker_identities if cell.attacker_identities != 1 else None)


def failed_row(zoo: Zoo, task: CellTask, error: str) -> CellRow:
    """The row of a cell whose worker produced none (timeout, crash, memory)."""
    row = replace(row_identity(zoo, task.cell), status="failed", error=error, wall_s=float("nan"),
                  **dict.fromkeys(METRICS, float("nan")))
    return finish_row(row, zoo, task)


def finish_row(row: CellRow, zoo: Zoo, task: CellTask) -> CellRow:
    """Add the cell key, the routing profile, the grid name and provenance to a row."""
    return replace(row, cell_key=task.key, profile=zoo.profile_name, grid=task.grid.name, **task.provenance)


def attack_generator(seed: int) -> np.random.Generator:
    """The attack's generator for ``seed``: a cell's and ``psml-bench attack``'s alike."""
    return np.random.default_rng([seed, 1])


def attack_locator(plugin: ResolvedPlugin) -> PluginLocator:
    """Where the attack process finds a resolved attack: a registry name or a submission folder,
    with the submitted strategy its ``strategy`` parameter names, if it names one."""
    cls = plugin.cls
    strategy_name = {**cls.defaults, **plugin.spec.kwargs}.get("strategy")
    strategy = STRATEGIES.find(strategy_name) if isinstance(strategy_name, str) else None
    strategy_locator = _submitted(strategy_name, strategy.plugin) if strategy is not None else None
    if getattr(cls, "submission_folder", None) is not None:
        return replace(_submitted(plugin.spec.name, cls, plugin.spec.kwargs), strategy=strategy_locator)
    return PluginLocator(plugin.spec.name, plugin.spec.params, strategy=strategy_locator)


def _submitted(name: str, cls: type, params: dict[str, Any] | None = None) -> PluginLocator | None:
    """The locator of a submitted attack or strategy (a registry stand-in); None for any other class."""
    folder = getattr(cls, "submission_folder", None)
    if folder is None:
        return None
    return PluginLocator(name, tuple(sorted({**cls.defaults, **(params or {})}.items())), submission=str(folder),
                         entry=cls.submission_entry, imports=cls.submission_imports,
                         declared=tuple(sorted(cls.defaults.items())), version=cls.version)


def run_cell(zoo: Zoo, grid: GridConfig, cell: Cell, *, timeout_s: float | None = None,
             memory_mb: int | None = None, global_seed: int | None = None, transcript: Any = None,
             device: torch.device | str = "cpu", context: RunContext | None = None) -> CellRow:
    """Run one cell on its service and score it; a failing plugin gives a failed row, never an exception.

    ``context``: the run's state in this process (its submissions registered there, the owner of the
    service's pool answers); default: the process's :func:`~psml_bench.bench.context.default_context`.
    ``device``: where the service's forward passes, the surrogate's training and its scoring run.
    ``timeout_s`` and ``memory_mb`` limit the attack process (default: the executor's limits on the worker).
    ``global_seed`` and ``transcript`` are for conformance tests (see :func:`run_attack`): reseed
    the attack process's global generators; hash every query and answer.
    """
    started = time.perf_counter()
    device = torch.device(device)
    make_deterministic(device)
    context = context or default_context()
    context.submissions()  # registered in this process (a worker's own context registers them there)
    victim_id = zoo.role(cell.victim)
    defense = cell.defense_plugin.instantiate()
    service = _cell_service(zoo, grid, cell, defense, victim_id, device, context)
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=service.spec_range,
                          pool=attacker_pool(zoo, cell.attacker_data), role=cell.victim,
                          latency_visible=cell.service.latency_visible, device=device.type)
    verdict = _Verdict()
    flags = _defense_flags(zoo, grid, cell)
    surrogate, metrics, recipe, surrogate_problems = _scored_attack(
        lambda: run_attack(service, attack_locator(cell.attack_plugin), knowledge, cell.budget,
                           attack_generator(cell.seed), timeout_s=timeout_s, memory_mb=memory_mb,
                           global_seed=global_seed, transcript=transcript,
                           training_cache=context.training_cache_of(zoo)),
        zoo, victim_id, device, context, verdict)
    flags += surrogate_problems
    costs = _benign_costs(zoo, service, verdict)
    eval_queries = service.attacker_frontend.eval_guard.count
    if eval_queries:
        flags.append(f"queried {eval_queries} inputs the cell is scored on (eval_queries)")
    ownership = _ownership(zoo, victim_id, defense, service, surrogate, device, verdict)
    return replace(
        row_identity(zoo, cell), status=verdict.status, error=verdict.error, surrogate_recipe=recipe, **metrics,
        **_attack_measures(service, cell, victim_id), **costs, **ownership,
        flags="; ".join(flags), wall_s=round(time.perf_counter() - started, 2))


def _cell_service(zoo: Zoo, grid: GridConfig, cell: Cell, defense: Any, victim_id: str, device: torch.device,
                  context: RunContext) -> SimulatedService:
    """The cell's service around ``defense``, its pool answers owned by ``context``, its eval-input guard set."""
    service = SimulatedService(zoo, defense=defense, config=cell.service, seed=cell.seed, budget=cell.budget,
                               policy=grid.policy, benign_queries=grid.benign_queries,
                               victim_id=victim_id if cell.attack_plugin.access == "victim" else None, device=device,
                               attacker_identities=cell.attacker_identities, pool_answers=context.pool_answers)
    service.attacker_frontend.eval_guard = EvalInputGuard(zoo.splits["test_x"], zoo.splits["attacker_x"])
    return service


@dataclass
class _Verdict:
    """A cell's status and error while it runs: the first failure stands."""

    status: str = "ok"
    error: str = ""

    def fail(self, error: str) -> None:
        """Record ``error`` unless the cell already failed."""
        if self.status == "ok":
            self.status, self.error = "failed", error


def _scored_attack(attack: Callable[[], Surrogate], zoo: Zoo, victim_id: str, device: torch.device,
                   context: RunContext, verdict: _Verdict) -> tuple[Surrogate | None, dict[str, float], str, list[str]]:
    """Run the cell's ``attack`` and score its surrogate: (surrogate, metrics, its training recipe, sanity flags).

    A failure goes to ``verdict`` and gives NaN metrics, no recipe, no flags, and the surrogate if there is one.
    """
    surrogate = None
    try:
        surrogate = attack()
        metrics, problems = score_surrogate(zoo, victim_id, surrogate, device, context)
        unscored = [name for name in ("kl", "l1") if not np.isfinite(metrics[name])]
        if unscored:  # finite weights whose outputs overflow: no number of this cell means anything
            raise AttackFailed(f"the attack's surrogate predicts non-finite probabilities on the test split "
                               f"({' and '.join(unscored).upper()} not finite): it cannot be scored")
        return surrogate, metrics, surrogate.recipe, problems
    except AttackFailed as exc:
        verdict.fail(str(exc))
    except BudgetExhausted as exc:
        verdict.fail(f"budget overrun: {exc}")
    except Exception as exc:  # noqa: BLE001 - a plugin crash fails its cell, not the grid
        log.debug("cell failed", exc_info=True)
        verdict.fail(f"{type(exc).__name__}: {exc}")
    return surrogate, dict.fromkeys(SURROGATE_METRICS, float("nan")), "", []


def _benign_costs(zoo: Zoo, service: SimulatedService, verdict: _Verdict) -> dict[str, float]:
    """Finish the service's benign workload and cost it (:func:`service_costs`); NaN if the defense crashes."""
    try:
        service.finish()
        return service_costs(zoo, service)
    except Exception as exc:  # noqa: BLE001 - a defense crash fails its cell, not the grid
        log.debug("benign workload failed", exc_info=True)
        verdict.fail(f"defense failed on the benign workload: {type(exc).__name__}: {exc}")
        return dict.fromkeys(COST_METRICS, float("nan"))


def _ownership(zoo: Zoo, victim_id: str, defense: Any, service: SimulatedService, surrogate: Surrogate | None,
               device: torch.device, verdict: _Verdict) -> dict[str, float]:
    """The ownership test on the watermark pairs the defense kept (:func:`score_ownership`); NaN if it crashes."""
    try:
        return score_ownership(zoo, victim_id, defense.watermark_pairs(service.attacker_id), surrogate, device)
    except Exception as exc:  # noqa: BLE001 - a defense crash fails its cell, not the grid
        log.debug("ownership test failed", exc_info=True)
        verdict.fail(f"defense failed to give its watermark pairs: {type(exc).__name__}: {exc}")
        return dict.fromkeys(OWNERSHIP_METRICS, float("nan"))


def _attack_measures(service: SimulatedService, cell: Cell, victim_id: str) -> dict[str, float | int | None]:
    """What the service saw of the attacker: queries, routing to the victim, detection, clock and client work."""
    victim_index = [e.id for e in service.menu].index(victim_id)
    detected_at = service.attacker_detected_at  # the first of its identities detected, counting all their queries
    identities_detected = sum(int(c) in service.detections for c in service.attacker_ids) / len(
        service.attacker_ids) if cell.attacker_identities != 1 else None
    return {
        "queries": service.used, "fingerprint_queries": service.log.count("fingerprint"),
        "victim_hit_rate": scoring.victim_hit_rate(service.log.served_ids("extract"), victim_index),
        "fingerprint_accuracy": scoring.fingerprint_accuracy(service.log.requested_ids("extract"), victim_index),
        "detected": float(detected_at is not None),
        "queries_to_detection": float(detected_at) if detected_at is not None else float("nan"),
        "eval_queries": float(service.attacker_frontend.eval_guard.count),
        "attacker_time_s": service.clock / 1000,  # the cell's clock when the attacker's last answer reached it
        "attacker_work_s": service.attacker_work_ms / 1000,
        "identities_detected": identities_detected,
    }


def score_ownership(zoo: Zoo, victim_id: str, pairs: tuple[torch.Tensor, torch.Tensor] | None,
                    surrogate: torch.nn.Module | None, device: torch.device | str = "cpu") -> dict[str, float]:
    """The ownership test (:mod:`psml_bench.bench.ownership`) of the attacker's surrogate and of the zoo's other
    models on the watermark ``pairs`` the defense kept from the attacker (all NaN when it keeps none).

    ``watermark_pairs``: pairs kept; ``watermark_agreement``: the surrogate's share answering the
    watermark label; ``ownership_queries``: watermark queries needed to claim it (NaN: not claimed);
    ``ownership_claimed``: 1 or 0; ``innocent_claims``: share of the zoo's other models (trained
    without the watermarked answers) claimed; ``innocent_agreement``: their mean agreement.
    """
    result = dict.fromkeys(OWNERSHIP_METRICS, float("nan"))
    if pairs is None:
        return result
    inputs, labels = pairs
    result["watermark_pairs"] = float(len(labels))
    if not len(labels):
        return result
    labels = labels.numpy()

    def agreement(model: torch.nn.Module) -> np.ndarray:
        return scoring.predict_probs(model, inputs, zoo.num_classes, device=device).argmax(1).numpy() == labels

    if surrogate is not None:
        agrees = agreement(surrogate)
        result.update(watermark_agreement=float(agrees.mean()),
                      ownership_queries=ownership_queries(agrees, zoo.num_classes))
        result["ownership_claimed"] = float(not np.isnan(result["ownership_queries"]))
    innocent = [agreement(zoo.model(m["id"], device)) for m in zoo.card["models"] if m["id"] != victim_id]
    if innocent:
        result["innocent_claims"] = float(np.mean([not np.isnan(ownership_queries(a, zoo.num_classes))
                                                   for a in innocent]))
        result["innocent_agreement"] = float(np.mean([a.mean() for a in innocent]))
    return result


def score_surrogate(zoo: Zoo, victim_id: str, surrogate: Surrogate, device: torch.device | str = "cpu",
                    context: RunContext | None = None) -> tuple[dict[str, float], list[str]]:
    """A rebuilt surrogate's metrics and sanity flags against ``victim_id``.

    Both are a pure function of the surrogate's architecture and weights (and the zoo, victim and
    device), so a context (``context``, default the process's) computes them once for identical weights:
    cells whose attacks trained on identical data (a hard-label attack against a defense that keeps the
    argmax, say) get the same numbers without predicting the test split again.
    """
    context = context or default_context()
    layout = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in surrogate.state_dict().items())
    key = (zoo_identity(zoo), victim_id, torch.device(device).type,
           content_hash([surrogate.net.pretrained_cfg.get("architecture"), repr(layout), weights_digest(surrogate)]))
    if key not in context.scores:
        metrics = surrogate_metrics(zoo, victim_id, surrogate, device)
        flags = surrogate_flags(zoo, victim_id, surrogate, metrics["fidelity"], device, context.victim_labels)
        context.remember_score(key, (metrics, flags))
    metrics, flags = context.scores[key]
    return dict(metrics), list(flags)


def surrogate_metrics(zoo: Zoo, victim_id: str, surrogate: torch.nn.Module,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """Fidelity, accuracy, normalised accuracy, KL and L1 of a surrogate against the victim on the test split
    (the surrogate's predictions computed on ``device``)."""
    test_x, test_y = zoo.splits["test_x"], zoo.splits["test_y"].numpy()
    probabilities = scoring.predict_probs(surrogate, test_x, zoo.num_classes, device=device)
    predicted = probabilities.argmax(1).numpy()
    victim_probs = zoo.test_predictions[victim_id]
    surrogate_accuracy = scoring.accuracy(predicted, test_y)
    return {"fidelity": scoring.fidelity(predicted, victim_probs.argmax(1).numpy()),
            "accuracy": surrogate_accuracy,
            "accuracy_norm": scoring.accuracy_norm(surrogate_accuracy, zoo.entry(victim_id).accuracy),
            "kl": scoring.kl_divergence(victim_probs, probabilities),
            "l1": scoring.l1_distance(victim_probs, probabilities)}


def _defense_flags(zoo: Zoo, grid: GridConfig, cell: Cell) -> list[str]:
    """The defense's sanity flags; a defense that crashes on the probe fails in the cell itself."""
    try:
        return defense_flags(zoo, grid, cell)
    except Exception:  # noqa: BLE001
        log.debug("defense probe failed", exc_info=True)
        return []


def execute(task: CellTask, context: RunContext | None = None) -> CellRow:
    """Run one cell in this process (an executor's worker) on one thread; return its row.

    ``context``: the worker's run context (default: the process's :func:`default_context`).

    Raises:
        ExecutorError: the zoo this worker opened differs from the driver's.
    """
    context = context or default_context()
    opened = context.zoos.get((task.zoo_dir, task.profile))
    if opened is None:
        zoo = Zoo(Path(task.zoo_dir), Path(task.profile) if task.profile else None)
        opened = context.zoos[(task.zoo_dir, task.profile)] = (zoo, zoo_identity(zoo))
    zoo, identity = opened
    if identity != task.zoo_identity:
        raise ExecutorError(f"the zoo at {task.zoo_dir} on this worker differs from the driver's "
                            "(different weights); share the zoo cache between nodes")
    with intra_op_threads(CELL_THREADS):
        return finish_row(run_cell(zoo, task.grid, task.cell, device=task.device, context=context), zoo, task)
