"""``api-watermark``: a keyed few of the queried inputs get a wrong answer the owner keeps as evidence (DAWN)."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import torch

from psml_bench import Allowed, Defense, Requests, register_defense

# an input's 8-bit quantisation is what the key hashes, so float noise of a forward pass or a wire
# encoding cannot move an input in or out of the watermark
PIXEL_LEVELS = 255


def input_digests(inputs: torch.Tensor, key: int) -> list[bytes]:
    """HMAC-SHA256 under ``key`` of each input row's 8-bit quantisation."""
    secret = int(key).to_bytes(16, "little")
    quantised = torch.round(inputs.reshape(len(inputs), -1).clamp(0, 1) * PIXEL_LEVELS).to(torch.uint8).numpy()
    return [hmac.new(secret, row.tobytes(), hashlib.sha256).digest() for row in quantised]


def watermark_choice(digest: bytes, fraction: float, top_class: int, num_classes: int) -> int | None:
    """The wrong label an input gets, or ``None`` when it is not watermarked.

    The digest's first 8 bytes, read as a number in [0, 1), select the input when below ``fraction``;
    the next 8 pick the label uniformly among the classes other than ``top_class``.
    """
    if int.from_bytes(digest[:8], "little") / 2**64 >= fraction:
        return None
    return (top_class + 1 + int.from_bytes(digest[8:16], "little") % (num_classes - 1)) % num_classes


@register_defense("api-watermark")
class ApiWatermark(Defense):
    """Answers a keyed ``fraction`` of the queried inputs with a wrong top class and keeps them per client.

    DAWN (Szyller, Atli, Marchal and Asokan, ACM MM 2021): the API decides by a keyed hash of the
    input (HMAC-SHA256 under ``key`` of its 8-bit quantisation) whether to watermark it, so the
    same input always gets the same answer and a client cannot tell a watermarked answer by
    asking twice. A watermarked answer swaps the probabilities of the served top class and a
    keyed other class (chosen uniformly among the other classes by the same digest), so it stays
    a probability vector whose top class is wrong. For each client the owner keeps the distinct
    watermarked inputs with their watermark labels (:meth:`watermark_pairs`); a model trained on
    that client's answers tends to repeat them, a model trained without them agrees with a
    watermark label with probability at most ``1 / (classes - 1)`` (the label is keyed, uniform
    over the classes other than the served one). The harness tests the stolen surrogate and the
    zoo's other models on them (``ownership_queries``, docs/protocol.md section 7).

    ``fraction`` (the strength) must be in (0, 0.05]; DAWN uses below 0.5%, the default is 0.4%.
    """

    strength = "fraction"
    deterministic = True  # the answer is a function of the input and the served answer
    defaults = {"fraction": 0.004, "key": 0}
    allowed = {"fraction": Allowed(minimum=0, exclusive_minimum=True, maximum=0.05),
               "key": Allowed(minimum=0, integer=True)}

    def __init__(self, **params):
        super().__init__(**params)
        self._kept: dict[int, dict[bytes, tuple[torch.Tensor, int]]] = {}

    def answer(self, requests: Requests, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        answers = probabilities
        top = probabilities.argmax(dim=1).tolist()
        fraction, classes = float(self.params["fraction"]), probabilities.shape[1]
        for row, digest in enumerate(input_digests(requests.inputs, int(self.params["key"]))):
            label = watermark_choice(digest, fraction, top[row], classes)
            if label is None:
                continue
            if answers is probabilities:
                answers = probabilities.clone()
            answers[row, [top[row], label]] = probabilities[row, [label, top[row]]]
            kept = self._kept.setdefault(int(requests.clients[row]), {})
            kept.setdefault(digest, (requests.inputs[row].clone(), label))
        return answers

    def watermark_pairs(self, client: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        kept = list(self._kept.get(int(client), {}).values())
        if not kept:
            return torch.empty(0), torch.empty(0, dtype=torch.long)  # a client none of whose inputs was chosen
        return torch.stack([x for x, _ in kept]), torch.tensor([label for _, label in kept], dtype=torch.long)
