"""Latency profiles: measuring models on a CPU or GPU and loading the committed profiles.

Routing never uses live timings: a run routes on a *profile* file, by default the reference
profile committed for the zoo under ``psml_bench/profiles/``, so results do not depend on the
noise of the machine that runs the benchmark. The serving policy reads each model's batch-1 p50.

``psml-bench zoo profile`` measures a profile: for every model and batch size (1, 2, 4, ..., 64
by default) it times ``warmup`` untimed calls then ``repeats`` timed ones, each bracketed by
``torch.cuda.synchronize()`` on a GPU so the clock sees the kernels, not their launch. It keeps
the raw timings and their p50/p90/p99 per batch size, and derives the INFaaS-style linear model
``latency(batch) = intercept + slope * batch`` (least squares on the per-batch p50).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..common.files import validate
from ..contract.errors import ConfigError

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of latency in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms}

    @classmethod
    def from_seconds(cls, timings: np.ndarray) -> LatencyStats:
        """p50/p90/p99 in milliseconds (4 decimals) of timings in seconds."""
        p50, p90, p99 = (float(v) * 1e3 for v in np.percentile(timings, [50, 90, 99]))
        return cls(round(p50, 4), round(p90, 4), round(p99, 4))


@dataclass(frozen=True)
class BatchFit:
    """The INFaaS-style linear latency model of one model: ``intercept_ms + slope_ms * batch``."""

    slope_ms: float
    intercept_ms: float
    r2: float

    def predict(self, batch_size: int) -> float:
        return self.intercept_ms + self.slope_ms * batch_size

    def as_dict(self) -> dict[str, float]:
        return {"slope_ms": self.slope_ms, "intercept_ms": self.intercept_ms, "r2": self.r2}


def fit_batch_latency(batch_sizes: Sequence[int], latencies_ms: Sequence[float]) -> BatchFit:
    """Least-squares line through (batch size, latency); needs two distinct batch sizes.

    ``r2`` is the coefficient of determination (1.0 when every latency is equal and the line
    reproduces them exactly).
    """
    x = np.asarray(batch_sizes, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    if x.shape != y.shape or len(np.unique(x)) < 2:
        raise ValueError(f"a batch-latency fit needs latencies at two or more distinct batch sizes, got {list(x)}")
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (intercept + slope * x)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return BatchFit(round(float(slope), 6), round(float(intercept), 6), round(r2, 6))


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (a GPU when one is visible) as a torch device.

    Raises:
        ConfigError: a GPU was asked for but CUDA is not available, or the name is unknown.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is unknown; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' is not supported; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"torch {torch.__version__} built with CUDA {torch.version.cuda}" if torch.version.cuda \
                else f"torch {torch.__version__} built without CUDA"
            raise ConfigError(f"device '{name}': CUDA is not available on this machine ({built}, "
                              f"{torch.cuda.device_count()} GPU(s) visible); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}': this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def cuda_driver_version() -> str:
    """The NVIDIA driver version (NVML, else ``nvidia-smi``), or ``unknown``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML is optional
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


def environment(device: torch.device | None = None) -> dict[str, object]:
    """Where a measurement was taken: device, torch version, thread count; on a GPU also its
    name, memory, driver and the CUDA and cuDNN versions."""
    info: dict[str, object] = {"device": f"cpu ({platform.machine()})", "torch": torch.__version__,
                               "threads": torch.get_num_threads()}
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        info.update({
            "device": f"cuda ({properties.name})", "gpu": properties.name,
            "gpu_memory_gb": round(properties.total_memory / 2 ** 30, 1),
            "compute_capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda or "unknown", "cudnn": str(torch.backends.cudnn.version()),
            "driver": cuda_driver_version(), "tf32": bool(torch.backends.cudnn.allow_tf32),
        })
    return info


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_calls(model: torch.nn.Module, example: torch.Tensor, *, warmup: int = 20, repeats: int = 200) -> np.ndarray:
    """Seconds of each of ``repeats`` calls ``model(example)`` after ``warmup`` untimed calls.

    On a GPU every timed call is bracketed by ``torch.cuda.synchronize``, so it measures the
    finished forward pass.
    """
    model.eval()
    timings = np.empty(repeats)
    if example.device.type != "cuda":
        for _ in range(warmup):
            model(example)
        for i in range(repeats):
            start = time.perf_counter()
            model(example)
            timings[i] = time.perf_counter() - start
        return timings
    for _ in range(warmup):
        model(example)
    _synchronize(example.device)
    for i in range(repeats):
        _synchronize(example.device)
        start = time.perf_counter()
        model(example)
        _synchronize(example.device)
        timings[i] = time.perf_counter() - start
    return timings


def measure_latency(model: torch.nn.Module, example: torch.Tensor, *, warmup: int = 20,
                    repeats: int = 200) -> LatencyStats:
    """Time ``model(example)`` after ``warmup`` calls; return p50/p90/p99 over ``repeats`` calls."""
    return LatencyStats.from_seconds(time_calls(model, example, warmup=warmup, repeats=repeats))


def profile_model(model: torch.nn.Module, make_input: Callable[[int], torch.Tensor], device: torch.device, *,
                  precision: str = "fp32", batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, warmup: int = 20,
                  repeats: int = 200) -> dict[str, object]:
    """Profile one model at every batch size on ``device`` in ``precision``.

    Args:
        model: the model (left unchanged; a copy is moved and cast).
        make_input: batch size -> float inputs in [0, 1] of that batch size (on the CPU).
        device: where to run.
        precision: ``fp32``, ``fp16`` or ``bf16`` (weights and inputs cast to it).
        batch_sizes: must include 1, whose percentiles the serving policy routes on.
        warmup: untimed calls before each batch size.
        repeats: timed calls per batch size.

    Returns:
        The profile entry: batch-1 ``p50_ms``/``p90_ms``/``p99_ms``, ``batches`` (per batch size:
        percentiles and the raw ``samples_ms``) and the linear ``fit`` over the per-batch p50.
    """
    import copy

    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}")
    if 1 not in batch_sizes:
        raise ConfigError("the batch sizes of a profile must include 1 (the serving policy routes on batch 1)")
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("precision fp16 is for GPUs; profile a CPU in fp32 or bf16")
    dtype = PRECISIONS[precision]
    runner = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    batches: dict[str, dict[str, object]] = {}
    for batch_size in sorted(set(batch_sizes)):
        example = make_input(batch_size).to(device=device, dtype=dtype)
        timings = time_calls(runner, example, warmup=warmup, repeats=repeats)
        stats = LatencyStats.from_seconds(timings)
        batches[str(batch_size)] = {**stats.as_dict(),
                                    "samples_ms": [round(float(t) * 1e3, 4) for t in timings]}
    del runner
    sizes = sorted(int(b) for b in batches)
    entry: dict[str, object] = {k: batches["1"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
    entry["batches"] = batches
    if len(sizes) >= 2:
        entry["fit"] = fit_batch_latency(sizes, [batches[str(b)]["p50_ms"] for b in sizes]).as_dict()
    return entry


def make_profile(zoo: str, stats: Mapping[str, LatencyStats]) -> dict:
    """A batch-1 profile document (see ``schemas/profile.schema.json``) from per-model stats."""
    return {
        "profile_version": 1, "zoo": zoo, **environment(), "batch_size": 1,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": {model_id: s.as_dict() for model_id, s in stats.items()},
    }


def make_batch_profile(zoo: str, entries: Mapping[str, dict], device: torch.device, *, precision: str,
                       batch_sizes: Sequence[int], warmup: int, repeats: int, weights: str,
                       provenance: Mapping[str, object] | None = None) -> dict:
    """A profile document with per-batch measurements and fits (see ``schemas/profile.schema.json``).

    Args:
        zoo: the zoo's name.
        entries: model id -> :func:`profile_model` output.
        device: the device measured.
        precision: the precision measured.
        batch_sizes: the batch sizes measured.
        warmup: untimed calls per batch size.
        repeats: timed calls per batch size.
        weights: ``trained`` (a built zoo) or ``untrained`` (fresh models, random inputs, no data).
        provenance: anything else worth keeping (zoo directory, config hash, command).
    """
    document = {
        "profile_version": 1, "zoo": zoo, **environment(device), "batch_size": 1,
        "batch_sizes": sorted(set(int(b) for b in batch_sizes)), "precision": precision,
        "warmup": warmup, "repeats": repeats, "weights": weights,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": dict(entries),
    }
    if provenance:
        document["provenance"] = dict(provenance)
    validate(document, "profile", f"profile of zoo {zoo}")
    return document


def dump_profile(profile: Mapping[str, object]) -> str:
    """A profile as indented JSON with each list of numbers (the raw samples) on one line."""
    text = json.dumps(profile, indent=1)
    return re.sub(r"\[\s*([-0-9.eE+,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split(",")).replace(
        "\n", "").replace(" ", "").replace(",", ", ") + "]", text) + "\n"


def profile_device_kind(profile: Mapping[str, object]) -> str:
    """``cuda`` or ``cpu``: the kind of device a profile was measured on."""
    return "cuda" if str(profile.get("device", "")).startswith("cuda") else "cpu"


def reference_profile_path(filename: str) -> Path:
    """Path of a profile committed in the package."""
    return Path(str(resources.files("psml_bench") / "profiles" / filename))


def load_profile(path: Path) -> dict:
    """Read and validate a profile file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such latency profile") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    validate(data, "profile", str(path))
    return data


def routing_latencies(profile: dict, model_ids: list[str], source: str) -> dict[str, float]:
    """The p50 latency per model that the serving policy routes on."""
    missing = [m for m in model_ids if m not in profile["models"]]
    if missing:
        raise ConfigError(f"latency profile {source} has no entry for model(s) {', '.join(missing)}; "
                          f"re-measure it with `psml-bench zoo profile {profile['zoo']}`")
    return {m: float(profile["models"][m]["p50_ms"]) for m in model_ids}


@dataclass(frozen=True)
class Separation:
    """How far apart two neighbouring frontier models are in a profile's batch-1 latency."""

    faster: str
    slower: str
    gap_ms: float
    spread_ms: float

    @property
    def separated(self) -> bool:
        """Whether the gap between the medians exceeds the larger of the two models' p50-to-p90 spreads."""
        return self.gap_ms > self.spread_ms


def frontier_separation(profile: Mapping[str, Any], frontier: Sequence[str]) -> list[Separation]:
    """Each pair of neighbouring ``frontier`` models (fastest first): the gap between their batch-1 p50s
    and the larger of their own p90 - p50 spreads, both in milliseconds."""
    models = profile["models"]
    ordered = sorted(frontier, key=lambda m: float(models[m]["p50_ms"]))
    spread = {m: float(models[m]["p90_ms"]) - float(models[m]["p50_ms"]) for m in ordered}
    return [Separation(a, b, round(float(models[b]["p50_ms"]) - float(models[a]["p50_ms"]), 4),
                       round(max(spread[a], spread[b]), 4)) for a, b in zip(ordered, ordered[1:])]
