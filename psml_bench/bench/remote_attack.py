"""`psml-bench attack --target URL`: a registered or submitted attack, isolated as in cells, against a live endpoint.

The attack runs in its own process behind the same query channel as in a cell
(:func:`psml_bench.isolation.attack_process.run_attack`); the harness side of the channel is an
:class:`~psml_bench.serving.http_client.HttpClient`, so the endpoint's server counts the budget. The
surrogate is written as safetensors with a JSON summary; given the zoo the endpoint serves, the
surrogate is scored locally (fidelity and accuracy against the role's model on the test split).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from safetensors.torch import save_file

from .cell import attack_generator, attack_locator, surrogate_metrics
from .context import RunContext, default_context
from ..contract.errors import AttackFailed, ConfigError, PsmlError
from ..contract.target import Knowledge
from .grid import PluginSpec, ResolvedPlugin, resolve
from ..serving.http_client import HttpClient
from ..isolation.attack_process import run_attack
from ..extraction.surrogate import Surrogate
from ..zoo.model_zoo import Zoo


def parse_plugin(text: str) -> PluginSpec:
    """``NAME[:k=v,...]`` as a plugin spec; values parse as JSON where they can (``scale=0.1``), else strings.

    Raises:
        ConfigError: a parameter is not ``k=v``.
    """
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"plugin '{text}': parameter '{part}' is not k=v")
        try:
            params[key.strip()] = json.loads(value)
        except ValueError:
            params[key.strip()] = value.strip()
    return PluginSpec(name.strip(), tuple(sorted(params.items())))


def load_pool(path: Path) -> torch.Tensor:
    """Unlabelled attacker inputs from a ``.npy`` file or a safetensors file's ``pool`` (or only) tensor."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            tensors = safetensors.numpy.load_file(str(path))
            array = tensors["pool"] if "pool" in tensors else next(iter(tensors.values())) if len(tensors) == 1 \
                else None
            if array is None:
                raise ValueError(f"holds {sorted(tensors)}, no 'pool' tensor")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the attacker's pool ({exc})") from None
    if array.dtype.kind != "f" or array.ndim != 4:
        raise ConfigError(f"{path}: the pool must be floats of shape (N, C, H, W), got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@dataclass(frozen=True)
class RemoteAttackResult:
    """What ``psml-bench attack`` wrote and measured."""

    surrogate_path: Path
    summary_path: Path
    summary: dict[str, Any]


def attack_endpoint(url: str, api_key: str, attack: str, *, out_dir: Path, budget: int | None = None,
                    role: str = "rank:1", zoo: Zoo | None = None, pool: torch.Tensor | None = None, seed: int = 0,
                    timeout_s: float | None = None, context: RunContext | None = None) -> RemoteAttackResult:
    """Run ``attack`` (``NAME[:k=v,...]``) against the endpoint at ``url``; write its surrogate and summary.

    Args:
        url: the endpoint's base URL.
        api_key: the attacker's key (its server-side budget is enforced by the server).
        attack: the attack and its parameters.
        out_dir: where ``surrogate.safetensors`` and ``summary.json`` go.
        budget: the most queries to send (default: the key's remaining budget, which must be finite).
        role: the model to steal, ``rank:k``.
        zoo: the zoo the endpoint serves, for the pool (its attacker split) and for local scoring.
        pool: the attacker's unlabelled inputs (default: the zoo's attacker split).
        seed: seeds the attack's generator.
        timeout_s: wall-clock limit of the attack process.
        context: the run's state in this process, whose submissions name the attacks (default: the process's
            :func:`~psml_bench.bench.context.default_context`).

    Raises:
        PsmlError: unknown attack, unreachable service, no budget or pool, or the attack failed.
    """
    plugin = _service_attack(attack, context or default_context())
    pool = _attacker_pool(zoo, pool)
    client = HttpClient(url, api_key, limit=budget)
    try:
        info = client.describe()
        if zoo is not None and info.get("zoo") != zoo.name:
            raise ConfigError(f"the endpoint serves zoo '{info.get('zoo')}', not '{zoo.name}'")
        knowledge = client.knowledge(pool, role)
        budget = _remaining_budget(client)
        started = time.perf_counter()
        surrogate = run_attack(client, attack_locator(plugin), knowledge, budget,
                               attack_generator(seed), timeout_s=timeout_s)
        wall_s = time.perf_counter() - started
    except AttackFailed as exc:
        raise PsmlError(f"attack {plugin.label} failed: {exc}") from None
    finally:
        client.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    surrogate_path = out_dir / "surrogate.safetensors"
    arch = _save_surrogate(surrogate, knowledge, surrogate_path)
    summary: dict[str, Any] = {"target": url, "zoo": info.get("zoo"), "attack": plugin.label, "role": role,
                               "budget": budget, "queries": client.sent, "seed": seed, "arch": arch,
                               "wall_s": round(wall_s, 2)}
    if zoo is not None:
        summary.update(_local_scores(zoo, role, surrogate))
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return RemoteAttackResult(surrogate_path, summary_path, summary)


def _service_attack(attack: str, context: RunContext) -> ResolvedPlugin:
    """``attack`` (``NAME[:k=v,...]``) resolved among the registered and submitted attacks.

    Raises:
        ConfigError: unknown attack, or one that needs direct access to the victim model.
    """
    context.submissions()  # a submitted attack is registered through the run's context, once
    plugin = resolve("attack", parse_plugin(attack))
    if plugin.access != "service":
        raise ConfigError(f"attack '{plugin.label}' needs direct access to the victim model; an endpoint offers "
                          "only the service")
    return plugin


def _attacker_pool(zoo: Zoo | None, pool: torch.Tensor | None) -> torch.Tensor:
    """The attacker's unlabelled inputs: ``pool`` if given, else the zoo's attacker split.

    Raises:
        ConfigError: neither is given.
    """
    if pool is not None:
        return pool
    if zoo is None:
        raise ConfigError("no attacker pool: pass --zoo (its attacker split) or --pool FILE")
    return zoo.splits["attacker_x"]


def _remaining_budget(client: HttpClient) -> int:
    """The queries the attack may send: the client's limit or the key's budget at the server, whichever is lower.

    Raises:
        ConfigError: neither limits the key.
        PsmlError: the budget is spent.
    """
    budget = client.remaining
    if budget is None:
        raise ConfigError("the key has no budget at the server: pass --budget N")
    if budget < 1:
        raise PsmlError("the key's budget is spent: nothing left to query")
    return budget


def _save_surrogate(surrogate: Surrogate, knowledge: Knowledge, path: Path) -> str | None:
    """Write the surrogate's weights to ``path`` as safetensors, with what rebuilds it; return its architecture."""
    arch = surrogate.net.pretrained_cfg.get("architecture")
    save_file({k: v.contiguous() for k, v in surrogate.state_dict().items()}, str(path),
              metadata={"arch": str(arch), "in_chans": str(knowledge.input_shape[0]),
                        "num_classes": str(knowledge.num_classes)})
    return arch


def _local_scores(zoo: Zoo, role: str, surrogate: Surrogate) -> dict[str, Any]:
    """The surrogate's fidelity and accuracy against the zoo's model in ``role``, on the test split."""
    victim = zoo.role(role)
    with torch.no_grad():
        metrics = surrogate_metrics(zoo, victim, surrogate)
    return {"victim_model": victim, "fidelity": metrics["fidelity"], "accuracy": metrics["accuracy"],
            "accuracy_norm": metrics["accuracy_norm"]}
