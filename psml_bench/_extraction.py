"""The extraction step shared by attacks: query pool inputs, train a timm surrogate on the answers.

Random pool sampling (Knockoff Nets / Copycat): draw inputs from the attacker's unlabeled
pool without replacement, query them, and fit a small timm model to the answers (soft labels:
the full probability vectors; hard labels: their argmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._serving import Knowledge, Spec, Target

QUERY_BATCH = 512


@dataclass(frozen=True)
class SurrogateConfig:
    """How the attacker trains its surrogate.

    Attributes:
        arch: timm architecture of the surrogate.
        epochs: passes over the queried set (at least ``min_steps`` optimiser steps in all).
        labels: ``"soft"`` (probability vectors) or ``"hard"`` (argmax class).
    """

    arch: str = "test_resnet"
    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    labels: str = "soft"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SurrogateConfig:
        """Take the surrogate fields (``surrogate`` = arch, ``epochs``, ``min_steps``, ``labels``) from plugin params."""
        return cls(arch=params.get("surrogate", cls.arch), epochs=int(params.get("epochs", cls.epochs)),
                   min_steps=int(params.get("min_steps", cls.min_steps)), labels=params.get("labels", cls.labels))


SURROGATE_DEFAULTS: dict[str, Any] = {"surrogate": SurrogateConfig.arch, "epochs": SurrogateConfig.epochs,
                                      "min_steps": SurrogateConfig.min_steps, "labels": SurrogateConfig.labels}


class Surrogate(torch.nn.Module):
    """A timm network behind a fixed input normalisation estimated from the attacker's pool."""

    def __init__(self, arch: str, in_chans: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        import timm

        self.net = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def sample_pool(knowledge: Knowledge, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` distinct pool indices (fewer if the pool is smaller), drawn with ``rng``."""
    n = min(n, len(knowledge.pool))
    return torch.from_numpy(np.sort(rng.choice(len(knowledge.pool), size=n, replace=False)))


def query_batched(target: Target, inputs: torch.Tensor, spec: Spec | Sequence[Spec], *,
                  purpose: str = "extract") -> torch.Tensor:
    """Query ``inputs`` in batches; one query per row."""
    answers = []
    for start in range(0, len(inputs), QUERY_BATCH):
        batch_spec = spec if isinstance(spec, Spec) else list(spec)[start:start + QUERY_BATCH]
        answers.append(target.query(inputs[start:start + QUERY_BATCH], batch_spec, purpose=purpose))
    return torch.cat(answers)


def train_surrogate(inputs: torch.Tensor, answers: torch.Tensor, knowledge: Knowledge, config: SurrogateConfig,
                    rng: np.random.Generator) -> Surrogate:
    """Fit a surrogate to (inputs, answers); answers are probability rows."""
    seed = int(rng.integers(2**31))
    pool = knowledge.pool
    mean = pool.mean(dim=(0, 2, 3))
    std = pool.std(dim=(0, 2, 3)).clamp_min(1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Surrogate(config.arch, knowledge.input_shape[0], knowledge.num_classes, mean, std)
    if config.labels == "hard":
        targets = F.one_hot(answers.argmax(1), knowledge.num_classes).float()
    elif config.labels == "soft":
        targets = answers.float()
    else:
        raise ValueError(f"labels must be 'soft' or 'hard', got {config.labels!r}")
    n = len(inputs)
    if n == 0:
        return model.eval()
    steps = max(config.min_steps, config.epochs * math.ceil(n / config.batch_size))
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
            log_probs = F.log_softmax(model(inputs[batch]), dim=1)
            loss = -(targets[batch] * log_probs).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
    return model.eval()


def extract(target: Target, knowledge: Knowledge, spec: Spec | Sequence[Spec], n_queries: int,
            rng: np.random.Generator, config: SurrogateConfig,
            extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> Surrogate:
    """Random pool sampling: query ``n_queries`` pool inputs under ``spec``, train a surrogate.

    Args:
        spec: one spec for all queries, or a callable-free sequence of ``n_queries`` specs.
        extra: answers the attack already holds (inputs, probabilities), added to the training set.
    """
    indices = sample_pool(knowledge, n_queries, rng)
    inputs = knowledge.pool[indices]
    specs = spec if isinstance(spec, Spec) else list(spec)[: len(inputs)]
    answers = query_batched(target, inputs, specs) if len(inputs) else torch.empty(0, knowledge.num_classes)
    if extra is not None and len(extra[0]):
        inputs, answers = torch.cat([inputs, extra[0]]), torch.cat([answers, extra[1]])
    return train_surrogate(inputs, answers, knowledge, config, rng)
