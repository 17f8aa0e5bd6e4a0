"""Building zoos: training every model of a zoo config and writing its zoo card and weights.

``build_zoo`` trains every model on the ``owner`` split (on a GPU with mixed precision when the
config or the caller asks for one; models marked ``pretrained`` start from timm's published
weights when they are reachable), measures its test accuracy and batch-1 latency and writes,
into ``<cache>/zoos/<name>-<hash>/``:

- ``card.json``: the zoo card (``schemas/card.schema.json``),
- ``weights/<id>.safetensors``: the weights,
- ``splits.safetensors``: the benchmark splits, so later runs need not reload the dataset,
- ``predictions.safetensors``: each model's test-split probabilities (for fidelity).

``open_zoo`` opens a zoo by config, building it first if it is not in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..common.files import validate
from .data import Splits, load_dataset, make_splits
from ..contract.errors import PsmlError
from .kernels import build_environment, check_portable, training_environment
from .profiling import environment, load_profile, measure_latency, resolve_device, routing_latencies
from .model_zoo import Zoo, ZooModel, disagreement, pareto_frontier, reference_profile, service_ranges
from .config import ModelConfig, TrainConfig, ZooConfig, default_cache_dir, load_zoo_config, zoo_directory
from .train import TrainJob, parallel_workers, predict_proba, reproducible, resolve_amp, train_members, train_steps

log = logging.getLogger(__name__)


def _count_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    return int(counter.get_total_flops() // 2)


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
                           "reason": f"weights not in the local Hugging Face cache and the Hub failed: "
                                     f"{self.hub_error}"}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        estimates[model_cfg.id] = seconds / batch * recipe.batch_size * train_steps(recipe, config.splits.owner)
    return estimates


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: ``40 s``, ``12 min``, ``3.5 h``, ``2.0 days``."""
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
    gpu = (f"; on one GPU it takes about {format_duration(config.build.expected_gpu_minutes * 60)}"
           if config.build.expected_gpu_minutes else "")
    log.warning("zoo %s is GPU-scale: training it on this CPU (%d threads) takes about %s (measured from one "
                "training step per model)%s. Build it on a GPU with `psml-bench zoo build %s --device cuda`, "
                "or interrupt now.", config.name, torch.get_num_threads(), format_duration(estimate), gpu,
                config.name)


def _card_train(recipe: TrainConfig) -> dict[str, Any]:
    # fields at their "off" value are left out, so cards of configs without them do not change
    return {k: v for k, v in vars(recipe).items() if not (k == "augment" and v == "none")}


def build_zoo(config: ZooConfig, cache_dir: Path | None = None, *, progress: bool = True,
              force: bool = False, data: str | None = None, device: str | None = None,
              jobs: int | None = None) -> Path:
    """Train and measure every model of ``config``; return the zoo directory.

    The zoo is written to a temporary directory and moved into place at the end, so an
    interrupted build never leaves a half-written zoo behind. Training and evaluation run with
    the config's ``build.threads`` threads each and deterministic algorithms, so on a CPU the
    weights do not depend on the machine's core count or on ``jobs``.

    Args:
        config: the zoo config.
        cache_dir: the cache root (default :func:`default_cache_dir`).
        progress: show progress bars.
        force: rebuild even if the zoo is cached.
        data: a local copy of the dataset (see :func:`psml_bench.zoo.data.load_dataset`).
        device: ``cpu``, ``cuda[:N]`` or ``auto``; default the config's ``build.device``. On a GPU
            training uses mixed precision (``build.amp``); test predictions are full precision.
        jobs: models trained side by side in worker processes (default: cores // ``build.threads``;
            always 1 on a GPU).
    """
    root = (cache_dir or default_cache_dir()) / "zoos"
    target = root / config.directory_name
    if (target / "card.json").is_file() and not force:
        return target
    torch_device = resolve_device(device or config.build.device)
    if torch_device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace, set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    amp = resolve_amp(config.build.amp, torch_device)
    root.mkdir(parents=True, exist_ok=True)
    dataset, source = load_dataset(config.dataset, data)
    splits = make_splits(dataset, config.splits, config.image)
    in_chans = splits.owner_x.shape[1]
    num_classes = max(config.dataset.num_classes or 0, int(splits.owner_y.max()) + 1)
    with reproducible(config.build.threads):
        if torch_device.type == "cpu" and config.build.gpu_scale:  # data problems first, then the warning
            _warn_cpu_build(config, torch_device, tuple(splits.owner_x.shape[1:]), num_classes)
        work = Path(tempfile.mkdtemp(prefix=f".{config.directory_name}-", dir=root))
        try:
            card = _build_into(work, config, splits, source, in_chans, num_classes, torch_device, amp, progress, jobs)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    (work / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(work, target)
    return target


def _build_into(work: Path, config: ZooConfig, splits: Splits, source: str, in_chans: int, num_classes: int,
                torch_device: torch.device, amp: str, progress: bool, jobs: int | None) -> dict[str, Any]:
    """Write the splits, weights and predictions of ``config``'s zoo into ``work``; return its card."""
    (work / "weights").mkdir()
    (work / "initial").mkdir()
    save_file({"owner_x": splits.owner_x, "owner_y": splits.owner_y, "attacker_x": splits.attacker_x,
               "attacker_y": splits.attacker_y,
               "benign_x": splits.benign_x, "test_x": splits.test_x, "test_y": splits.test_y},
              str(work / "splits.safetensors"))
    kernels = config.build.kernels if torch_device.type == "cpu" else "native"
    pins = training_environment(kernels, torch_device)
    if pins is not None:
        (work / "predictions").mkdir()
    train_jobs, inits, costs = _train_jobs(work, config, len(splits.owner_y), in_chans, num_classes, torch_device,
                                           amp, progress, pins is not None)
    workers = parallel_workers(config.build.threads, len(train_jobs), torch_device, jobs)
    log.info("zoo %s: training %d models, %d at a time, %d threads each, %s kernels", config.name, len(train_jobs),
             workers, config.build.threads, kernels)
    longest_first = sorted(train_jobs, key=lambda job: -costs[job.model.id])  # a short makespan when parallel
    train_seconds = train_members(longest_first, workers, f"zoo {config.name}", progress, pins)
    shutil.rmtree(work / "initial")
    cards, predictions, capabilities = [], {}, set()
    for job in tqdm(train_jobs, desc=f"measure {config.name}", disable=not progress, unit="model"):
        entry, predictions[job.model.id] = _measure_model(job, splits, config.build.eval_batch_size, torch_device,
                                                          capabilities)
        entry["train_seconds"] = round(train_seconds[job.model.id], 2)
        if job.model.input_size is not None:
            entry["input_size"] = job.model.input_size
        if inits[job.model.id] is not None:
            entry["init"] = inits[job.model.id]
        cards.append(entry)
    if pins is not None:
        shutil.rmtree(work / "predictions")
    training_capability = "/".join(sorted(capabilities)) if capabilities else None
    check_portable(kernels, training_capability or "")
    card = _zoo_card(config, splits, source, num_classes, cards, predictions,
                     build_environment(kernels, training_capability))
    if torch_device.type != "cpu":
        card["build"] = {"device": str(environment(torch_device)["device"]), "amp": amp}
    validate(card, "card", "zoo card")
    save_file({k: v.contiguous() for k, v in predictions.items()}, str(work / "predictions.safetensors"))
    return card


def _train_jobs(work: Path, config: ZooConfig, owner_samples: int, in_chans: int, num_classes: int,
                torch_device: torch.device, amp: str, progress: bool, portable: bool
                ) -> tuple[list[TrainJob], dict[str, dict[str, Any] | None], dict[str, int]]:
    """Each model's training job, its card's ``init`` record and its training cost (for the order of the jobs).

    The models are initialised here, so the Hub is asked once per build, not per worker; the initial weights go
    to ``work/initial`` (a ``portable`` build initialises from scratch where it trains, so only pretrained ones).
    """
    weights_source = PretrainedWeights()
    train_jobs, inits, costs = [], {}, {}
    for model_cfg in config.models:
        with torch.random.fork_rng():
            torch.manual_seed(model_cfg.train.seed)
            model, inits[model_cfg.id] = weights_source.create(model_cfg, in_chans, num_classes, config.mean,
                                                               config.std)
        costs[model_cfg.id] = (train_steps(model_cfg.train, owner_samples) * model_cfg.train.batch_size
                               * sum(p.numel() for p in model.parameters()))
        initial = work / "initial" / f"{model_cfg.id}.safetensors"
        if not portable or inits[model_cfg.id] is not None:
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(initial))
        train_jobs.append(TrainJob(model_cfg, in_chans, num_classes, config.mean, config.std,
                                   str(work / "splits.safetensors"), str(initial) if initial.is_file() else "",
                                   str(work / "weights" / f"{model_cfg.id}.safetensors"), str(torch_device), amp,
                                   config.build.threads, progress,
                                   str(work / "predictions" / f"{model_cfg.id}.safetensors")
                                   if portable else "",
                                   config.build.eval_batch_size))
    return train_jobs, inits, costs


def _measure_model(job: TrainJob, splits: Splits, eval_batch_size: int, torch_device: torch.device,
                   capabilities: set[str]) -> tuple[dict[str, Any], torch.Tensor]:
    """A trained model's card entry (accuracy, latency, size, hashes) and its test-split probabilities; the kernel
    capability its predictions were computed with (where it trained) joins ``capabilities``."""
    model_cfg, weights_path = job.model, Path(job.weights_path)
    model = job.network()
    model.load_state_dict(load_file(weights_path))
    model.to(torch_device)
    if job.predictions_path:  # computed where it trained, with the same kernels
        with safe_open(job.predictions_path, "pt") as handle:
            probs, meta = handle.get_tensor("probs"), handle.metadata() or {}
        capabilities.add(meta.get("capability", "unknown"))
    else:
        probs = predict_proba(model, splits.test_x, eval_batch_size)
    accuracy = float((probs.argmax(1) == splits.test_y).float().mean())
    example = splits.test_x[:1].to(torch_device)
    latency = measure_latency(model, example)
    entry = {
        "id": model_cfg.id, "arch": model_cfg.arch, "kwargs": model_cfg.kwargs,
        "params": sum(p.numel() for p in model.parameters()), "macs": _count_macs(model, example),
        "accuracy": round(accuracy, 6),
        "latency": {**latency.as_dict(), "batch_size": 1, **environment(torch_device)},
        "weights_sha256": _sha256_file(weights_path), "train": _card_train(model_cfg.train),
    }
    model.to("cpu")
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()
    return entry, probs


def _zoo_card(config: ZooConfig, splits: Splits, source: str, num_classes: int, cards: list[dict[str, Any]],
              predictions: dict[str, torch.Tensor], build: dict[str, Any]) -> dict[str, Any]:
    """The zoo card of the measured models ``cards``: dataset, splits, preprocessing, frontier, disagreement,
    advertised service and build environment (``build``: the kernels')."""
    import timm

    reference = reference_profile(config.reference_profile)
    latencies = ({c["id"]: c["latency"]["p50_ms"] for c in cards} if reference is None
                 else routing_latencies(load_profile(reference), [c["id"] for c in cards], str(reference)))
    accuracies = [c["accuracy"] for c in cards]
    ordered = [latencies[c["id"]] for c in cards]
    frontier = [cards[i]["id"] for i in pareto_frontier(accuracies, ordered)]
    accuracy_range, latency_range = service_ranges(accuracies, ordered, config.accuracy_margin, config.latency_margin)
    preprocess: dict[str, Any] = {"mean": list(config.mean), "std": list(config.std)}
    if config.image.active:
        preprocess.update({k: v for k, v in vars(config.image).items() if v is not None})
    return {
        "card_version": 1, "zoo": config.name, "description": config.description,
        "config_hash": config.config_hash,
        "dataset": {"name": config.dataset.name, "source": source},
        "splits": {"seed": config.splits.seed, **splits.summary()},
        "input_shape": list(splits.owner_x.shape[1:]), "num_classes": num_classes,
        "class_names": list(splits.class_names),
        "preprocess": preprocess,
        "models": cards,
        "frontier": frontier,
        "disagreement": disagreement(predictions, [c["id"] for c in cards], frontier),
        "service": {"profile": reference.name if reference else "measured",
                    "reference_profile": config.reference_profile,
                    "accuracy_margin": config.accuracy_margin, "latency_margin": config.latency_margin,
                    "accuracy_range": list(accuracy_range), "latency_range_ms": list(latency_range)},
        "environment": {**environment(), "timm": timm.__version__, **build,
                        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }


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
    zoo = Zoo(directory, profile)
    _warn_other_threads(config, zoo)
    return zoo


def _warn_other_threads(config: ZooConfig, zoo: Zoo) -> None:
    """Warn when a CPU-built zoo in the cache was trained on another thread count than its config now fixes.

    ``[build] threads`` is outside the config hash (a build setting), so such a zoo keeps its
    directory and is opened as it is: its weights are what its own thread count gave.
    """
    built = zoo.card.get("environment", {}).get("threads")
    if "build" in zoo.card or built is None or built == config.build.threads:
        return
    log.warning("zoo %s in %s was trained on %s threads, its config now fixes %d: it keeps the weights %s threads "
                "gave; delete that directory to rebuild it on %d", config.name, zoo.directory, built,
                config.build.threads, built, config.build.threads)
