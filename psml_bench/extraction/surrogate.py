"""The attacker's surrogate network and its training."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..common.device import make_deterministic
from ..contract.checks import count, generator, surrogate_arch
from ..contract.errors import ConfigError, sanitise
from ..contract.surrogate_config import SurrogateConfig, check_surrogate_params
from ..contract.target import Knowledge


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes in memory order, for hashing (any dtype, bfloat16 included)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's weights and buffers (to tell whether it changed since it was trained)."""
    return state_digest(model.state_dict())


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and tensors (:func:`weights_digest` of a model with that state)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


class Surrogate(torch.nn.Module):
    """A timm network behind a fixed input normalisation estimated from the attacker's pool.

    ``recipe`` is the training recipe (:meth:`SurrogateConfig.recipe`) of the last :func:`train_surrogate`
    call that produced these weights, and ``digest`` their hash then; both empty for an untrained one.
    """

    recipe: str = ""
    digest: str = ""

    def __init__(self, arch: str, in_chans: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        import timm

        surrogate_arch(arch)
        count("in_chans", in_chans, 1)
        count("num_classes", num_classes, 2)
        for name, value in (("mean", mean), ("std", std)):
            if not isinstance(value, torch.Tensor) or value.numel() not in (1, in_chans):
                got = f"{value.numel()} values" if isinstance(value, torch.Tensor) else type(value).__name__
                allowed = "1 value" if in_chans == 1 else f"1 or {in_chans} values (one per input channel)"
                raise ConfigError(f"surrogate {name} must be a tensor of {allowed}, got {got}")
        self.net = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of the classifier layer), one row per input."""
        return self.net.forward_head(self.net.forward_features((x - self.mean) / self.std), pre_logits=True)


Trainer = Callable[[torch.Tensor, torch.Tensor, "SurrogateConfig", int, "Surrogate | None"], "Surrogate | None"]
"""Trains a surrogate elsewhere (the attack process's worker): (inputs, answers, config, seed, init) -> the
trained surrogate, or None to have it trained here."""


_TRAINER: list[Trainer] = []
"""The trainer :func:`train_surrogate` asks first, set only inside :func:`training_elsewhere` (empty: none)."""


@contextmanager
def training_elsewhere(trainer: Trainer) -> Iterator[None]:
    """Within the block, :func:`train_surrogate` offers each training to ``trainer`` first (process-wide, every
    thread; the trainer before it is back after the block). A cell's attack process runs the attack inside
    one whose trainer asks the worker (:func:`psml_bench.isolation.trainer.remote_trainer`)."""
    previous = list(_TRAINER)
    _TRAINER[:] = [trainer]
    try:
        yield
    finally:
        _TRAINER[:] = previous


def train_surrogate(inputs: torch.Tensor, answers: torch.Tensor, knowledge: Knowledge, config: SurrogateConfig,
                    rng: np.random.Generator, *, init: Surrogate | None = None) -> Surrogate:
    """Fit a surrogate to (inputs, answers); answers are probability rows.

    It trains on ``knowledge.device`` (the cell's device) and returns the surrogate on the CPU.
    Called inside :func:`psml_bench.extraction.surrogate.training_elsewhere` (as an attack is in a
    cell's attack process), it first offers the training to that block's trainer: there the worker
    trains it (the same code on the same data, seed and generator state, so the same weights), once
    for identical requests (see :mod:`psml_bench.isolation.trainer`); what the trainer declines is
    trained here. Outside such a block it always trains here.

    Args:
        init: a surrogate to train further (in place) instead of a fresh one, e.g. a strategy's
            interim surrogate of the previous round.
    """
    _check_training_set(inputs, answers, knowledge, config)
    seed = int(generator("train_surrogate's rng", rng).integers(2**31))
    check_surrogate_params({"labels": config.labels})
    trained = _TRAINER[0](inputs, answers, config, seed, init) if _TRAINER else None
    return trained if trained is not None else fit_surrogate(inputs, answers, knowledge, config, seed, init=init)


def _check_training_set(inputs: Any, answers: Any, knowledge: Knowledge, config: Any) -> None:
    """One sentence for training data that do not fit the knowledge (instead of an IndexError mid-training)."""
    if not isinstance(config, SurrogateConfig):
        raise ConfigError(f"config must be a psml_bench.SurrogateConfig, got {type(config).__name__}")
    shape = tuple(knowledge.input_shape)
    if not (isinstance(inputs, torch.Tensor) and inputs.ndim == 1 + len(shape) and tuple(inputs.shape[1:]) == shape):
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ConfigError(f"train_surrogate's inputs must be a tensor of shape (N, {', '.join(map(str, shape))}), "
                          f"got {got}")
    if not (isinstance(answers, torch.Tensor) and tuple(answers.shape) == (len(inputs), knowledge.num_classes)):
        got = tuple(answers.shape) if isinstance(answers, torch.Tensor) else type(answers).__name__
        raise ConfigError(f"train_surrogate's answers must be a tensor of shape ({len(inputs)}, "
                          f"{knowledge.num_classes}), one probability row per input, got {got}")
    if not (inputs.is_floating_point() and answers.is_floating_point()):
        raise ConfigError(f"train_surrogate's inputs and answers must be floating point, got {inputs.dtype} and "
                          f"{answers.dtype}")


def fresh_surrogate(knowledge: Knowledge, arch: str, seed: int) -> Surrogate:
    """An untrained surrogate, initialised from ``seed`` (torch's global generator untouched)."""
    pool = knowledge.pool
    mean = pool.mean(dim=(0, 2, 3))
    std = pool.std(dim=(0, 2, 3)).clamp_min(1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Surrogate(arch, knowledge.input_shape[0], knowledge.num_classes, mean, std)


def fit_surrogate(inputs: torch.Tensor, answers: torch.Tensor, knowledge: Knowledge, config: SurrogateConfig,
                  seed: int, *, init: Surrogate | None = None) -> Surrogate:
    """The training of :func:`train_surrogate`, from its ``seed`` (drawn from the attack's generator)."""
    device = torch.device(knowledge.device)
    make_deterministic(device)
    model = init if init is not None else fresh_surrogate(knowledge, config.arch, seed)
    check_surrogate_params({"labels": config.labels})
    targets = F.one_hot(answers.argmax(1), knowledge.num_classes).float() if config.labels == "hard" \
        else answers.float()
    n = len(inputs)
    if n < 2:  # batches of one are skipped (batch norm): nothing to train on
        return trained_by(model.eval(), config)
    steps = config.steps(n)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2 or done == steps:
                continue
            log_probs = F.log_softmax(model(inputs[batch].to(device)), dim=1)
            loss = -(targets[batch].to(device) * log_probs).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
    return trained_by(model.to("cpu").eval(), config)


def trained_by(model: Surrogate, config: SurrogateConfig) -> Surrogate:
    """Mark ``model`` as trained with ``config`` (its recipe, and its weights' hash now)."""
    model.recipe, model.digest = config.recipe(), weights_digest(model)
    return model


def nonfinite_weights(state: dict[str, torch.Tensor]) -> str:
    """How many weights of ``state`` are NaN or infinite, and the first tensor holding one ('' if none)."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in sorted(state.items())
           if t.is_floating_point() or t.is_complex()}
    bad = {name: n for name, n in bad.items() if n}
    if not bad:
        return ""
    first = next(iter(bad))
    total = sum(bad.values())
    return (f"{total} non-finite weight value{'s' if total != 1 else ''} (NaN or infinity), the first in "
            f"'{sanitise(first, 80)}'")
