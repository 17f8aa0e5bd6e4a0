"""``psml-aware``: psml that looks at its answers first and sees through output defenses (ModelGuard's sense).

ModelGuard (Tang et al., USENIX Security 2024) evaluates output defenses against attackers that
know a defense may be there and adapt to it. This attack is ``psml`` (``attacks/psml.py``, kept as
published) behind a diagnosis of the answers and two of those adaptations:

1. **Diagnosis.** Before fingerprinting, ``detect`` pool inputs (16) are each sent twice under the
   lax spec (lowest accuracy floor, highest latency bound: the least accurate model that meets it
   answers), ``2 * detect`` queries declared as ``purpose="fingerprint"``. Three statistics:

   - *randomised*: more than half of the inputs got two answers differing by more than psml's
     ``SAME_ANSWER`` (1e-4) in some class. One model's answer to one input is deterministic, so
     this is output noise (``prob-noise``) or randomised routing. The mean largest per-class
     difference of the pairs is the noise level ``noise``.
   - *flattened*: the answers' mean top-1 probability is below ``threshold`` (0.5) times the
     advertised minimum accuracy. A classifier's mean confidence on in-distribution inputs is
     about its accuracy (a network is rarely much less confident than it is accurate), and the
     model answering the lax spec is at least as accurate as the advertised floor; perturbations
     that push mass off the top class (``reverse-sigmoid``, MAD) bring it far below. On
     ``fmnist-tiny`` (floor 0.68; its briefly trained models are under-confident) the undefended
     answers give 0.53 (ratio 0.78), ``reverse-sigmoid(beta=0.7)`` 0.18 (0.27),
     ``prediction-poisoning(epsilon=1, keep_argmax)`` 0.23 (0.34), ``prob-noise(sigma=0.2)``
     0.41 (0.60, and randomised).
   - *invalid*: an answered row that is not a probability vector (a negative entry, or a sum off 1
     by more than 1e-3).

   The answers look *perturbed* when any of the three holds.

2. **Query averaging** (when randomised). Every query row, fingerprint and extraction alike, is
   sent ``averaging`` (r, default 4) times in the same call, and psml sees one answer made of the
   answered copies (``combine``): by default their per-class median, renormalised; or their mean.
   ``prob-noise`` clips the noisy probabilities at 0 and renormalises, so its noise is not
   zero-mean: every near-zero class gains about ``sigma / sqrt(2 pi)`` on average, and the mean of
   many copies converges to a flattened answer, not the clean one. The median of a class that is
   0 is 0 (half its copies are clipped to it), so the median undoes that bias. On ``fmnist-tiny``'s
   ``rank:1`` (32 pool inputs, L1 distance to the clean answer): at ``sigma`` 0.05 one answer is
   0.29 off, the mean of 4 (16) copies 0.25 (0.24), their median 0.20 (0.11); at ``sigma`` 0.2, 0.80,
   0.72 (0.71) and 0.58 (0.37). Every copy is a query the server counts: the attack hands psml a
   target whose budget is the server's remaining count divided by r (rounded down), so psml's
   fingerprint plan and its extraction shrink to a quarter at the default. ``jitter`` > 0 sends the
   copies after the first as ``clip(x + u, 0, 1)`` with ``u`` uniform in ``[-jitter, jitter]``
   (against duplicate-query detectors; 0 by default, as an exact repeat averages the very answer
   sought). Combined answers to the same probe still differ a little, so psml's exact signature
   match would take each for a new model: a fingerprint answer within ``2 * noise / sqrt(r)``
   (largest per-class difference; a heuristic for the spread of combined answers) of an earlier
   answer to the same input is taken for it, as ``psml-jitter`` does with a fixed tolerance; one
   near none is sent once more and becomes a new model only if the second answer confirms it. r is
   not spent on a deterministic service (no repeat there tells anything new), which is why the
   default can be above 1; 4 is where the median starts to pay (with 2 copies it is their mean)
   while leaving a quarter of the budget's distinct inputs. This does not rescue the answer
   fingerprint: on ``fmnist-tiny`` (``rank:2``, budget 1000, seeds 0-3) it found the victim's
   region in 1 seed of 4 at ``sigma`` 0.05 and in none at 0.2 (psml: none at either), because
   the tiny zoo's models answer psml's probe 0.09 to 0.75 apart while 4 combined answers of one
   model still stray about 0.1 (``sigma`` 0.05) to 0.2 (0.2) apart, so a tolerance either merges
   two models or splits one; ``psml-timing`` needs no answer fingerprint. Soft cross-entropy is
   linear in the target, so zero-mean noise would cost a soft-label surrogate only variance; the
   combined answers pay off against the bias and for the argmax the fallback trains on.

3. **Hard-label fallback.** ``fallback = "auto"`` (default) trains the surrogate on the argmax of
   the (averaged) answers when they look perturbed and on the soft answers otherwise; ``"never"``
   keeps the ``labels`` parameter, ``"always"`` trains on argmax labels whatever the diagnosis.
   Most output defenses keep the top class (MAD-argmax exactly, ``reverse-sigmoid`` nearly
   always), and argmax labels drop what they perturb.

Left out: **D-DAE-style recovery** (Chen et al., IEEE S&P 2023: a classifier that names the defense
from answer statistics and a generative model that maps perturbed answers back to clean ones,
both trained on shadow models the attacker builds and defends itself). A faithful version needs
shadow models trained on labelled attacker data, and the pool has no labels (``Knowledge`` holds
none; training shadows on the service's own answers would learn the defended function), several
shadow trainings plus the detector and the recovery network within one cell on 2 CPU cores, and
the defenses' own code applied to the shadows' answers, MAD's included with the defender's proxy
network the attacker does not have. Nothing short of that would be D-DAE.

Adaptive Misinformation is not diagnosed: its rank reversal keeps the set of probabilities, so
none of the statistics moves, and its argmax is the wrong class anyway. On an out-of-distribution
pool an undefended model may be unconfident enough to look flattened (the fallback then trains
on argmax labels; the ``threat-models`` grid measures both pools).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from attacks.psml import SAME_ANSWER, Psml
from psml_bench import (Allowed, Knowledge, Spec, SurrogateConfig, Target, extract, register_attack,
                        sample_pool)

log = logging.getLogger(__name__)

# the share of repeated inputs whose two answers must differ for the service to count as randomised
RANDOMISED_SHARE = 0.5
# how far an answered row's sum may be from 1 before it is no probability vector
SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Diagnosis:
    """What the attacker concluded from ``detect`` inputs each sent twice under the lax spec.

    Attributes:
        randomised: more than half of the inputs got two different answers.
        noise: the mean largest per-class difference between an input's two answers.
        confidence: the mean top-1 probability of the answers.
        floor: the advertised minimum accuracy (what the answering model at least reaches).
        flattened: ``confidence`` is below ``threshold`` times ``floor``.
        invalid: some answered row is not a probability vector.
    """

    randomised: bool
    noise: float
    confidence: float
    floor: float
    flattened: bool
    invalid: bool

    @property
    def perturbed(self) -> bool:
        """Whether the answers look perturbed by an output defense."""
        return self.randomised or self.flattened or self.invalid


def diagnose(target: Target, knowledge: Knowledge, n_inputs: int, threshold: float,
             rng: np.random.Generator) -> Diagnosis:
    """Send ``n_inputs`` pool inputs twice each under the lax spec (``2 * n_inputs`` queries) and read the answers."""
    (a_lo, _), (_, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
    inputs = knowledge.pool[sample_pool(knowledge, n_inputs, rng)]
    answers = target.query(torch.cat([inputs, inputs]), Spec(a_lo, l_hi), purpose="fingerprint").double()
    first, second = answers[:len(inputs)], answers[len(inputs):]
    both = torch.isfinite(first).all(dim=1) & torch.isfinite(second).all(dim=1)  # refused rows tell nothing
    if not bool(both.any()):
        log.warning("psml-aware: every diagnosis query was refused; assuming unperturbed answers")
        return Diagnosis(False, 0.0, float("nan"), a_lo, False, False)
    first, second = first[both], second[both]
    difference = (first - second).abs().amax(dim=1)
    rows = torch.cat([first, second])
    invalid = bool(((rows < 0).any(dim=1) | ((rows.sum(dim=1) - 1).abs() > SUM_TOLERANCE)).any())
    confidence = float(rows.clamp(0, 1).amax(dim=1).mean())
    return Diagnosis(randomised=float((difference > SAME_ANSWER).double().mean()) > RANDOMISED_SHARE,
                     noise=float(difference.mean()), confidence=confidence, floor=float(a_lo),
                     flattened=confidence < threshold * a_lo, invalid=invalid)


def combine(copies: torch.Tensor, how: str) -> torch.Tensor:
    """One answer from ``(r, classes)`` answered copies: their mean, or their per-class median renormalised."""
    if how == "mean" or len(copies) < 3:  # the median of one or two copies is their mean
        return copies.mean(dim=0)
    ordered = copies.sort(dim=0).values
    middle = len(copies) // 2
    median = ordered[middle] if len(copies) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    total = median.sum()
    return median / total if total > 0 else copies.mean(dim=0)


class AveragingTarget:
    """A target wrapper that sends every row ``repeats`` times and answers with one answer made of the copies
    (:func:`combine`).

    Its budget is the server's remaining count divided by ``repeats`` (every copy is a query the
    server counts). With ``tolerance`` set, a fingerprint answer within it (largest per-class
    difference) of an earlier fingerprint answer to the same input (byte for byte) is replaced by
    that one, so that psml recognises the model; an answer near none of them is sent once more and
    becomes a new signature only if the second answer is near it (else the nearest earlier one it
    is near, if any).
    """

    def __init__(self, target: Target, repeats: int, jitter: float, tolerance: float | None,
                 rng: np.random.Generator, combine: str = "median"):
        self.target, self.repeats, self.jitter, self.tolerance, self.rng = target, repeats, jitter, tolerance, rng
        self.combine = combine
        self.signatures: dict[bytes, list[torch.Tensor]] = {}
        self.sent = 0

    def _signature(self, row: torch.Tensor, answer: torch.Tensor, spec: Spec) -> torch.Tensor:
        """The signature ``answer`` stands for: the nearest earlier one for this input within the tolerance, else
        a new one once a second answer (``repeats`` more queries) confirms it."""
        seen = self.signatures.setdefault(hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest(),
                                          [])
        nearest = self._nearest(seen, answer)
        if nearest is not None:
            return nearest
        remaining = self.target.remaining_budget
        if seen and (remaining is None or remaining >= self.repeats):
            # a stray combined answer must not become a model of its own: ask again
            again, refused, _ = self._send(row[None], spec, "fingerprint")
            if not bool(refused[0]):
                confirmed = (again[0] - answer).abs().max() < self.tolerance
                nearest = self._nearest(seen, again[0])
                if not confirmed and nearest is not None:
                    return nearest
        seen.append(answer)
        return answer

    def _nearest(self, seen: list[torch.Tensor], answer: torch.Tensor) -> torch.Tensor | None:
        distances = [float((signature - answer).abs().max()) for signature in seen]
        if distances and min(distances) < self.tolerance:
            return seen[int(np.argmin(distances))]
        return None

    def _send(self, inputs: torch.Tensor, spec, purpose: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Send every row ``repeats`` times; the combined answers, the refused rows and the least latencies."""
        n, r = len(inputs), self.repeats
        copies = inputs.repeat_interleave(r, dim=0)
        if self.jitter > 0 and r > 1:
            later = torch.arange(len(copies)) % r != 0
            noise = self.rng.uniform(-self.jitter, self.jitter, size=(int(later.sum()), *inputs.shape[1:]))
            copies[later] = (copies[later] + torch.from_numpy(noise).float()).clamp(0, 1)
        specs = spec if isinstance(spec, Spec) else [s for s in spec for _ in range(r)]
        answers = self.target.query(copies, specs, purpose=purpose).view(n, r, -1)
        self.sent += n * r
        answered = torch.isfinite(answers).all(dim=2)
        refused = ~answered.any(dim=1)
        combined = torch.full(answers.shape[::2], float("nan"), dtype=answers.dtype)
        for row in torch.nonzero(~refused).flatten().tolist():
            combined[row] = combine(answers[row][answered[row]], self.combine)
        latency = self.target.last_latency_ms
        if latency is not None:  # the least latency of a row's copies (queueing only adds)
            latency = latency.view(n, r).amin(dim=1)
        return combined, refused, latency

    def query(self, inputs, spec, purpose: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        inputs = torch.as_tensor(inputs).float()
        answers, refused, latency = self._send(inputs, spec, purpose)
        if self.tolerance is not None and purpose == "fingerprint":
            for row in torch.nonzero(~refused).flatten().tolist():
                answers[row] = self._signature(inputs[row], answers[row], spec if isinstance(spec, Spec) else spec[row])
        return answers, refused, latency

    def remaining(self) -> int | None:
        """The server's remaining count in units of ``repeats`` queries."""
        remaining = self.target.remaining_budget
        return None if remaining is None else remaining // self.repeats

    def handle(self) -> Target:
        """The wrapped target, as psml sees it."""
        return Target(self.query, self.remaining)


@register_attack("psml-aware")
class PsmlAware(Psml):
    """psml that diagnoses its answers, averages repeated queries against noise and falls back to argmax labels."""

    # psml's parameters except requery (the averaging supersedes it)
    defaults = {**{k: v for k, v in Psml.defaults.items() if k != "requery"},
                "averaging": 4, "combine": "median", "jitter": 0.0, "fallback": "auto", "threshold": 0.5, "detect": 16}
    allowed = {"averaging": Allowed(minimum=1, integer=True), "jitter": Allowed(minimum=0, maximum=1),
               "combine": Allowed(choices=("median", "mean")), "fallback": Allowed(choices=("auto", "never", "always")),
               "threshold": Allowed(minimum=0, maximum=1, exclusive_minimum=True),
               "detect": Allowed(minimum=1, maximum=256, integer=True)}

    def labels(self, diagnosis: Diagnosis) -> str:
        """The labels the surrogate trains on: argmax (``"hard"``) when the fallback applies, else ``labels``."""
        fallback = self.params["fallback"]
        if fallback == "always" or (fallback == "auto" and diagnosis.perturbed):
            return "hard"
        return str(self.params["labels"])

    def wrap(self, target: Target, diagnosis: Diagnosis, rng: np.random.Generator) -> Target:
        """The target psml sees: averaged and tolerance-matched when the answers are randomised, else ``target``."""
        if not diagnosis.randomised:
            return target
        repeats = int(self.params["averaging"])
        tolerance = max(SAME_ANSWER, 2 * diagnosis.noise / math.sqrt(repeats))
        return AveragingTarget(target, repeats, float(self.params["jitter"]), tolerance, rng,
                               str(self.params["combine"])).handle()

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        diagnosis = diagnose(target, knowledge, int(self.params["detect"]), float(self.params["threshold"]), rng)
        labels = self.labels(diagnosis)
        log.info("psml-aware: %s; training on %s labels", diagnosis, labels)
        wrapped = self.wrap(target, diagnosis, rng)
        repeats = int(self.params["averaging"]) if diagnosis.randomised else 1
        spec = self.fingerprint(wrapped, knowledge, self._left(wrapped, budget, repeats), rng)
        config = replace(SurrogateConfig.from_params(self.params), labels=labels)
        return extract(wrapped, knowledge, spec, self._left(wrapped, budget, repeats), rng, config)

    @staticmethod
    def _left(target: Target, budget: int, repeats: int) -> int:
        """Queries (of ``repeats`` copies each) the target still answers; ``budget`` counts when it has none."""
        remaining = target.remaining_budget
        return budget // repeats if remaining is None else remaining
