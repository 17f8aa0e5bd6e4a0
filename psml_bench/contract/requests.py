"""What a defense sees of a batch of requests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Requests:
    """What a defense sees of a batch of requests, in arrival order.

    Client ids are opaque integers (shuffled per cell: nothing in an id says who is the
    attacker); inputs are the raw inputs; the spec is the client's own. Never labels, and
    nothing that says which data split an input came from.
    """

    clients: np.ndarray
    inputs: torch.Tensor
    min_accuracy: np.ndarray
    max_latency_ms: np.ndarray
    arrival_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.clients)

    def subset(self, rows: np.ndarray) -> Requests:
        """The requests at positions ``rows``."""
        return Requests(self.clients[rows], self.inputs[torch.from_numpy(np.asarray(rows))],
                        self.min_accuracy[rows], self.max_latency_ms[rows], self.arrival_ms[rows])
