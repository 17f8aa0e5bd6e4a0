"""Per-cell metrics (DESIGN.md section 6): small pure functions over arrays.

Every metric is a fraction in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from ._serving import Spec, SpecRange


def fidelity(surrogate_labels: np.ndarray, victim_labels: np.ndarray) -> float:
    """Top-1 agreement between surrogate and victim on the test split."""
    return float(np.mean(np.asarray(surrogate_labels) == np.asarray(victim_labels)))


def accuracy(predicted_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Top-1 accuracy."""
    return float(np.mean(np.asarray(predicted_labels) == np.asarray(true_labels)))


def accuracy_norm(surrogate_accuracy: float, victim_accuracy: float) -> float:
    """Surrogate accuracy relative to the victim's (may exceed 1 when the surrogate does better)."""
    return surrogate_accuracy / victim_accuracy if victim_accuracy > 0 else 0.0


def victim_hit_rate(served: np.ndarray, victim_index: int) -> float:
    """Share of the attacker's queries that the victim served (0 when it sent none)."""
    served = np.asarray(served)
    return float(np.mean(served == victim_index)) if served.size else 0.0


def goodput(meets_spec: np.ndarray) -> float:
    """Share of benign queries served by a model that meets the client's true spec."""
    meets_spec = np.asarray(meets_spec, dtype=bool)
    return float(meets_spec.mean()) if meets_spec.size else 0.0


def benign_specs(accuracies: np.ndarray, latencies: np.ndarray, spec_range: SpecRange, n: int,
                 rng: np.random.Generator) -> list[Spec]:
    """The benign workload: ``n`` specs uniform over the advertised ranges, kept only if feasible.

    Feasible means some model of the service meets the spec without any defense.
    """
    specs: list[Spec] = []
    while len(specs) < n:
        for spec in spec_range.sample(4 * n, rng):
            if np.any((accuracies >= spec.min_accuracy) & (latencies <= spec.max_latency_ms)):
                specs.append(spec)
                if len(specs) == n:
                    break
    return specs


@torch.no_grad()
def predict_labels(model: torch.nn.Module, inputs: torch.Tensor, num_classes: int, batch_size: int = 1024) -> np.ndarray:
    """Argmax predictions of a surrogate; checks it returns one score row per input."""
    model.eval()
    outputs = []
    for start in range(0, len(inputs), batch_size):
        out = model(inputs[start:start + batch_size])
        if not isinstance(out, torch.Tensor) or out.shape != (len(inputs[start:start + batch_size]), num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"surrogate must return (N, {num_classes}) scores, returned {shape}")
        outputs.append(out.argmax(dim=1))
    return torch.cat(outputs).numpy()
