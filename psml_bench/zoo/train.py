"""Training zoo models reproducibly: the recipe loop, under a fixed thread count, serial or in parallel processes.

A zoo model's weights depend on how many threads its matrix products are split over, so a build
runs every training and evaluation step under the config's ``build.threads`` (whatever the
machine's core count) with deterministic algorithms on. Each model trains from its own saved
initial weights and its own seeds, so :func:`train_members` gives the same weights whether the
models train one after another in this process or side by side in worker processes. A portable
build (see :mod:`psml_bench.zoo.kernels`) trains and evaluates in worker processes started with its
kernel pins, which makes the weights the same on CPUs with other instruction sets too.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..common.device import intra_op_threads
from .kernels import capability, child_environment
from .model_zoo import ZooModel
from .config import ModelConfig, TrainConfig


@contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads and deterministic algorithms; restore both after.

    Deterministic algorithms only warn where an operation has no deterministic implementation
    (some GPU backward passes), so a build never fails for it.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with intra_op_threads(threads):
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def parallel_workers(threads: int, models: int, device: torch.device, jobs: int | None = None) -> int:
    """How many processes train side by side: ``jobs`` if given, else this machine's cores // ``threads``;
    at least 1, at most one per model, and 1 on a GPU (the models would share it)."""
    if device.type != "cpu":
        return 1
    if jobs is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        jobs = cores // threads
    return max(1, min(jobs, models))


def _augment(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flips; ``flip-crop`` also translates each image by up to 1/8
    of its side (reflect padding, then a random crop of the original size)."""
    n, channels, height, width = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if mode != "flip-crop":
        return x
    pad = max(1, min(height, width) // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(-1, 1) + torch.arange(height, device=x.device)).view(n, 1, height, 1)
    padded = padded.gather(2, rows.expand(n, channels, height, width + 2 * pad))
    cols = (dx.view(-1, 1) + torch.arange(width, device=x.device)).view(n, 1, 1, width)
    return padded.gather(3, cols.expand(n, channels, height, width))


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """The mixed precision training uses: ``none`` on a CPU; ``auto`` is bf16 where supported, else fp16."""
    if device.type != "cuda" or amp == "none":
        return "none"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def train_steps(recipe: TrainConfig, owner_size: int) -> int:
    """Optimizer steps of ``recipe`` on an owner split of ``owner_size`` samples."""
    n = min(recipe.samples, owner_size)
    return max(1, math.ceil(math.ceil(n / recipe.batch_size) * recipe.epochs))


def train_model(model: ZooModel, x: torch.Tensor, y: torch.Tensor, recipe: TrainConfig, label: str,
                progress: bool, device: torch.device | None = None, amp: str = "none") -> None:
    """Train ``model`` in place (AdamW, one-cycle, cross-entropy) on ``device``; ``amp`` is the
    mixed precision on a GPU (``bf16``, ``fp16`` with loss scaling, or ``none``)."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(recipe.seed)
    n = min(recipe.samples, len(y))
    steps = train_steps(recipe, len(y))
    if device.type != "cpu":
        model.to(device)
        if x.element_size() * x.nelement() <= 4 * 2 ** 30:  # keep the owner split on the GPU when it fits easily
            x, y = x.to(device), y.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    augment = recipe.augment if recipe.augment != "none" else None
    augment_generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([recipe.seed, 1]).generate_state(1)[0]))
    autocast_dtype = AMP_DTYPES.get(amp)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    model.train()
    with tqdm(total=steps, desc=f"train {label}", disable=not progress, leave=False, unit="step") as bar:
        done = 0
        while done < steps:
            order = torch.randperm(len(y), generator=generator)[:n]
            for start in range(0, n, recipe.batch_size):
                if done == steps:
                    break
                batch = order[start:start + recipe.batch_size]
                if device.type == "cpu" and augment is None:
                    loss = F.cross_entropy(model(x[batch]), y[batch])
                else:
                    inputs = x[batch.to(x.device)].to(device, non_blocking=True)
                    targets = y[batch.to(y.device)].to(device, non_blocking=True)
                    if augment is not None:
                        inputs = _augment(inputs, augment, augment_generator)
                    with torch.autocast(device_type=device.type, dtype=autocast_dtype,
                                        enabled=autocast_dtype is not None):
                        logits = model(inputs)
                    loss = F.cross_entropy(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                schedule.step()
                done += 1
                bar.update()
    model.eval()


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax outputs of ``model`` on ``x``, in eval mode, batched, in full precision, on the
    model's device; returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([F.softmax(model(x[i:i + batch_size].to(device)).float(), dim=1).cpu()
                      for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class TrainJob:
    """Everything one process needs to train one zoo model: files in, a weights file out."""

    model: ModelConfig
    in_chans: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits_path: str
    initial_weights: str
    """Initial weights ('': initialised in the training process from the model's seed)."""
    weights_path: str
    device: str
    amp: str
    threads: int
    progress: bool
    predictions_path: str = ""
    """Where to write the test split's probabilities, computed in the training process ('': not here)."""
    eval_batch_size: int = 1024

    def network(self) -> ZooModel:
        """The model's architecture (its initial weights come from ``initial_weights``)."""
        cfg = self.model
        with torch.random.fork_rng():  # the throwaway initialisation leaves the caller's global RNG alone
            return ZooModel(cfg.arch, cfg.kwargs, self.in_chans, self.num_classes, self.mean, self.std,
                            cfg.input_size)


def train_member(job: TrainJob) -> float:
    """Train ``job``'s model from its initial weights, save its weights; return the training seconds."""
    with reproducible(job.threads):
        splits = load_file(job.splits_path)
        if job.initial_weights:
            model = job.network()
            model.load_state_dict(load_file(job.initial_weights))
        else:  # initialised here, from the model's seed: the initialisers' kernels are this process's too
            with torch.random.fork_rng():
                torch.manual_seed(job.model.train.seed)
                cfg = job.model
                model = ZooModel(cfg.arch, cfg.kwargs, job.in_chans, job.num_classes, job.mean, job.std, cfg.input_size)
        device = torch.device(job.device)
        start = time.perf_counter()
        with torch.random.fork_rng():  # global randomness (dropout, if any) is seeded per model, not by build order
            torch.manual_seed(job.model.train.seed)
            train_model(model, splits["owner_x"], splits["owner_y"], job.model.train, job.model.id, job.progress,
                        device, job.amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, job.weights_path)
        if job.predictions_path:  # with the same kernels as the training (the kernel capability as metadata)
            save_file({"probs": predict_proba(model, splits["test_x"], job.eval_batch_size)}, job.predictions_path,
                      metadata={"capability": capability()})
    return seconds


def train_members(jobs: Sequence[TrainJob], workers: int, label: str, progress: bool,
                  environment: dict[str, str] | None = None) -> dict[str, float]:
    """Train every job, ``workers`` at a time in spawned processes (in this one when 1 and no
    ``environment``); return the training seconds per model id. The weights are the same either way.

    ``environment``: variables the training processes start with (a portable build's kernel pins);
    given, every job trains in a spawned process, even with one worker.
    """
    bar = tqdm(total=len(jobs), desc=f"train {label}", disable=not progress, unit="model")
    seconds: dict[str, float] = {}
    with bar, child_environment(environment or {}):
        if workers <= 1 and environment is None:
            for job in jobs:
                seconds[job.model.id] = train_member(job)
                bar.update()
            return seconds
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(train_member, job): job.model.id for job in jobs}
            for future in as_completed(futures):
                seconds[futures[future]] = future.result()
                bar.set_postfix(last=futures[future])
                bar.update()
    return {job.model.id: seconds[job.model.id] for job in jobs}
