"""Latency profile choice: which profile a run routes on, measuring one for a zoo, and a profile as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from ..common.device import intra_op_threads
from ..contract.errors import ConfigError
from .profiling import (DEFAULT_BATCH_SIZES, load_profile, make_batch_profile, profile_device_kind, profile_model,
    reference_profile_path, resolve_device)
from .model_zoo import ZooModel
from .build import open_zoo
from .config import ZooConfig, default_cache_dir, load_zoo_config


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
                progress: bool = True, threads: int | None = None) -> dict:
    """Measure a latency profile of every model of a zoo (see :func:`psml_bench.zoo.profiling.profile_model`).

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
        threads: intra-op threads of every timed call (recorded in the profile); default: torch's current count.

    Returns:
        The profile document (``schemas/profile.schema.json``).
    """
    config = load_zoo_config(name_or_path)
    torch_device = resolve_device(device)
    provenance: dict[str, Any] = {"config": config.name, "config_hash": config.config_hash}
    if untrained:
        models, make_input = _untrained_models(config)
    else:
        zoo = open_zoo(name_or_path, cache_dir, progress=progress, data=data)
        provenance.update(zoo_dir=str(zoo.directory), card_hash=zoo.card_hash)
        models = {entry.id: zoo.model(entry.id) for entry in zoo.menu}
        pool = zoo.splits["test_x"]

        def make_input(batch_size: int) -> torch.Tensor:
            reps = -(-batch_size // len(pool))
            return pool[:batch_size] if reps == 1 else pool.repeat(reps, 1, 1, 1)[:batch_size]
    entries = {}
    with intra_op_threads(threads or torch.get_num_threads()):
        bar = tqdm(models.items(), desc=f"profile {config.name} on {torch_device}", disable=not progress, unit="model")
        for model_id, model in bar:
            entries[model_id] = profile_model(model, make_input, torch_device, precision=precision,
                                              batch_sizes=batch_sizes, warmup=warmup, repeats=repeats)
            if torch_device.type == "cuda":
                torch.cuda.empty_cache()
        return make_batch_profile(config.name, entries, torch_device, precision=precision, batch_sizes=batch_sizes,
                                  warmup=warmup, repeats=repeats, weights="untrained" if untrained else "trained",
                                  provenance=provenance)


def _untrained_models(config: ZooConfig) -> tuple[dict[str, torch.nn.Module], Callable[[int], torch.Tensor]]:
    """Freshly initialised models of ``config`` (each seeded as its training is) and random inputs of its declared
    shape, one fixed-seed batch per batch size."""
    shape, num_classes = config.image.input_shape(), config.dataset.num_classes
    if shape is None or num_classes is None:
        raise ConfigError(f"{config.source}: profiling zoo {config.name} without data needs its input shape and "
                          "classes: set preprocess.channels, preprocess.size and dataset.num_classes")
    models: dict[str, torch.nn.Module] = {}
    for model_cfg in config.models:
        with torch.random.fork_rng():
            torch.manual_seed(model_cfg.train.seed)
            models[model_cfg.id] = ZooModel(model_cfg.arch, model_cfg.kwargs, shape[0], num_classes, config.mean,
                                            config.std, model_cfg.input_size).eval()

    def make_input(batch_size: int) -> torch.Tensor:
        return torch.rand((batch_size, *shape), generator=torch.Generator().manual_seed(batch_size))

    return models, make_input


def profile_table(path: Path) -> str:
    """A profile file as ``zoo show`` prints it: its device and measurement, then a table of its models."""
    profile = load_profile(path)
    details = [str(profile["device"])]
    details += [f"{key} {profile[key]}" for key in ("precision", "driver", "cuda", "weights") if key in profile]
    details.append(f"measured {profile.get('measured_at', '?')}")
    per_batch = any("batches" in entry for entry in profile["models"].values())
    headers = ["model", "p50 ms (batch 1)", "p90 ms", "p99 ms"]
    if per_batch:
        headers += ["largest batch", "its p50 ms", "fit slope ms/input", "fit intercept ms", "fit r2"]
    rows = []
    for model_id, entry in profile["models"].items():
        row = [model_id, entry["p50_ms"], entry["p90_ms"], entry["p99_ms"]]
        if per_batch:
            fit = entry.get("fit", {})
            largest = max((int(b) for b in entry.get("batches", {})), default=None)
            row += [largest or "", entry["batches"][str(largest)]["p50_ms"] if largest else "",
                    fit.get("slope_ms", ""), fit.get("intercept_ms", ""), fit.get("r2", "")]
        rows.append(row)
    table = tabulate(rows, headers=headers, tablefmt="github")
    return f"profile {path.name} ({', '.join(details)}):\n{table}"
