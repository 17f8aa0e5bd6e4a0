"""``prediction-poisoning``: answers perturbed to mislead an attacker's gradient (MAD, Orekondy et al., ICLR 2020)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from psml_bench import SURROGATE_DEFAULTS, Allowed, ConfigError, Defense, Requests, Surrogate, register_defense

FORWARD_BATCH = 512
SURROGATE_SEED = 0
# MAD-argmax searches every extreme point that keeps the top class up to this many classes (2**(K-1)
# points), and above it grows the point greedily, as the reference code does for K > 10
EXHAUSTIVE_CLASSES = 12
ARGMAX_MARGIN = 1e-5


def mad_objective(candidates: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """MAD's angular deviation ``|| u / |u| - v / |v| ||^2`` for each candidate answer, ``(B, M)``.

    ``u = G^T y~`` and ``v = G^T y`` with ``G`` the Jacobian of the surrogate's per-class negative
    log-likelihood with respect to its last layer's weights (the reference code's ``G``). For a
    linear last layer ``G^T y = (p - y) h^T`` (``p`` the surrogate's softmax, ``h`` its features,
    any ``y`` summing to 1), so the deviation is that of ``p - y~`` from ``p - y``, whatever ``h``.

    Args:
        candidates: ``(B, M, K)`` candidate answers per row.
        y: ``(B, K)`` true answers.
        p: ``(B, K)`` the defender's surrogate's probabilities.
    """
    u = p[:, None, :] - candidates
    u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
    v = p - y
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return ((u - v[:, None, :]) ** 2).sum(dim=2)


@lru_cache(maxsize=None)
def _argmax_vertices(classes: int, top: int) -> torch.Tensor:
    """Every extreme point MAD-argmax searches when ``top`` is the top class: uniform mass on a set of
    classes containing ``top``, which gets ``ARGMAX_MARGIN`` more, ``(2**(classes-1), classes)``."""
    others = [k for k in range(classes) if k != top]
    subsets = (torch.arange(2 ** len(others))[:, None] >> torch.arange(len(others))) & 1
    rows = torch.zeros(len(subsets), classes, dtype=torch.float64)
    rows[:, others] = subsets.double()
    rows[:, top] = 1.0 + ARGMAX_MARGIN
    return rows / rows.sum(dim=1, keepdim=True)


def _greedy_argmax_vertex(y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The reference code's approximation for many classes: grow the set from the top class, adding
    the class that most raises the objective, and keep the best set seen, for one row."""
    classes, top = len(y), int(y.argmax())
    chosen, best, best_value = [top], None, -1.0
    while len(chosen) < classes:
        rest = [k for k in range(classes) if k not in chosen]
        vertices = torch.zeros(len(rest), classes, dtype=torch.float64)
        vertices[:, chosen] = 1.0
        vertices[torch.arange(len(rest)), rest] = 1.0
        vertices[:, top] += ARGMAX_MARGIN
        vertices = vertices / vertices.sum(dim=1, keepdim=True)
        values = mad_objective(vertices[None], y[None], p[None])[0]
        i = int(values.argmax())
        if float(values[i]) > best_value:
            best, best_value = vertices[i], float(values[i])
        chosen.append(rest[i])
    return best


def poison(y: torch.Tensor, p: torch.Tensor, epsilon: float, norm: str, keep_argmax: bool) -> torch.Tensor:
    """MAD's answers: toward the extreme point of largest deviation, at distance at most ``epsilon``.

    The target ``y*`` is the simplex vertex (MAD) or the argmax-keeping extreme point (MAD-argmax)
    that maximises :func:`mad_objective`; the answer is ``(1 - a) y + a y*`` with the paper's
    closed-form ``a = min(1, epsilon / ||y - y*||)`` in the ``norm`` ("l1" or "l2"), so it stays
    in the simplex and within ``epsilon`` of ``y``; with ``keep_argmax`` both ends share the top
    class, and so does the answer.
    """
    y, p = y.double(), p.double()
    batch, classes = y.shape
    if not keep_argmax:
        vertices = torch.eye(classes, dtype=torch.float64).expand(batch, classes, classes)
        target = vertices[torch.arange(batch), mad_objective(vertices, y, p).argmax(dim=1)]
    elif classes <= EXHAUSTIVE_CLASSES:
        top = y.argmax(dim=1)
        target = torch.empty_like(y)
        for k in top.unique().tolist():
            rows = torch.nonzero(top == k).flatten()
            vertices = _argmax_vertices(classes, k).expand(len(rows), -1, -1)
            target[rows] = vertices[0][mad_objective(vertices, y[rows], p[rows]).argmax(dim=1)]
    else:
        target = torch.stack([_greedy_argmax_vertex(y[i], p[i]) for i in range(batch)])
    distance = (y - target).norm(p=1 if norm == "l1" else 2, dim=1, keepdim=True)
    alpha = (epsilon / distance.clamp_min(1e-12)).clamp(max=1.0)
    return (1 - alpha) * y + alpha * target


@register_defense("prediction-poisoning")
class PredictionPoisoning(Defense):
    """MAD: every answer moved within ``epsilon`` (L1 or L2) to mislead the gradient of an attacker's surrogate.

    The defender's model of the attacker (the paper's ``F_A``) is a network of the benchmark
    attacker's default surrogate architecture (``surrogate``, default ``test_resnet``) with
    randomly initialised weights (seed 0): the defender knows the attacker's kind of model but
    not its weights, and needs no data and no download. The reference code takes the proxy as
    an argument (the victim itself by default, for which the last-layer objective is degenerate:
    ``p = y``). ``keep_argmax`` is MAD-argmax: the answer keeps the served model's top class, so
    labels (and hard-label attackers) are unaffected. Answers are deterministic per input.
    """

    strength = "epsilon"
    defaults = {"epsilon": 0.5, "norm": "l1", "keep_argmax": False, "surrogate": SURROGATE_DEFAULTS["surrogate"]}
    allowed = {"epsilon": Allowed(minimum=0), "norm": Allowed(choices=("l1", "l2"))}

    def __init__(self, **params):
        super().__init__(**params)
        import timm

        if not timm.is_model(self.params["surrogate"]):
            raise ConfigError(f"defense 'prediction-poisoning' parameter 'surrogate' must be a timm architecture, "
                              f"got {self.params['surrogate']!r}")
        self._surrogate: Surrogate | None = None

    @torch.no_grad()
    def surrogate_probabilities(self, inputs: torch.Tensor, classes: int) -> torch.Tensor:
        """The defender's surrogate's softmax on ``inputs`` (built on first use)."""
        if self._surrogate is None:
            channels = inputs.shape[1]
            with torch.random.fork_rng():
                torch.manual_seed(SURROGATE_SEED)
                self._surrogate = Surrogate(self.params["surrogate"], channels, classes, torch.zeros(channels),
                                            torch.ones(channels)).eval()
        return torch.cat([torch.softmax(self._surrogate(inputs[i:i + FORWARD_BATCH]), dim=1)
                          for i in range(0, len(inputs), FORWARD_BATCH)])

    def answer(self, requests: Requests, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        epsilon = float(self.params["epsilon"])
        if epsilon == 0:
            return probabilities
        p = self.surrogate_probabilities(requests.inputs, probabilities.shape[1])
        return poison(probabilities, p, epsilon, self.params["norm"], self.params["keep_argmax"]).to(
            probabilities.dtype)
