"""``prada``: per-client detection of extraction by the distribution of query distances (Juuti et al. 2019)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import shapiro

from psml_bench import Allowed, Defense, Requests, register_defense

# as the authors' reference code: the test runs every CHECK_EVERY queries of a client, on the
# distances of the classes holding at least CLASS_MINIMUM of them, minus those more than
# OUTLIER_STDS standard deviations from their mean
CHECK_EVERY = 10
CLASS_MINIMUM = 10
OUTLIER_STDS = 3.0


def min_distance_statistic(distances: np.ndarray) -> float:
    """PRADA's statistic: Shapiro-Wilk W of ``distances`` without their outliers (NaN below 3 values)."""
    distances = np.asarray(distances, dtype=float)
    if len(distances) and distances.std() > 0:
        distances = distances[np.abs(distances - distances.mean()) < OUTLIER_STDS * distances.std()]
    if len(distances) < 3:
        return float("nan")
    if np.ptp(distances) == 0:  # all equal: as far from normal as it gets (scipy warns and returns 1)
        return 0.0
    return float(shapiro(distances)[0])


class _ClientHistory:
    """One client's growing sets (per predicted class) and the minimum distance of each of its queries."""

    def __init__(self) -> None:
        self.growing: dict[int, np.ndarray] = {}
        self.growing_distances: dict[int, list[float]] = {}
        self.threshold: dict[int, float] = {}
        self.distances: dict[int, list[float]] = {}
        self.queries = 0

    def add(self, x: np.ndarray, label: int) -> None:
        """Algorithm 1 of the paper for one query ``x`` the model classified as ``label``."""
        if label not in self.growing:
            self.growing[label], self.growing_distances[label], self.threshold[label] = x[None, :], [0.0], 0.0
            return
        nearest = float(np.sqrt(((self.growing[label] - x) ** 2).sum(axis=1).min()))
        self.distances.setdefault(label, []).append(nearest)
        if nearest > self.threshold[label]:
            self.growing[label] = np.vstack([self.growing[label], x])
            self.growing_distances[label].append(nearest)
            kept = np.array(self.growing_distances[label])
            self.threshold[label] = max(self.threshold[label], float(kept.mean() - kept.std()))

    def pooled(self) -> np.ndarray:
        """The minimum distances of the classes with at least ``CLASS_MINIMUM`` of them."""
        kept = [d for d in self.distances.values() if len(d) >= CLASS_MINIMUM]
        return np.concatenate(kept) if kept else np.empty(0)


@register_defense("prada")
class Prada(Defense):
    """Detects a client whose queries' minimum distances to its earlier ones stop looking normal.

    Per client and per class the served model predicts, PRADA keeps a growing set of that
    client's queries; each new query's minimum L2 distance to the growing set of its class joins
    the client's distance set, and the query joins the growing set when that distance exceeds the
    class's threshold (the running max of mean minus std of the growing set's distances). Every
    ``CHECK_EVERY`` queries, once more than ``min_history`` distances are pooled, the Shapiro-Wilk
    W of the pooled distances (outliers beyond 3 std removed) is compared with ``delta`` (the
    strength); below it the client is detected. Natural samples give roughly normal distances;
    synthetic ones (small steps from earlier queries) and repeated queries (distance 0) do not.

    ``action``: ``"block"`` refuses the client's later calls (the server decides refusals before
    answers exist, so the call during which the client is detected is still answered);
    ``"noise"`` answers every later query of the client, from the detecting one on, with a
    probability vector drawn uniformly from the simplex (Dirichlet(1)).
    """

    strength = "delta"
    deterministic = False  # stateful: a detected client's answers change (noise) or stop (block)
    defaults = {"delta": 0.95, "min_history": 100, "action": "block"}
    allowed = {"delta": Allowed(minimum=0, maximum=1), "min_history": Allowed(minimum=3, integer=True),
               "action": Allowed(choices=("block", "noise"))}

    def __init__(self, **params):
        super().__init__(**params)
        self._clients: dict[int, _ClientHistory] = {}

    def statistic(self, client: int) -> float:
        """The client's current W (NaN while its pooled distances are ``min_history`` or fewer)."""
        pooled = self._clients[client].pooled() if client in self._clients else np.empty(0)
        return min_distance_statistic(pooled) if len(pooled) > int(self.params["min_history"]) else float("nan")

    def answer(self, requests: Requests, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        inputs = requests.inputs.reshape(len(requests), -1).double().numpy()
        labels = probabilities.argmax(dim=1).numpy()
        answers = probabilities.clone()
        for row, client in enumerate(requests.clients.tolist()):
            history = self._clients.setdefault(client, _ClientHistory())
            history.add(inputs[row], int(labels[row]))
            history.queries += 1
            if client not in self.detected and history.queries % CHECK_EVERY == 0:
                if self.statistic(client) < float(self.params["delta"]):
                    if self.params["action"] == "block":
                        self.block(client)
                    else:
                        self.detect(client)
            if client in self.detected and self.params["action"] == "noise":
                answers[row] = torch.from_numpy(rng.dirichlet(np.ones(answers.shape[1]))).to(answers.dtype)
        return answers
