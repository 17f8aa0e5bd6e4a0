"""Latency profiles: measuring batch-1 latency and loading the committed reference profiles.

Routing never uses live timings: a run routes on a *profile* file, by default the reference
profile committed for the zoo under ``psml_bench/profiles/``, so results do not depend on the
noise of the machine that runs the benchmark. The serving policy reads each model's p50.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ._config import validate
from ._errors import ConfigError


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of batch-1 latency in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms}


def environment() -> dict[str, object]:
    """Where a measurement was taken: device, torch version and thread count."""
    import platform

    return {"device": f"cpu ({platform.machine()})", "torch": torch.__version__,
            "threads": torch.get_num_threads()}


@torch.no_grad()
def measure_latency(model: torch.nn.Module, example: torch.Tensor, *, warmup: int = 20,
                    repeats: int = 200) -> LatencyStats:
    """Time ``model(example)`` after ``warmup`` calls; return p50/p90/p99 over ``repeats`` calls."""
    model.eval()
    for _ in range(warmup):
        model(example)
    timings = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        model(example)
        timings[i] = time.perf_counter() - start
    p50, p90, p99 = (float(v) * 1e3 for v in np.percentile(timings, [50, 90, 99]))
    return LatencyStats(round(p50, 4), round(p90, 4), round(p99, 4))


def make_profile(zoo: str, stats: Mapping[str, LatencyStats]) -> dict:
    """A profile document (see ``schemas/profile.schema.json``) from per-model stats."""
    return {
        "profile_version": 1, "zoo": zoo, **environment(), "batch_size": 1,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": {model_id: s.as_dict() for model_id, s in stats.items()},
    }


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
