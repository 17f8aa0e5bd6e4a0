"""``jacobian``: Jacobian-based dataset augmentation (Papernot et al. 2017, "Practical Black-Box Attacks against
Machine Learning", AsiaCCS).

A seed set from the pool, then ``rounds`` rounds: train an interim surrogate on every answer so
far, and for (a random subset of) the inputs queried so far create
``x' = clip(x + step * sign(d logit_y(x) / dx), 0, 1)``, ``y`` the class the target gave ``x``, and
query them. Each round doubles the set, so the seed set is ``1 / 2**rounds`` of the queries. The
synthetic inputs are new inputs, sent to (and counted by) the server like any other.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from psml_bench import (Knowledge, QuerySession, Strategy, Surrogate, SurrogateConfig, register_strategy,
                        sample_pool, train_surrogate)

GRADIENT_BATCH = 512


def jacobian_step(surrogate: Surrogate, inputs: torch.Tensor, labels: torch.Tensor, step: float) -> torch.Tensor:
    """``clip(x + step * sign(grad_x logit_label(x)), 0, 1)`` for each input row."""
    out = []
    for start in range(0, len(inputs), GRADIENT_BATCH):
        x = inputs[start:start + GRADIENT_BATCH].detach().clone().requires_grad_(True)
        logits = surrogate(x).gather(1, labels[start:start + GRADIENT_BATCH].view(-1, 1))
        (gradient,) = torch.autograd.grad(logits.sum(), x)
        out.append((x.detach() + step * gradient.sign()).clamp(0.0, 1.0))
    return torch.cat(out)


@register_strategy("jacobian")
class Jacobian(Strategy):
    """A pool seed set, doubled each round by steps along the sign of an interim surrogate's Jacobian."""

    defaults = {"rounds": 3, "step": 0.1, "round_cost": 0.1}

    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        seed = math.ceil(session.remaining / 2 ** int(self.params["rounds"]))
        session.query_pool(sample_pool(knowledge, seed, rng))
        interim = config.cheaper(float(self.params["round_cost"]), session.n_queries)
        surrogate = None
        # each round adds as many inputs as there are: ``rounds`` rounds fill the queries, more
        # only when the pool was smaller than the seed set
        # only answered queries are kept (a defense may refuse some): step from those
        while session.remaining > 0 and len(session.inputs) > 0:
            surrogate = train_surrogate(session.inputs, session.answers, knowledge, interim, rng, init=surrogate)
            k = min(len(session.inputs), session.remaining)
            chosen = torch.from_numpy(np.sort(rng.choice(len(session.inputs), size=k, replace=False)))
            inputs, answers = session.inputs[chosen], session.answers[chosen]
            session.query(jacobian_step(surrogate, inputs, answers.argmax(dim=1), float(self.params["step"])))
