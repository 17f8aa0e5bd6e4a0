"""Per-cell metrics (docs/protocol.md, section 7): small pure functions over arrays.

Every metric is a fraction in [0, 1] except ``kl`` (nats, >= 0) and ``latency_overhead``
(a relative change, which may exceed 1).
"""

from __future__ import annotations

import numpy as np
import torch

from ..contract.spec import Spec, SpecRange


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


def kl_divergence(victim_probs: torch.Tensor, surrogate_probs: torch.Tensor, eps: float = 1e-8) -> float:
    """Mean KL(victim || surrogate) in nats over the rows (how badly the surrogate's soft outputs miss)."""
    p = victim_probs.double().clamp_min(eps)
    q = surrogate_probs.double().clamp_min(eps)
    return float((p * (p.log() - q.log())).sum(dim=1).mean())


def l1_distance(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean L1 distance between probability rows, halved so it lies in [0, 1] (total variation)."""
    return float((first.double() - second.double()).abs().sum(dim=1).mean() / 2)


def fingerprint_accuracy(requested: np.ndarray, victim_index: int) -> float:
    """Share of extraction queries whose spec, without any defense, selects the victim.

    It measures whether the attack identified the victim's region of the spec space, apart
    from what a defense then did to the spec (NaN when the attack sent no extraction queries).
    """
    requested = np.asarray(requested)
    return float(np.mean(requested == victim_index)) if requested.size else float("nan")


def latency_overhead(defended_ms: np.ndarray, undefended_ms: np.ndarray) -> float:
    """Relative increase of the mean served latency (from the routing profile) caused by a defense."""
    base = float(np.mean(undefended_ms))
    return float(np.mean(defended_ms)) / base - 1.0 if base > 0 else 0.0


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
def predict_probs(model: torch.nn.Module, inputs: torch.Tensor, num_classes: int, batch_size: int = 1024,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Softmax of a surrogate's scores, computed on ``device``, returned on the CPU; checks it
    returns one finite score row per input. A surrogate moved to another device is moved back."""
    model.eval()
    home = next(model.parameters(), torch.empty(0)).device
    model.to(device)
    outputs = []
    try:
        for start in range(0, len(inputs), batch_size):
            out = model(inputs[start:start + batch_size].to(device))
            if not isinstance(out, torch.Tensor) or out.shape != (len(inputs[start:start + batch_size]), num_classes):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"surrogate must return (N, {num_classes}) scores, returned {shape}")
            outputs.append(torch.softmax(out.float(), dim=1).cpu())
    finally:
        model.to(home)
    return torch.cat(outputs)


def predict_labels(model: torch.nn.Module, inputs: torch.Tensor, num_classes: int, batch_size: int = 1024,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Argmax predictions of a surrogate (computed on ``device``); checks it returns one score row per input."""
    return predict_probs(model, inputs, num_classes, batch_size, device).argmax(dim=1).numpy()
