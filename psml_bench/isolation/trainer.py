"""Surrogate training on an attack's behalf: the worker trains what the attack process asks, once per content hash.

In a cell's sandboxed attack process, :func:`~psml_bench.extraction.surrogate.train_surrogate` of a fresh
surrogate sends its worker a request: the inputs, the answers, the recipe, the seed it drew and
the attack process's torch generator state. The worker checks the request,
trains with the harness's own :func:`~psml_bench.extraction.surrogate.fit_surrogate` on the cell's device
and one thread (as the attack process would have), and sends back the weights and the generator
state after training, so the attack process goes on exactly as had it trained itself.

Requests with identical content (the hash of all the above, with hard-label answers reduced to
their argmax, the only part of them such a training reads, plus the training code's source and
the torch and timm versions) are trained once: per worker in memory, and across workers and runs
in the zoo cache's ``surrogates/`` directory. Two cells whose attacks collect identical training
sets (a hard-label attack against defenses that keep the argmax; psml against a spec defense that
never changes its routing) then share one training. The attack process never writes the cache: it
sends data, and the worker trains on it. What the worker does not take is trained in the attack
process, as before: training further a surrogate the attack holds (``init``: the attack may have
changed its modules in ways its weights do not show), tensors other than contiguous float32 ones
of the cell's shapes, more than :data:`MAX_STEPS` steps, a message over the channel's limit, or
any request the worker finds malformed, and a call made under torch settings the attack changed
(gradients off, another default dtype or thread count, deterministic or anomaly mode).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..extraction import surrogate as _surrogate
from ..common.device import intra_op_threads
from ..contract.errors import PsmlError
from ..contract.target import Knowledge
from ..extraction.surrogate import (Surrogate, Trainer, fit_surrogate, fresh_surrogate, state_digest, tensor_bytes,
    trained_by)
from ..contract.surrogate_config import SurrogateConfig

log = logging.getLogger(__name__)

MAX_STEPS = 100_000
"""Most optimiser steps the worker runs for an attack; a longer training stays in the attack process."""
MEMORY_BYTES = 256 * 2**20
"""Most bytes of trained weights a worker keeps in memory."""
DISK_BYTES = 2 * 2**30
"""The zoo cache's ``surrogates/`` is not written beyond this size."""
CACHE_DIR = "surrogates"
THREADS = 1
"""Torch threads of a training (the attack process's, so the weights are the same)."""
_RNG = "__rng__."

STATS = {"requests": 0, "memory_hits": 0, "disk_hits": 0, "trained": 0}
"""This process's training requests and how they were served (counters for benchmarks; no result reads them)."""


@functools.lru_cache(maxsize=None)  # a pure memo: the code this process runs does not change while it runs
def _code_identity() -> str:
    """What else determines a training: the training code's source, torch's and timm's versions."""
    digest = hashlib.sha256()
    for path in (Path(_surrogate.__file__), Path(__file__)):
        digest.update(path.read_bytes())
    import timm

    digest.update(f"{torch.__version__} {timm.__version__}".encode())
    return digest.hexdigest()


# --- the attack process's side ----------------------------------------------------------------------

def _well_formed(inputs: Any, answers: Any, knowledge: Knowledge) -> bool:
    return (type(inputs) is torch.Tensor and type(answers) is torch.Tensor
            and inputs.dtype == torch.float32 and answers.dtype == torch.float32
            and inputs.is_contiguous() and answers.is_contiguous()
            and not inputs.requires_grad and not answers.requires_grad
            and inputs.ndim == 1 + len(knowledge.input_shape)
            and tuple(inputs.shape[1:]) == tuple(knowledge.input_shape)
            and answers.shape == (len(inputs), knowledge.num_classes))


def remote_trainer(call: Callable[[dict, dict], Any], knowledge: Knowledge, max_message: int) -> Trainer:
    """The attack process's trainer: asks the worker through ``call`` (header, tensors) -> reply."""

    def train(inputs: torch.Tensor, answers: torch.Tensor, config: SurrogateConfig, seed: int,
              init: Surrogate | None) -> Surrogate | None:
        if init is not None or not _well_formed(inputs, answers, knowledge) or inputs.device.type != "cpu" \
                or not _as_in_the_worker(knowledge):
            return None
        tensors = {"inputs": inputs, "answers": answers, **_rng_state(knowledge)}
        if _size(tensors) + 2**20 > max_message:
            return None
        reply = call({"op": "train", "config": dataclasses.asdict(config), "seed": seed}, tensors)
        if reply is None:  # the worker left it to this process
            return None
        state, rng = reply
        _set_rng_state(rng, knowledge)
        model = fresh_surrogate(knowledge, config.arch, seed)
        model.load_state_dict(state)
        return trained_by(model.eval(), config)

    return train


def _as_in_the_worker(knowledge: Knowledge) -> bool:
    """Whether this process's torch settings that a training reads are the worker's (an attack that
    changed them trains here, under its own settings)."""
    return (torch.is_grad_enabled() and not torch.is_inference_mode_enabled() and not torch.is_anomaly_enabled()
            and torch.get_default_dtype() == torch.float32 and torch.get_num_threads() == THREADS
            and (torch.device(knowledge.device).type == "cuda" or not torch.are_deterministic_algorithms_enabled()))


def _rng_state_names(knowledge: Knowledge) -> tuple[str, ...]:
    return (f"{_RNG}cpu", f"{_RNG}cuda") if torch.device(knowledge.device).type == "cuda" else (f"{_RNG}cpu",)


def _rng_state(knowledge: Knowledge) -> dict[str, torch.Tensor]:
    """This process's torch generator state (and the cell's GPU's, on a GPU)."""
    state = {f"{_RNG}cpu": torch.get_rng_state()}
    if torch.device(knowledge.device).type == "cuda":
        state[f"{_RNG}cuda"] = torch.cuda.get_rng_state(torch.device(knowledge.device))
    return state


def _set_rng_state(state: dict[str, torch.Tensor], knowledge: Knowledge) -> None:
    torch.set_rng_state(state[f"{_RNG}cpu"])
    if f"{_RNG}cuda" in state:
        torch.cuda.set_rng_state(state[f"{_RNG}cuda"], torch.device(knowledge.device))


# --- the worker's side ---------------------------------------------------------------------------------

_MEMORY: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
"""Trained weights by request hash, at most :data:`MEMORY_BYTES`, kept process-wide on purpose: a pure memo.
The key hashes everything a training reads (data, recipe, seed, generator state, the cell's shapes,
pool statistics and device type, the training code's source and the torch and timm versions), so an
entry is exactly what training again would give."""


def clear_memory() -> None:
    """Forget every training this process kept in memory (for benchmarks and tests that time a cold cache)."""
    _MEMORY.clear()


def _config(value: Any) -> SurrogateConfig | None:
    """The request's recipe, checked field by field (it comes from the attack process); None if malformed."""
    import timm

    if not isinstance(value, dict) or set(value) != {f.name for f in dataclasses.fields(SurrogateConfig)}:
        return None
    ints = ("epochs", "min_steps", "batch_size")
    floats = ("lr", "weight_decay")
    if not (all(type(value[k]) is int and value[k] >= (1 if k == "batch_size" else 0) for k in ints)
            and all(type(value[k]) in (int, float) and math.isfinite(value[k]) for k in floats)
            and isinstance(value["arch"], str) and timm.is_model(value["arch"])
            and value["labels"] in ("soft", "hard") and isinstance(value["strategy"], str)):
        return None
    try:
        return SurrogateConfig(**value)
    except PsmlError:  # e.g. a learning rate of 0: not the worker's to train
        return None


class SurrogateTrainer:
    """The worker's side: trains an attack process's requests for one cell (``knowledge``), with the cache in
    ``cache_dir`` (None: memory only)."""

    def __init__(self, knowledge: Knowledge, cache_dir: Path | None):
        self.knowledge = knowledge
        self.cache_dir = Path(cache_dir) / CACHE_DIR if cache_dir is not None else None
        pool = knowledge.pool
        self.produced: dict[str, str] = {}  # digest of each state sent to the attack process -> its recipe
        self._context = [_code_identity(), list(knowledge.input_shape), knowledge.num_classes,
                         torch.device(knowledge.device).type, _tensor_digest(pool.mean(dim=(0, 2, 3))),
                         _tensor_digest(pool.std(dim=(0, 2, 3)))]

    def answer(self, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple:
        """The reply to a ``train`` message: ("ok", (weights, generator state)), or ("ok", None): train it there."""
        config = _config(header.get("config"))
        seed = header.get("seed")
        inputs, answers = tensors.get("inputs"), tensors.get("answers")
        rng = {k: v for k, v in tensors.items() if k.startswith(_RNG)}
        expected = set(_rng_state_names(self.knowledge)) | {"inputs", "answers"}
        if (config is None or type(seed) is not int or not 0 <= seed < 2**31 or set(tensors) != expected
                or not _well_formed(inputs, answers, self.knowledge) or config.steps(len(inputs)) > MAX_STEPS):
            return ("ok", None)
        STATS["requests"] += 1
        key = self._key(header, tensors)
        result = self._cached(key)
        if result is None:
            result = self._train(inputs, answers, config, seed, rng)
            self._store(key, result)
        state = {k: v for k, v in result.items() if not k.startswith(_RNG)}
        self.produced[state_digest(state)] = config.recipe()
        return ("ok", (state, {k: v for k, v in result.items() if k.startswith(_RNG)}))

    def recipe_of(self, state: dict[str, torch.Tensor]) -> str:
        """The recipe of this trainer's training that produced exactly ``state`` (the weights an attack
        returned), or '' when it trained none such: only then is a fixed-recipe claim accepted."""
        return self.produced.get(state_digest(state), "")

    def _key(self, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
        digest = hashlib.sha256(repr([self._context, sorted(header["config"].items()), header["seed"]]).encode())
        if header["config"]["labels"] == "hard":  # the training sees only each answer's argmax
            tensors = {**tensors, "answers": tensors["answers"].argmax(1)}
        for name in sorted(tensors):
            tensor = tensors[name]
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor_bytes(tensor))
        return digest.hexdigest()

    def _train(self, inputs: torch.Tensor, answers: torch.Tensor, config: SurrogateConfig, seed: int,
               rng: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = torch.device(self.knowledge.device)
        with intra_op_threads(THREADS), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _set_rng_state(rng, self.knowledge)
            trained = fit_surrogate(inputs, answers, self.knowledge, config, seed)
            after = _rng_state(self.knowledge)
        STATS["trained"] += 1
        return {**{k: v.detach().clone() for k, v in trained.state_dict().items()}, **after}

    def _cached(self, key: str) -> dict[str, torch.Tensor] | None:
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            STATS["memory_hits"] += 1
            return _MEMORY[key]
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                result = load_file(str(path))
            except Exception:  # noqa: BLE001 - an unreadable entry is trained again
                return None
            STATS["disk_hits"] += 1
            self._remember(key, result)
            return result
        return None

    def _store(self, key: str, result: dict[str, torch.Tensor]) -> None:
        self._remember(key, result)
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if sum(p.stat().st_size for p in self.cache_dir.glob("*.safetensors")) > DISK_BYTES:
                return
            tmp = self.cache_dir / f".{key}.{os.getpid()}.tmp"
            save_file({k: v.contiguous() for k, v in result.items()}, str(tmp))
            os.replace(tmp, self.cache_dir / f"{key}.safetensors")
        except OSError:  # a read-only zoo cache: memory only
            pass

    @staticmethod
    def _remember(key: str, result: dict[str, torch.Tensor]) -> None:
        _MEMORY[key] = result
        while sum(_size(r) for r in _MEMORY.values()) > MEMORY_BYTES and len(_MEMORY) > 1:
            _MEMORY.popitem(last=False)


def _size(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()
