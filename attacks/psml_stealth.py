"""``psml-stealth``: a detector-aware psml whose every query keeps its distances to earlier queries natural.

Distance-based detectors (``prada``) watch, per client and per predicted class, the minimum L2
distance of each query to the client's earlier ones: natural inputs give a roughly normal set of
distances, repeated inputs (distance 0) and small synthetic steps do not. This attacker:

1. fingerprints by latency (``psml-timing``: every fingerprint query is a fresh pool input,
   never a repeated probe), so it needs ``latency_visible = true``;
2. extracts in rounds, as Jacobian augmentation does (``strategies/jacobian.py``), but each
   round's queries are a ``natural_fraction`` of fresh pool inputs and the rest synthetic inputs
   ``clip(x + s * sign(grad_x logit_y(x)), 0, 1)`` of an interim surrogate, whose step ``s`` is
   set per input so that its L2 distance to its parent ``x`` is drawn from the minimum
   distances the natural queries so far had (per class, as the detector measures them).

The detector measures a query against the earlier queries of the class the served model gives it,
and a step of a natural length often changes that class (measured in docs/defenses.md, ``prada``):
such synthetic queries sit farther from their class's queries than natural ones do. The extraction's
pool inputs are drawn independently of the fingerprint's, so a few may repeat one.

Sybil identities (splitting the budget over several client ids) are outside the threat model:
the service has one attacker client and counts the budget per client, as a paying account would;
the attack here evades detection with one identity.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from attacks.psml_timing import PsmlTiming
from psml_bench import (Allowed, Knowledge, QuerySession, Surrogate, SurrogateConfig, Target, register_attack,
                        sample_pool, train_surrogate)

GRADIENT_BATCH = 512
STEP_BISECTIONS = 20


def nearest_distances(inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per input after the first of its label: the L2 distance to the nearest earlier input of that label."""
    flat = inputs.reshape(len(inputs), -1).double()
    out = []
    for label in labels.unique().tolist():
        rows = flat[labels == label]
        if len(rows) < 2:
            continue
        distances = torch.cdist(rows, rows)
        upper = torch.triu(torch.full_like(distances, math.inf))  # only earlier inputs count
        out.append((distances + upper)[1:].min(dim=1).values.numpy())
    return np.concatenate(out) if out else np.empty(0)


def spaced_steps(surrogate: Surrogate, inputs: torch.Tensor, labels: torch.Tensor,
                 distances: np.ndarray) -> torch.Tensor:
    """``clip(x + s * sign(grad_x logit_label(x)), 0, 1)`` with ``s`` set per row so that the L2 step is ``distances``."""
    out = []
    for start in range(0, len(inputs), GRADIENT_BATCH):
        x = inputs[start:start + GRADIENT_BATCH].detach().clone().requires_grad_(True)
        logits = surrogate(x).gather(1, labels[start:start + GRADIENT_BATCH].view(-1, 1))
        (gradient,) = torch.autograd.grad(logits.sum(), x)
        x, direction = x.detach(), gradient.sign()
        wanted = torch.from_numpy(distances[start:start + len(x)]).float().view(-1, *([1] * (x.ndim - 1)))
        low, high = torch.zeros_like(wanted), torch.ones_like(wanted)
        for _ in range(STEP_BISECTIONS):  # the step's length grows with s: bisect s per row
            middle = (low + high) / 2
            length = ((x + middle * direction).clamp(0, 1) - x).flatten(1).norm(dim=1).view_as(wanted)
            low, high = torch.where(length < wanted, middle, low), torch.where(length < wanted, high, middle)
        out.append((x + high * direction).clamp(0.0, 1.0))
    return torch.cat(out)


@register_attack("psml-stealth")
class PsmlStealth(PsmlTiming):
    """Latency fingerprinting, then extraction mixing fresh pool inputs with synthetic ones spaced like natural ones."""

    # its own rounds choose the queries: no ``strategy``
    defaults = {**{k: v for k, v in PsmlTiming.defaults.items() if k != "strategy"}, "natural_fraction": 0.5,
                "rounds": 3, "round_cost": 0.1}
    allowed = {"natural_fraction": Allowed(minimum=0, maximum=1), "rounds": Allowed(minimum=0, integer=True),
               "round_cost": Allowed(minimum=0, exclusive_minimum=True)}

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        spec = self.fingerprint(target, knowledge, budget, rng)
        remaining = target.remaining_budget
        config = SurrogateConfig.from_params(self.params)
        session = QuerySession(target, knowledge, spec, budget if remaining is None else remaining)
        self.collect(session, knowledge, config, rng)
        return train_surrogate(session.inputs, session.answers, knowledge, config, rng)

    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        """A pool seed set, then rounds that double it with fresh pool inputs and spaced synthetic ones."""
        rounds = int(self.params["rounds"])
        session.query_pool(sample_pool(knowledge, math.ceil(session.remaining / 2 ** rounds), rng))
        natural = torch.ones(len(session.inputs), dtype=torch.bool)  # per kept answer: a pool input?
        interim = config.cheaper(float(self.params["round_cost"]), session.n_queries)
        surrogate = None
        while session.remaining > 0 and len(session.inputs) > 0:
            inputs, answers = session.inputs, session.answers
            k = min(len(inputs), session.remaining)
            fresh = min(round(k * float(self.params["natural_fraction"])), len(session.unqueried()))
            unqueried = session.unqueried()
            sent_before = len(session.inputs)
            session.query_pool(unqueried[np.sort(rng.choice(len(unqueried), size=fresh, replace=False))])
            natural = torch.cat([natural, torch.ones(len(session.inputs) - sent_before, dtype=torch.bool)])
            synthetic = min(k - fresh, session.remaining)
            if synthetic <= 0:
                continue
            inputs, answers = session.inputs, session.answers
            labels = answers.argmax(dim=1)
            spacing = nearest_distances(inputs[natural], labels[natural])
            if not len(spacing):
                spacing = np.array([1.0])
            surrogate = train_surrogate(inputs, answers, knowledge, interim, rng, init=surrogate)
            parents = torch.from_numpy(np.sort(rng.choice(len(inputs), size=synthetic, replace=False)))
            steps = spaced_steps(surrogate, inputs[parents], labels[parents], rng.choice(spacing, size=synthetic))
            sent_before = len(session.inputs)
            session.query(steps)
            natural = torch.cat([natural, torch.zeros(len(session.inputs) - sent_before, dtype=torch.bool)])
