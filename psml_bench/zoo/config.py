"""Zoo configs: the TOML that names a zoo's dataset, models and recipes, and where its build lives.

A zoo config (TOML, ``schemas/zoo.schema.json``) names a dataset and timm architectures with
their training recipes; :func:`load_zoo_config` validates it into a frozen :class:`ZooConfig`
whose content hash names the zoo's directory in the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.files import content_hash, read_toml, resolve_config, validate
from .data import DatasetConfig, ImageConfig, SplitConfig
from ..contract.errors import ConfigError


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
    threads: int = 1
    kernels: str = "portable"
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


def _portable(build: dict[str, Any]) -> bool:
    """Whether a ``[build]`` table asks for a CPU build with portable kernels (the default)."""
    return build.get("kernels", BuildConfig.kernels) == "portable" and build.get("device", BuildConfig.device) == "cpu"


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
        # is trained: keep them out of the hash (absent optional fields leave the hash unchanged),
        # except a CPU build's portable kernels, which give other weights than the native ones
        config_hash=content_hash({**{k: v for k, v in raw.items()
                                     if k not in ("description", "reference_profile", "build")},
                                  **({"kernels": "portable"} if _portable(raw.get("build", {})) else {})}),
        source=str(path),
        image=image, build=BuildConfig(**raw.get("build", {})),
    )


def zoo_directory(config: ZooConfig, cache_dir: Path | None = None) -> Path:
    """Where the zoo of ``config`` is (or would be) built."""
    return (cache_dir or default_cache_dir()) / "zoos" / config.directory_name
