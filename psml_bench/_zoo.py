"""Model zoos: config, training, zoo cards, the on-disk cache and the Pareto frontier.

A zoo config (TOML, ``schemas/zoo.schema.json``) names a dataset and timm architectures with
their training recipes. ``build_zoo`` trains every model on the ``owner`` split (on a GPU with
mixed precision when the config or the caller asks for one; models marked ``pretrained`` start
from timm's published weights when they are reachable), measures its test accuracy and batch-1
latency and writes, into ``<cache>/zoos/<name>-<hash>/``:

- ``card.json``: the zoo card (``schemas/card.schema.json``),
- ``weights/<id>.safetensors``: the weights,
- ``splits.safetensors``: the benchmark splits, so later runs need not reload the dataset,
- ``predictions.safetensors``: each model's test-split probabilities (for fidelity).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ._config import content_hash, read_toml, resolve_config, validate
from ._data import DatasetConfig, ImageConfig, SplitConfig, load_dataset, make_splits
from ._errors import ConfigError, PsmlError
from ._profiling import (DEFAULT_BATCH_SIZES, environment, load_profile, make_batch_profile, measure_latency,
                         profile_device_kind, profile_model, reference_profile_path, resolve_device,
                         routing_latencies)

log = logging.getLogger(__name__)

CACHE_ENV = "PSML_BENCH_CACHE"


def default_cache_dir() -> Path:
    """``$PSML_BENCH_CACHE`` or ``~/.cache/psml-bench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "psml-bench")


@dataclass(frozen=True)
class TrainConfig:
    """A model's training recipe."""

    samples: int
    epochs: float
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    augment: str = "none"


@dataclass(frozen=True)
class ModelConfig:
    """One zoo member: an id, a timm architecture with kwargs, and its recipe."""

    id: str
    arch: str
    kwargs: dict[str, Any]
    train: TrainConfig
    pretrained: bool = False
    input_size: int | None = None


@dataclass(frozen=True)
class BuildConfig:
    """How a zoo is built (the optional ``[build]`` table; not part of the config hash)."""

    device: str = "cpu"
    amp: str = "auto"
    eval_batch_size: int = 1024
    gpu_scale: bool = False
    expected_gpu_minutes: float | None = None


@dataclass(frozen=True)
class ZooConfig:
    """A validated zoo config."""

    name: str
    description: str
    dataset: DatasetConfig
    splits: SplitConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    accuracy_margin: float
    latency_margin: float
    models: tuple[ModelConfig, ...]
    reference_profile: str | None
    config_hash: str
    source: str
    image: ImageConfig = ImageConfig()
    build: BuildConfig = BuildConfig()

    @property
    def directory_name(self) -> str:
        return f"{self.name}-{self.config_hash[:12]}"


def load_zoo_config(name_or_path: str | Path) -> ZooConfig:
    """Load and validate a zoo config by shipped name or path."""
    path = resolve_config("zoos", name_or_path)
    raw = read_toml(path)
    validate(raw, "zoo", str(path))
    ids = [m["id"] for m in raw["models"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: field 'models': duplicate model id(s) {', '.join(duplicates)}")
    import timm

    for index, model in enumerate(raw["models"]):
        if not timm.is_model(model["arch"]):
            raise ConfigError(f"{path}: field 'models.{index}.arch': unknown timm architecture '{model['arch']}'")
        if ("." in model["arch"] or model.get("pretrained")) and not timm.list_pretrained(model["arch"]):
            raise ConfigError(f"{path}: field 'models.{index}.arch': timm publishes no weights named "
                              f"'{model['arch']}' (see timm.list_pretrained('{model['arch'].split('.')[0]}*'))")
    preprocess = raw["preprocess"]
    if len(preprocess["mean"]) != len(preprocess["std"]):
        raise ConfigError(f"{path}: field 'preprocess': mean and std must have the same length")
    image = ImageConfig(channels=preprocess.get("channels"), resize=preprocess.get("resize"),
                        size=preprocess.get("size"), interpolation=preprocess.get("interpolation", "bicubic"))
    if image.channels is not None and len(preprocess["mean"]) not in (1, image.channels):
        raise ConfigError(f"{path}: field 'preprocess.mean': {len(preprocess['mean'])} values for "
                          f"{image.channels} channels (give 1 or {image.channels})")
    return ZooConfig(
        name=raw["name"], description=raw.get("description", ""),
        dataset=DatasetConfig(**{"local_dir": "", **raw["dataset"]}), splits=SplitConfig(**raw["splits"]),
        mean=tuple(preprocess["mean"]), std=tuple(preprocess["std"]),
        accuracy_margin=raw["service"]["accuracy_margin"], latency_margin=raw["service"]["latency_margin"],
        models=tuple(ModelConfig(m["id"], m["arch"], dict(m.get("kwargs", {})), TrainConfig(**m["train"]),
                                 pretrained=m.get("pretrained", False), input_size=m.get("input_size"))
                     for m in raw["models"]),
        reference_profile=raw.get("reference_profile"),
        # the reference profile routes and [build] says where to train; neither determines what
        # is trained: keep them out of the hash (absent optional fields leave the hash unchanged)
        config_hash=content_hash({k: v for k, v in raw.items()
                                  if k not in ("description", "reference_profile", "build")}),
        source=str(path),
        image=image, build=BuildConfig(**raw.get("build", {})),
    )


class ZooModel(torch.nn.Module):
    """A timm network behind the zoo's input normalisation: raw [0, 1] inputs in, logits out."""

    def __init__(self, arch: str, kwargs: dict[str, Any], in_chans: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], input_size: int | None = None, *,
                 pretrained: bool = False, pretrained_file: str | None = None):
        """Create the network.

        Args:
            arch: timm architecture (optionally with a pretrained tag, ``resnet18.a1_in1k``).
            kwargs: keyword arguments for ``timm.create_model``.
            in_chans: input channels.
            num_classes: output classes.
            mean: per-channel mean of the input normalisation.
            std: per-channel std of the input normalisation.
            input_size: resize inputs to this square side first (bilinear), if given.
            pretrained: start from timm's published weights (downloaded by timm if needed).
            pretrained_file: with ``pretrained``, a local copy of those weights to load instead.
        """
        super().__init__()
        import timm

        overlay = {"file": pretrained_file} if pretrained and pretrained_file else None
        self.net = timm.create_model(arch, pretrained=pretrained, pretrained_cfg_overlay=overlay, in_chans=in_chans,
                                     num_classes=num_classes, **kwargs)
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < min(x.shape[-2:]))
        return self.net((x - self.mean) / self.std)


def pareto_frontier(accuracies: Sequence[float], latencies: Sequence[float]) -> list[int]:
    """Indices of models not dominated in (higher accuracy, lower latency), fastest first.

    A model is dominated when another is at least as accurate and at least as fast, and strictly
    better in one of the two.
    """
    frontier = []
    for i, (acc_i, lat_i) in enumerate(zip(accuracies, latencies)):
        dominated = any(
            acc_j >= acc_i and lat_j <= lat_i and (acc_j > acc_i or lat_j < lat_i)
            for j, (acc_j, lat_j) in enumerate(zip(accuracies, latencies)) if j != i)
        if not dominated:
            frontier.append(i)
    return sorted(frontier, key=lambda i: (latencies[i], accuracies[i]))


def service_ranges(accuracies: Sequence[float], latencies: Sequence[float], accuracy_margin: float,
                   latency_margin: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The spec ranges the owner advertises: the menu's span widened by the config's margins."""
    def down(x: float) -> float:  # to 2 decimals, ignoring float noise such as 0.96000000001
        return math.floor(round(x * 100, 6)) / 100

    def up(x: float) -> float:
        return math.ceil(round(x * 100, 6)) / 100

    acc_low = max(0.0, down(min(accuracies) - accuracy_margin))
    acc_high = min(1.0, up(max(accuracies) + accuracy_margin))
    lat_low, lat_high = down(min(latencies) / (1 + latency_margin)), up(max(latencies) * (1 + latency_margin))
    return (acc_low, acc_high), (max(lat_low, 0.01), lat_high)


def _count_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    return int(counter.get_total_flops() // 2)


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


def _train(model: ZooModel, x: torch.Tensor, y: torch.Tensor, recipe: TrainConfig, label: str,
           progress: bool, device: torch.device | None = None, amp: str = "none") -> None:
    """Train ``model`` in place (AdamW, one-cycle, cross-entropy) on ``device``; ``amp`` is the
    mixed precision on a GPU (``bf16``, ``fp16`` with loss scaling, or ``none``)."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(recipe.seed)
    n = min(recipe.samples, len(y))
    steps = max(1, math.ceil(math.ceil(n / recipe.batch_size) * recipe.epochs))
    if device.type != "cpu":
        model.to(device)
        if x.element_size() * x.nelement() <= 4 * 2 ** 30:  # keep the owner split on the GPU when it fits easily
            x, y = x.to(device), y.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    augment = recipe.augment if recipe.augment != "none" else None
    augment_generator = torch.Generator().manual_seed(int(np.random.SeedSequence([recipe.seed, 1]).generate_state(1)[0]))
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


class PretrainedWeights:
    """Finds timm's published weights for a build: the local Hugging Face cache first, then the
    Hub. After the Hub fails once, later models of the build do not try it again (each failure
    costs timm's retries), they use the cache or train from scratch."""

    def __init__(self) -> None:
        self.hub_error: str | None = None

    @staticmethod
    def cached_file(arch: str) -> tuple[str, str | None]:
        """(Hub id of the weights, path of a local copy in the Hugging Face cache or None)."""
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) or arch
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                      "pytorch_model.bin"]
        for name in names:
            path = try_to_load_from_cache(hub_id, name)
            if isinstance(path, str) and os.path.isfile(path):
                return hub_id, path
        return hub_id, None

    def create(self, model_cfg: ModelConfig, in_chans: int, num_classes: int, mean: Sequence[float],
               std: Sequence[float]) -> tuple[ZooModel, dict[str, Any] | None]:
        """The model, initialised as its config asks, and the card's ``init`` record (or None)."""
        def scratch() -> ZooModel:
            return ZooModel(model_cfg.arch, model_cfg.kwargs, in_chans, num_classes, mean, std, model_cfg.input_size)

        if not model_cfg.pretrained:
            return scratch(), None
        hub_id, cached = self.cached_file(model_cfg.arch)
        if cached is not None:
            model = ZooModel(model_cfg.arch, model_cfg.kwargs, in_chans, num_classes, mean, std,
                             model_cfg.input_size, pretrained=True, pretrained_file=cached)
            return model, {"pretrained": True, "weights": hub_id, "from": "cache"}
        if self.hub_error is None:
            try:
                model = ZooModel(model_cfg.arch, model_cfg.kwargs, in_chans, num_classes, mean, std,
                                 model_cfg.input_size, pretrained=True)
                return model, {"pretrained": True, "weights": hub_id, "from": "hub"}
            except OSError as error:  # no network, Hub down, file missing: weights unreachable
                text = str(error).strip()
                self.hub_error = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        log.warning("model %s: timm's published weights %s are not reachable (%s); training it from scratch",
                    model_cfg.id, hub_id, self.hub_error)
        return scratch(), {"pretrained": False, "weights": hub_id,
                           "reason": f"weights not in the local Hugging Face cache and the Hub failed: {self.hub_error}"}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reference_profile(name: str | None) -> Path | None:
    """The committed reference profile ``name``, or None (with a warning) if there is none."""
    if not name:
        return None
    path = reference_profile_path(name)
    if path.is_file():
        return path
    log.warning("reference profile %s is missing; routing on the latencies measured at build time", path)
    return None


def _train_steps(recipe: TrainConfig, owner_size: int) -> int:
    n = min(recipe.samples, owner_size)
    return max(1, math.ceil(math.ceil(n / recipe.batch_size) * recipe.epochs))


def estimate_train_seconds(config: ZooConfig, device: torch.device, input_shape: Sequence[int],
                           num_classes: int) -> dict[str, float]:
    """Expected training time of each model on ``device``, from one timed step on random inputs.

    A step at a small batch (at most 8) is timed (the faster of two, after one untimed step) and
    scaled linearly to the recipe's batch size and number of steps; the estimate ignores
    evaluation and data loading, so it is a lower bound of the same order as the build.
    """
    estimates = {}
    generator = torch.Generator().manual_seed(0)
    for model_cfg in config.models:
        recipe = model_cfg.train
        batch = min(recipe.batch_size, 8)
        with torch.random.fork_rng():
            torch.manual_seed(recipe.seed)
            model = ZooModel(model_cfg.arch, model_cfg.kwargs, int(input_shape[0]), num_classes, config.mean,
                             config.std, model_cfg.input_size).to(device)
        x = torch.rand((batch, *input_shape), generator=generator).to(device)
        y = torch.arange(batch).remainder(num_classes).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
        timings = []
        for _ in range(3):  # the first step sets kernels up; the faster of the other two counts
            start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append(time.perf_counter() - start)
        seconds = min(timings[1:])
        estimates[model_cfg.id] = seconds / batch * recipe.batch_size * _train_steps(recipe, config.splits.owner)
    return estimates


def _format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _warn_cpu_build(config: ZooConfig, device: torch.device, input_shape: Sequence[int], num_classes: int) -> None:
    log.warning("zoo %s is GPU-scale and is about to be built on the CPU; estimating how long that takes "
                "(one training step per model)", config.name)
    estimate = sum(estimate_train_seconds(config, device, input_shape, num_classes).values())
    gpu = (f"; on one GPU it takes about {_format_duration(config.build.expected_gpu_minutes * 60)}"
           if config.build.expected_gpu_minutes else "")
    log.warning("zoo %s is GPU-scale: training it on this CPU (%d threads) takes about %s (measured from one "
                "training step per model)%s. Build it on a GPU with `psml-bench zoo build %s --device cuda`, "
                "or interrupt now.", config.name, torch.get_num_threads(), _format_duration(estimate), gpu,
                config.name)


def _card_train(recipe: TrainConfig) -> dict[str, Any]:
    # fields at their "off" value are left out, so cards of configs without them do not change
    return {k: v for k, v in vars(recipe).items() if not (k == "augment" and v == "none")}


def build_zoo(config: ZooConfig, cache_dir: Path | None = None, *, progress: bool = True,
              force: bool = False, data: str | None = None, device: str | None = None) -> Path:
    """Train and measure every model of ``config``; return the zoo directory.

    The zoo is written to a temporary directory and moved into place at the end, so an
    interrupted build never leaves a half-written zoo behind.

    Args:
        config: the zoo config.
        cache_dir: the cache root (default :func:`default_cache_dir`).
        progress: show progress bars.
        force: rebuild even if the zoo is cached.
        data: a local copy of the dataset (see :func:`psml_bench._data.load_dataset`).
        device: ``cpu``, ``cuda[:N]`` or ``auto``; default the config's ``build.device``. On a GPU
            training uses mixed precision (``build.amp``); test predictions are full precision.
    """
    root = (cache_dir or default_cache_dir()) / "zoos"
    target = root / config.directory_name
    if (target / "card.json").is_file() and not force:
        return target
    torch_device = resolve_device(device or config.build.device)
    amp = resolve_amp(config.build.amp, torch_device)
    root.mkdir(parents=True, exist_ok=True)
    dataset, source = load_dataset(config.dataset, data)
    splits = make_splits(dataset, config.splits, config.image)
    in_chans = splits.owner_x.shape[1]
    num_classes = max(config.dataset.num_classes or 0, int(splits.owner_y.max()) + 1)
    if torch_device.type == "cpu" and config.build.gpu_scale:  # data problems first, then the warning
        _warn_cpu_build(config, torch_device, tuple(splits.owner_x.shape[1:]), num_classes)
    work = Path(tempfile.mkdtemp(prefix=f".{config.directory_name}-", dir=root))
    (work / "weights").mkdir()
    cards, predictions = [], {}
    weights_source = PretrainedWeights()
    models_bar = tqdm(config.models, desc=f"zoo {config.name}", disable=not progress, unit="model")
    for model_cfg in models_bar:
        with torch.random.fork_rng():
            torch.manual_seed(model_cfg.train.seed)
            model, init = weights_source.create(model_cfg, in_chans, num_classes, config.mean, config.std)
        start = time.perf_counter()
        _train(model, splits.owner_x, splits.owner_y, model_cfg.train, model_cfg.id, progress, torch_device, amp)
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        train_seconds = time.perf_counter() - start
        probs = predict_proba(model, splits.test_x, config.build.eval_batch_size)
        predictions[model_cfg.id] = probs
        accuracy = float((probs.argmax(1) == splits.test_y).float().mean())
        example = splits.test_x[:1].to(torch_device)
        latency = measure_latency(model, example)
        weights_path = work / "weights" / f"{model_cfg.id}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights_path))
        entry = {
            "id": model_cfg.id, "arch": model_cfg.arch, "kwargs": model_cfg.kwargs,
            "params": sum(p.numel() for p in model.parameters()), "macs": _count_macs(model, example),
            "accuracy": round(accuracy, 6),
            "latency": {**latency.as_dict(), "batch_size": 1, **environment(torch_device)},
            "weights_sha256": _sha256_file(weights_path), "train": _card_train(model_cfg.train),
            "train_seconds": round(train_seconds, 2),
        }
        if model_cfg.input_size is not None:
            entry["input_size"] = model_cfg.input_size
        if init is not None:
            entry["init"] = init
        cards.append(entry)
        model.to("cpu")
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
        models_bar.set_postfix(last=f"{model_cfg.id} acc={accuracy:.3f} p50={latency.p50_ms:.2f}ms")
    reference = _reference_profile(config.reference_profile)
    latencies = ({c["id"]: c["latency"]["p50_ms"] for c in cards} if reference is None
                 else routing_latencies(load_profile(reference), [c["id"] for c in cards], str(reference)))
    accuracies = [c["accuracy"] for c in cards]
    ordered = [latencies[c["id"]] for c in cards]
    accuracy_range, latency_range = service_ranges(accuracies, ordered, config.accuracy_margin, config.latency_margin)
    import timm

    preprocess: dict[str, Any] = {"mean": list(config.mean), "std": list(config.std)}
    if config.image.active:
        preprocess.update({k: v for k, v in vars(config.image).items() if v is not None})
    card = {
        "card_version": 1, "zoo": config.name, "description": config.description,
        "config_hash": config.config_hash,
        "dataset": {"name": config.dataset.name, "source": source},
        "splits": {"seed": config.splits.seed, **splits.summary()},
        "input_shape": list(splits.owner_x.shape[1:]), "num_classes": num_classes,
        "class_names": list(splits.class_names),
        "preprocess": preprocess,
        "models": cards,
        "frontier": [cards[i]["id"] for i in pareto_frontier(accuracies, ordered)],
        "service": {"profile": reference.name if reference else "measured",
                    "reference_profile": config.reference_profile,
                    "accuracy_margin": config.accuracy_margin, "latency_margin": config.latency_margin,
                    "accuracy_range": list(accuracy_range), "latency_range_ms": list(latency_range)},
        "environment": {**environment(), "timm": timm.__version__,
                        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    if torch_device.type != "cpu":
        card["build"] = {"device": str(environment(torch_device)["device"]), "amp": amp}
    validate(card, "card", "zoo card")
    save_file({k: v.contiguous() for k, v in predictions.items()}, str(work / "predictions.safetensors"))
    save_file({"owner_x": splits.owner_x, "owner_y": splits.owner_y, "attacker_x": splits.attacker_x,
               "benign_x": splits.benign_x, "test_x": splits.test_x, "test_y": splits.test_y},
              str(work / "splits.safetensors"))
    (work / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(work, target)
    return target


@dataclass(frozen=True)
class MenuEntry:
    """What the serving system knows of one model: its accuracy and routing latency."""

    id: str
    accuracy: float
    latency_ms: float


class Zoo:
    """A built zoo opened for serving and scoring, routed on one latency profile."""

    def __init__(self, directory: Path, profile_path: Path | None = None):
        self.directory = Path(directory)
        card_path = self.directory / "card.json"
        try:
            self.card: dict[str, Any] = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise PsmlError(f"{self.directory} holds no built zoo (no card.json); run `psml-bench zoo build`") from None
        validate(self.card, "card", str(card_path))
        ids = [m["id"] for m in self.card["models"]]
        service = self.card["service"]
        if profile_path is None:
            profile_path = _reference_profile(service["reference_profile"])
        if profile_path is None:
            self.profile_name = "measured"
            latencies = {m["id"]: m["latency"]["p50_ms"] for m in self.card["models"]}
        else:
            self.profile_name = Path(profile_path).name
            latencies = routing_latencies(load_profile(Path(profile_path)), ids, str(profile_path))
        self.menu: tuple[MenuEntry, ...] = tuple(
            MenuEntry(m["id"], m["accuracy"], latencies[m["id"]]) for m in self.card["models"])
        accuracies = [e.accuracy for e in self.menu]
        routing = [e.latency_ms for e in self.menu]
        self.frontier: tuple[str, ...] = tuple(self.menu[i].id for i in pareto_frontier(accuracies, routing))
        # the advertised ranges follow the menu the service routes on
        self.accuracy_range, self.latency_range_ms = service_ranges(
            accuracies, routing, service["accuracy_margin"], service["latency_margin"])
        self._models: dict[str, ZooModel] = {}

    @property
    def name(self) -> str:
        return self.card["zoo"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.card["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])

    @property
    def card_hash(self) -> str:
        """Content hash of the card: changes whenever any weight, accuracy or split changes."""
        return content_hash(self.card)

    def role(self, role: str) -> str:
        """Resolve a victim role ``rank:k`` to a model id: the k-th most accurate frontier model."""
        ranked = sorted(self.frontier, key=lambda i: -self.entry(i).accuracy)
        try:
            kind, value = role.split(":")
            rank = int(value)
            if kind != "rank" or not 1 <= rank <= len(ranked):
                raise ValueError
        except ValueError:
            raise ConfigError(f"victim role '{role}' is invalid: expected rank:k with 1 <= k <= "
                              f"{len(ranked)} (the zoo's frontier has {len(ranked)} models)") from None
        return ranked[rank - 1]

    def entry(self, model_id: str) -> MenuEntry:
        return next(e for e in self.menu if e.id == model_id)

    def model(self, model_id: str) -> ZooModel:
        """The model with trained weights, loaded once and kept."""
        if model_id not in self._models:
            spec = next(m for m in self.card["models"] if m["id"] == model_id)
            model = ZooModel(spec["arch"], spec["kwargs"], self.input_shape[0], self.num_classes,
                             self.card["preprocess"]["mean"], self.card["preprocess"]["std"], spec.get("input_size"))
            model.load_state_dict(load_file(str(self.directory / "weights" / f"{model_id}.safetensors")))
            self._models[model_id] = model.eval()
        return self._models[model_id]

    @cached_property
    def splits(self) -> dict[str, torch.Tensor]:
        """owner_x/owner_y/attacker_x/benign_x/test_x/test_y tensors."""
        return load_file(str(self.directory / "splits.safetensors"))

    @cached_property
    def test_predictions(self) -> dict[str, torch.Tensor]:
        """Each model's softmax outputs on the test split."""
        return load_file(str(self.directory / "predictions.safetensors"))


def zoo_directory(config: ZooConfig, cache_dir: Path | None = None) -> Path:
    """Where the zoo of ``config`` is (or would be) built."""
    return (cache_dir or default_cache_dir()) / "zoos" / config.directory_name


def open_zoo(name_or_path: str | Path, cache_dir: Path | None = None, *, build: bool = True,
             progress: bool = True, profile: Path | None = None, data: str | None = None,
             device: str | None = None) -> Zoo:
    """Open a zoo by config name or path, building it first if it is not in the cache.

    ``data`` (a local copy of the dataset) and ``device`` are passed to :func:`build_zoo`.
    """
    config = load_zoo_config(name_or_path)
    directory = zoo_directory(config, cache_dir)
    if not (directory / "card.json").is_file():
        if not build:
            raise PsmlError(f"zoo {config.name} is not built; run `psml-bench zoo build {config.name}`")
        build_zoo(config, cache_dir, progress=progress, data=data, device=device)
    return Zoo(directory, profile)


PROFILE_CHOICES = ("reference", "cpu", "cuda")


def measured_profile_path(config: ZooConfig, kind: str, cache_dir: Path | None = None) -> Path:
    """Where ``psml-bench zoo profile`` writes a profile of ``kind`` (cpu or cuda) by default."""
    return (cache_dir or default_cache_dir()) / "profiles" / f"{config.directory_name}-{kind}.json"


def committed_profiles(config: ZooConfig) -> list[Path]:
    """The profiles committed in the package for this zoo: its reference profile and
    ``<zoo>-cpu.json`` / ``<zoo>-cuda.json`` where they exist."""
    names = [config.reference_profile] if config.reference_profile else []
    names += [f"{config.name}-{kind}.json" for kind in ("cpu", "cuda")]
    paths = [reference_profile_path(name) for name in dict.fromkeys(names)]
    return [path for path in paths if path.is_file()]


def resolve_profile(config: ZooConfig, choice: str | None, cache_dir: Path | None = None) -> Path | None:
    """The profile file a run routes on, from ``--profile reference|cpu|cuda|PATH``.

    ``None`` keeps the default (the reference profile, else the latencies measured at build).
    ``reference`` is the committed reference profile. ``cpu``/``cuda`` is the committed profile
    measured on that kind of device, else the one ``psml-bench zoo profile --device KIND``
    measured for this zoo into the cache. Anything else is a path.

    Raises:
        ConfigError: the chosen profile does not exist; the message says how to make one.
    """
    if not choice:
        return None
    if choice == "reference":
        path = reference_profile_path(config.reference_profile) if config.reference_profile else None
        if path is None or not path.is_file():
            raise ConfigError(f"zoo {config.name} has no committed reference profile ({config.source}: field "
                              f"'reference_profile' is {config.reference_profile!r}); use --profile cpu, cuda or PATH")
        return path
    if choice in ("cpu", "cuda"):
        for path in committed_profiles(config):
            if profile_device_kind(load_profile(path)) == choice:
                return path
        measured = measured_profile_path(config, choice, cache_dir)
        if measured.is_file():
            return measured
        raise ConfigError(f"zoo {config.name} has no {choice} latency profile: none is committed "
                          f"(psml_bench/profiles/{config.name}-{choice}.json) and none was measured ({measured}); "
                          f"measure one with `psml-bench zoo profile {config.name} --device {choice}`")
    path = Path(choice)
    if not path.is_file():
        raise ConfigError(f"{path}: no such latency profile (use reference, cpu, cuda or a profile file)")
    return path


def profile_zoo(name_or_path: str | Path, cache_dir: Path | None = None, *, device: str = "cpu",
                precision: str = "fp32", batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, warmup: int = 20,
                repeats: int = 200, untrained: bool = False, data: str | None = None,
                progress: bool = True) -> dict:
    """Measure a latency profile of every model of a zoo (see :func:`psml_bench._profiling.profile_model`).

    Args:
        name_or_path: the zoo config.
        cache_dir: the cache root.
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch_sizes: batch sizes to time; must include 1.
        warmup: untimed calls per batch size.
        repeats: timed calls per batch size.
        untrained: profile freshly initialised models on random inputs of the zoo's declared
            input shape, without data or a build (latency does not depend on weight values);
            otherwise the built zoo (built first if needed) on its test inputs.
        data: a local copy of the dataset, if the zoo must be built first.
        progress: show progress bars.

    Returns:
        The profile document (``schemas/profile.schema.json``).
    """
    config = load_zoo_config(name_or_path)
    torch_device = resolve_device(device)
    models: dict[str, torch.nn.Module] = {}
    provenance: dict[str, Any] = {"config": config.name, "config_hash": config.config_hash}
    if untrained:
        shape, num_classes = config.image.input_shape(), config.dataset.num_classes
        if shape is None or num_classes is None:
            raise ConfigError(f"{config.source}: profiling zoo {config.name} without data needs its input shape and "
                              "classes: set preprocess.channels, preprocess.size and dataset.num_classes")
        for model_cfg in config.models:
            with torch.random.fork_rng():
                torch.manual_seed(model_cfg.train.seed)
                models[model_cfg.id] = ZooModel(model_cfg.arch, model_cfg.kwargs, shape[0], num_classes, config.mean,
                                                config.std, model_cfg.input_size).eval()

        def make_input(batch_size: int) -> torch.Tensor:
            return torch.rand((batch_size, *shape), generator=torch.Generator().manual_seed(batch_size))
    else:
        zoo = open_zoo(name_or_path, cache_dir, progress=progress, data=data)
        provenance.update(zoo_dir=str(zoo.directory), card_hash=zoo.card_hash)
        models = {entry.id: zoo.model(entry.id) for entry in zoo.menu}
        pool = zoo.splits["test_x"]

        def make_input(batch_size: int) -> torch.Tensor:
            reps = -(-batch_size // len(pool))
            return pool[:batch_size] if reps == 1 else pool.repeat(reps, 1, 1, 1)[:batch_size]
    entries = {}
    bar = tqdm(models.items(), desc=f"profile {config.name} on {torch_device}", disable=not progress, unit="model")
    for model_id, model in bar:
        entries[model_id] = profile_model(model, make_input, torch_device, precision=precision,
                                          batch_sizes=batch_sizes, warmup=warmup, repeats=repeats)
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
    return make_batch_profile(config.name, entries, torch_device, precision=precision, batch_sizes=batch_sizes,
                              warmup=warmup, repeats=repeats, weights="untrained" if untrained else "trained",
                              provenance=provenance)
