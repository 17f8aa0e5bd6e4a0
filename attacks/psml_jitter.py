"""``psml-jitter``: psml whose repeated fingerprint inputs are jittered, against duplicate-query detectors.

``psml`` fingerprints by sending one probe input again and again under different specs; a
duplicate-query detector (``query-hash``, Blacklight-style) sees the same input many times. This
variant sends psml's queries through a wrapper of the target that changes two things:

1. **Jitter.** A query row whose input the attacker already sent (byte for byte: the probe of
   every sweep and bisection step, and an extraction input that happens to be a probe candidate)
   goes out as ``clip(x + u, 0, 1)`` with ``u`` uniform in ``[-jitter, jitter]`` per value, drawn
   afresh for every such row from the attack's generator. Inputs sent for the first time go out
   unchanged; the surrogate trains on psml's own (unjittered) inputs.
2. **Identification with a tolerance.** The served models' answers to jittered copies of the probe
   differ a little, so psml's exact signature match (1e-4) would take each answer for a new model.
   The wrapper keeps the answers of jittered fingerprint rows it has seen as signatures and hands
   psml, for each such row, the nearest signature (largest per-class difference) if it is nearer
   than ``same_answer``, else the answer itself, which becomes a signature. Everything else of psml
   (sweep, bisection, ranking, extraction) is unchanged.

On the tiny zoo a jitter of 0.05 moves a model's answer to the probe by at most 0.17 per class
while two models' answers differ by 0.25 or more; a tolerance of 0.1 found the victim's region in
three fingerprints of three, 0.2 merged two models in one (docs/defenses.md, ``query-hash``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from attacks.psml import Psml
from psml_bench import Allowed, Target, register_attack


class JitteredTarget:
    """A target wrapper that jitters repeated fingerprint inputs and matches their answers with a tolerance."""

    def __init__(self, target: Target, jitter: float, same_answer: float, rng: np.random.Generator):
        self.target, self.jitter, self.same_answer, self.rng = target, jitter, same_answer, rng
        self.sent: set[bytes] = set()
        self.signatures: list[torch.Tensor] = []
        self.jittered_rows = 0

    def _digest(self, row: torch.Tensor) -> bytes:
        return hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest()

    def _signature(self, answer: torch.Tensor) -> torch.Tensor:
        if self.signatures:
            distances = [float((signature - answer).abs().max()) for signature in self.signatures]
            nearest = int(np.argmin(distances))
            if distances[nearest] < self.same_answer:
                return self.signatures[nearest]
        self.signatures.append(answer)
        return answer

    def query(self, inputs, spec, purpose: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        inputs = torch.as_tensor(inputs).float()
        repeated = torch.zeros(len(inputs), dtype=torch.bool)
        for row, digest in enumerate(self._digest(x) for x in inputs):
            repeated[row] = digest in self.sent  # an earlier row of the same call counts too
            self.sent.add(digest)
        jitter = bool(repeated.any()) and self.jitter > 0
        if jitter:
            inputs = inputs.clone()
            noise = self.rng.uniform(-self.jitter, self.jitter, size=(int(repeated.sum()), *inputs.shape[1:]))
            inputs[repeated] = (inputs[repeated] + torch.from_numpy(noise).float()).clamp(0, 1)
            self.jittered_rows += int(repeated.sum())
        answers = self.target.query(inputs, spec, purpose=purpose)
        if jitter and purpose == "fingerprint":
            answers = answers.clone()
            for row in torch.nonzero(repeated & torch.isfinite(answers).all(dim=1)).flatten().tolist():
                answers[row] = self._signature(answers[row])
        return answers, self.target.last_refused, self.target.last_latency_ms

    def handle(self) -> Target:
        """The wrapped target, as psml sees it."""
        return Target(self.query, lambda: self.target.remaining_budget)


@register_attack("psml-jitter")
class PsmlJitter(Psml):
    """psml whose repeated fingerprint probes carry small uniform noise, matched back to models with a tolerance."""

    defaults = {**Psml.defaults, "jitter": 0.05, "same_answer": 0.1}
    allowed = {"jitter": Allowed(minimum=0, maximum=1), "same_answer": Allowed(minimum=0, exclusive_minimum=True)}

    def run(self, target: Target, knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        wrapper = JitteredTarget(target, float(self.params["jitter"]), float(self.params["same_answer"]), rng)
        return super().run(wrapper.handle(), knowledge, budget, rng)
