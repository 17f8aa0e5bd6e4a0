"""Model zoos: config, training, zoo cards, the on-disk cache and the Pareto frontier.

A zoo config (TOML, ``schemas/zoo.schema.json``) names a dataset and timm architectures with
their training recipes. ``build_zoo`` trains every model on the ``owner`` split, measures its
test accuracy and batch-1 latency and writes, into ``<cache>/zoos/<name>-<hash>/``:

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
from dataclasses import dataclass, field
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
from ._data import DatasetConfig, SplitConfig, Splits, load_dataset, make_splits
from ._errors import ConfigError, PsmlError
from ._profiling import (environment, load_profile, measure_latency, reference_profile_path,
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


@dataclass(frozen=True)
class ModelConfig:
    """One zoo member: an id, a timm architecture with kwargs, and its recipe."""

    id: str
    arch: str
    kwargs: dict[str, Any]
    train: TrainConfig


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
    if len(raw["preprocess"]["mean"]) != len(raw["preprocess"]["std"]):
        raise ConfigError(f"{path}: field 'preprocess': mean and std must have the same length")
    return ZooConfig(
        name=raw["name"], description=raw.get("description", ""),
        dataset=DatasetConfig(**raw["dataset"]), splits=SplitConfig(**raw["splits"]),
        mean=tuple(raw["preprocess"]["mean"]), std=tuple(raw["preprocess"]["std"]),
        accuracy_margin=raw["service"]["accuracy_margin"], latency_margin=raw["service"]["latency_margin"],
        models=tuple(ModelConfig(m["id"], m["arch"], dict(m.get("kwargs", {})), TrainConfig(**m["train"]))
                     for m in raw["models"]),
        reference_profile=raw.get("reference_profile"),
        # the reference profile routes, it does not determine weights: keep it out of the hash
        config_hash=content_hash({k: v for k, v in raw.items() if k not in ("description", "reference_profile")}),
        source=str(path),
    )


class ZooModel(torch.nn.Module):
    """A timm network behind the zoo's input normalisation: raw [0, 1] inputs in, logits out."""

    def __init__(self, arch: str, kwargs: dict[str, Any], in_chans: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        import timm

        self.net = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def _train(model: ZooModel, x: torch.Tensor, y: torch.Tensor, recipe: TrainConfig, label: str,
           progress: bool) -> None:
    generator = torch.Generator().manual_seed(recipe.seed)
    n = min(recipe.samples, len(y))
    steps = max(1, math.ceil(math.ceil(n / recipe.batch_size) * recipe.epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    model.train()
    with tqdm(total=steps, desc=f"train {label}", disable=not progress, leave=False, unit="step") as bar:
        done = 0
        while done < steps:
            order = torch.randperm(len(y), generator=generator)[:n]
            for start in range(0, n, recipe.batch_size):
                if done == steps:
                    break
                batch = order[start:start + recipe.batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
                bar.update()
    model.eval()


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax outputs of ``model`` on ``x``, in eval mode, batched."""
    model.eval()
    return torch.cat([F.softmax(model(x[i:i + batch_size]).float(), dim=1) for i in range(0, len(x), batch_size)])


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


def build_zoo(config: ZooConfig, cache_dir: Path | None = None, *, progress: bool = True,
              force: bool = False) -> Path:
    """Train and measure every model of ``config``; return the zoo directory.

    The zoo is written to a temporary directory and moved into place at the end, so an
    interrupted build never leaves a half-written zoo behind.
    """
    root = (cache_dir or default_cache_dir()) / "zoos"
    target = root / config.directory_name
    if (target / "card.json").is_file() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    dataset, source = load_dataset(config.dataset)
    splits = make_splits(dataset, config.splits)
    in_chans, num_classes = splits.owner_x.shape[1], int(splits.owner_y.max()) + 1
    work = Path(tempfile.mkdtemp(prefix=f".{config.directory_name}-", dir=root))
    (work / "weights").mkdir()
    cards, predictions = [], {}
    models_bar = tqdm(config.models, desc=f"zoo {config.name}", disable=not progress, unit="model")
    for model_cfg in models_bar:
        with torch.random.fork_rng():
            torch.manual_seed(model_cfg.train.seed)
            model = ZooModel(model_cfg.arch, model_cfg.kwargs, in_chans, num_classes, config.mean, config.std)
        start = time.perf_counter()
        _train(model, splits.owner_x, splits.owner_y, model_cfg.train, model_cfg.id, progress)
        train_seconds = time.perf_counter() - start
        probs = predict_proba(model, splits.test_x)
        predictions[model_cfg.id] = probs
        accuracy = float((probs.argmax(1) == splits.test_y).float().mean())
        example = splits.test_x[:1]
        latency = measure_latency(model, example)
        weights_path = work / "weights" / f"{model_cfg.id}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
        cards.append({
            "id": model_cfg.id, "arch": model_cfg.arch, "kwargs": model_cfg.kwargs,
            "params": sum(p.numel() for p in model.parameters()), "macs": _count_macs(model, example),
            "accuracy": round(accuracy, 6), "latency": {**latency.as_dict(), "batch_size": 1, **environment()},
            "weights_sha256": _sha256_file(weights_path), "train": vars(model_cfg.train),
            "train_seconds": round(train_seconds, 2),
        })
        models_bar.set_postfix(last=f"{model_cfg.id} acc={accuracy:.3f} p50={latency.p50_ms:.2f}ms")
    reference = _reference_profile(config.reference_profile)
    latencies = ({c["id"]: c["latency"]["p50_ms"] for c in cards} if reference is None
                 else routing_latencies(load_profile(reference), [c["id"] for c in cards], str(reference)))
    accuracies = [c["accuracy"] for c in cards]
    ordered = [latencies[c["id"]] for c in cards]
    accuracy_range, latency_range = service_ranges(accuracies, ordered, config.accuracy_margin, config.latency_margin)
    import timm

    card = {
        "card_version": 1, "zoo": config.name, "description": config.description,
        "config_hash": config.config_hash,
        "dataset": {"name": config.dataset.name, "source": source},
        "splits": {"seed": config.splits.seed, **splits.summary()},
        "input_shape": list(splits.owner_x.shape[1:]), "num_classes": num_classes,
        "class_names": list(splits.class_names),
        "preprocess": {"mean": list(config.mean), "std": list(config.std)},
        "models": cards,
        "frontier": [cards[i]["id"] for i in pareto_frontier(accuracies, ordered)],
        "service": {"profile": reference.name if reference else "measured",
                    "reference_profile": config.reference_profile,
                    "accuracy_margin": config.accuracy_margin, "latency_margin": config.latency_margin,
                    "accuracy_range": list(accuracy_range), "latency_range_ms": list(latency_range)},
        "environment": {**environment(), "timm": timm.__version__,
                        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
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
                             self.card["preprocess"]["mean"], self.card["preprocess"]["std"])
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


def open_zoo(name_or_path: str | Path, cache_dir: Path | None = None, *, build: bool = True,
             progress: bool = True, profile: Path | None = None) -> Zoo:
    """Open a zoo by config name or path, building it first if it is not in the cache."""
    config = load_zoo_config(name_or_path)
    directory = (cache_dir or default_cache_dir()) / "zoos" / config.directory_name
    if not (directory / "card.json").is_file():
        if not build:
            raise PsmlError(f"zoo {config.name} is not built; run `psml-bench zoo build {config.name}`")
        build_zoo(config, cache_dir, progress=progress)
    return Zoo(directory, profile)
