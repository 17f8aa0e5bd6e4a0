"""``knockoff``: Knockoff Nets (Orekondy, Schiele and Fritz, CVPR 2019) against a model-zoo service.

Knockoff Nets query a victim with natural images from a *transfer set* and train a knockoff on
its soft answers. The paper samples the transfer set in one of two ways:

- ``sampling = "random"``: distinct pool inputs drawn uniformly (the paper's *random* strategy;
  here the same as the ``random`` extraction strategy);
- ``sampling = "adaptive"``: the paper's gradient bandit over the coarse classes of the
  transfer set. Each step draws a class ``z`` from the policy ``softmax(H)``, queries an unqueried
  input of that class and receives a reward ``r``; then ``H[z] += a (r - mean r) (1 - pi[z])`` and
  ``H[z'] -= a (r - mean r) pi[z']`` for every other class. The reward (``reward``) is the
  victim's *certainty* (the margin between its two largest probabilities), the answer's
  *diversity* (``sum_k max(0, y_k - mean y_k)``, the mean over the earlier answers) and the
  knockoff's *loss* on the new input (cross-entropy of its prediction against the answer), or
  ``all``: the mean of the three, each standardised by its running mean and standard deviation.

The attack is not spec-aware, so it needs a spec: ``spec = "fingerprint"`` (default) finds the
target role's region with psml's fingerprint (``attacks/psml.py``, its parameters and cost) and
sends every extraction query to its centre; ``spec = "lax"`` sends everything with the loosest
spec (lowest accuracy floor, highest latency bound), which on a zoo reaches the fastest model and
is meant for a service hosting one model (``benchmarks/knockoff_vs_art.py``). The knockoff is the
shared surrogate recipe trained on every answer (``labels``: soft by default, as in the paper).

Where this departs from the paper, and why:

- **Coarse classes.** The paper's transfer sets are labelled (ImageNet, OpenImages), and its
  bandit acts on the coarse nodes of their label hierarchy. The attacker's pool here has no
  labels (``Knowledge`` holds none), so the coarse classes are ``arms`` clusters of the pool found
  by the attacker: k-means (k-means++ start, ``KMEANS_ITERATIONS`` Lloyd steps, the attack's
  generator) on the pool average-pooled to at most ``CLUSTER_SIDE`` x ``CLUSTER_SIDE`` pixels per
  channel. A class with no unqueried input left drops out of the policy.
- **Rounds.** The paper updates the knockoff after every query. Here the budget is spent in
  ``rounds`` calls: within a round the policy is fixed; after the answers come back the bandit
  takes one update per answer, in order, with the knockoff of the previous round supplying the
  loss reward (a uniform prediction in the first round), and the interim knockoff is trained on
  every answer so far for ``round_cost`` of the final training's steps, warm-started from the
  previous round's (as the active-learning strategies do). The final knockoff is trained from
  scratch on every answer.
- **Step size and reward details.** A constant step size ``step_size`` (Sutton and Barto's
  gradient bandit; ART uses 1 / the class's count); the baseline ``mean r`` is the running mean of
  every reward so far, the current one included; the diversity reward's mean runs over every
  earlier answer (the paper's is over a window of the last steps, whose length it leaves open),
  as ART's does. The authors' released code (``knockoff/adversary/adaptive.py``) samples at
  random, so the adaptive strategy follows the paper's text.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from attacks.psml import Psml
from psml_bench import (Allowed, Knowledge, QuerySession, Spec, Surrogate, SurrogateConfig, Target, register_attack,
                        sample_pool, train_surrogate)

log = logging.getLogger(__name__)

CLUSTER_SIDE = 16
KMEANS_ITERATIONS = 25
REWARDS = ("cert", "div", "loss")


def coarse_classes(pool: torch.Tensor, k: int, rng: np.random.Generator) -> np.ndarray:
    """Per pool input, its cluster among ``k`` (k-means on the pool average-pooled to at most 16 x 16 pixels)."""
    side = (min(pool.shape[-2], CLUSTER_SIDE), min(pool.shape[-1], CLUSTER_SIDE))
    points = F.adaptive_avg_pool2d(pool.float(), side).flatten(1).double().numpy()
    k = min(k, len(points))
    squared = (points ** 2).sum(axis=1)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):  # k-means++: each next centre drawn in proportion to its squared distance
        nearest = np.min([squared - 2 * points @ c + c @ c for c in centres], axis=0).clip(min=0)
        total = nearest.sum()
        centres.append(points[rng.choice(len(points), p=nearest / total)] if total > 0
                       else points[rng.integers(len(points))])
    centre = np.stack(centres)
    for _ in range(KMEANS_ITERATIONS):
        labels = (squared[:, None] - 2 * points @ centre.T + (centre ** 2).sum(axis=1)[None]).argmin(axis=1)
        moved = np.stack([points[labels == j].mean(axis=0) if (labels == j).any() else centre[j] for j in range(k)])
        if np.array_equal(moved, centre):
            break
        centre = moved
    return labels


class GradientBandit:
    """The gradient bandit of Knockoff Nets: preferences ``H``, policy ``softmax(H)`` over the classes still open."""

    def __init__(self, n_arms: int, step_size: float):
        self.preferences = np.zeros(n_arms)
        self.open = np.ones(n_arms, dtype=bool)
        self.step_size = step_size
        self.baseline, self.steps = 0.0, 0

    def policy(self) -> np.ndarray:
        """The probability of each class (0 for a closed one)."""
        h = np.where(self.open, self.preferences, -np.inf)
        weights = np.exp(h - h[self.open].max())
        return weights / weights.sum()

    def update(self, arm: int, reward: float) -> None:
        """One step: move the preferences along the reward's gradient estimate, against the running baseline."""
        pi = self.policy()
        self.steps += 1
        self.baseline += (reward - self.baseline) / self.steps
        advantage = self.step_size * (reward - self.baseline)
        self.preferences -= advantage * pi
        self.preferences[arm] += advantage


class Rewards:
    """The paper's rewards for one answer; ``all`` averages the three after standardising each by its running
    mean and standard deviation."""

    def __init__(self, kind: str, num_classes: int):
        self.kind = kind
        self.mean_answer, self.answers = np.zeros(num_classes), 0
        self.mean, self.variance, self.count = np.zeros(3), np.zeros(3), 0

    def __call__(self, answer: np.ndarray, prediction: np.ndarray) -> float:
        top = np.sort(answer)[-2:]
        certainty = float(top[-1] - top[0]) if len(top) == 2 else 1.0
        diversity = float(np.maximum(0.0, answer - self.mean_answer).sum()) if self.answers else 0.0
        self.answers += 1
        self.mean_answer += (answer - self.mean_answer) / self.answers
        loss = float(-(answer * np.log(np.clip(prediction, 1e-12, None))).sum())
        raw = np.array([certainty, diversity, loss])
        self.count += 1
        delta = raw - self.mean
        self.mean += delta / self.count
        self.variance += (delta * (raw - self.mean) - self.variance) / self.count
        if self.kind != "all":
            return float(raw[REWARDS.index(self.kind)])
        std = np.sqrt(self.variance)
        standardised = np.divide(raw - self.mean, std, out=np.zeros(3), where=std > 1e-12)
        return float(standardised.mean())


@register_attack("knockoff")
class Knockoff(Psml):
    """Knockoff Nets: random or adaptive (gradient bandit over pool clusters) sampling, soft labels."""

    # psml's fingerprint parameters; the queries are knockoff's own (no ``strategy``, no ``requery``)
    defaults = {**{k: v for k, v in Psml.defaults.items() if k not in ("strategy", "requery")},
                "sampling": "random", "spec": "fingerprint", "arms": 10, "rounds": 10, "reward": "all",
                "step_size": 0.1, "round_cost": 0.1}
    allowed = {"sampling": Allowed(choices=("random", "adaptive")), "spec": Allowed(choices=("fingerprint", "lax")),
               "arms": Allowed(minimum=1, integer=True), "rounds": Allowed(minimum=1, integer=True),
               "reward": Allowed(choices=("all", *REWARDS)), "step_size": Allowed(minimum=0, exclusive_minimum=True),
               "round_cost": Allowed(minimum=0, exclusive_minimum=True)}

    def run(self, target: Target, knowledge: Knowledge, budget: int, rng: np.random.Generator) -> torch.nn.Module:
        if self.params["spec"] == "fingerprint":
            spec = self.fingerprint(target, knowledge, budget, rng)
        else:
            spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
        remaining = target.remaining_budget
        config = SurrogateConfig.from_params(self.params)
        session = QuerySession(target, knowledge, spec, budget if remaining is None else remaining)
        if self.params["sampling"] == "random":
            session.query_pool(sample_pool(knowledge, session.remaining, rng))
        else:
            self.adaptive(session, knowledge, config, rng)
        return train_surrogate(session.inputs, session.answers, knowledge, config, rng)

    def adaptive(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                 rng: np.random.Generator) -> None:
        """Spend the session's queries in rounds chosen by the gradient bandit over the pool's clusters."""
        classes = coarse_classes(knowledge.pool, int(self.params["arms"]), rng)
        n_arms = int(classes.max()) + 1
        # each class's inputs in a random order: drawing from a class takes its next unqueried input
        members = [list(rng.permutation(np.flatnonzero(classes == arm))) for arm in range(n_arms)]
        bandit = GradientBandit(n_arms, float(self.params["step_size"]))
        bandit.open = np.array([len(m) > 0 for m in members])
        rewards = Rewards(str(self.params["reward"]), knowledge.num_classes)
        rounds = int(self.params["rounds"])
        per_round = math.ceil(session.remaining / rounds)
        interim = config.cheaper(float(self.params["round_cost"]), session.n_queries)
        surrogate: Surrogate | None = None
        while session.remaining > 0 and bandit.open.any():
            arms, chosen = [], []
            for _ in range(min(per_round, session.remaining)):
                if not bandit.open.any():
                    break
                arm = int(rng.choice(n_arms, p=bandit.policy()))
                arms.append(arm)
                chosen.append(int(members[arm].pop()))
                bandit.open[arm] = len(members[arm]) > 0
            answers = session.query_pool(torch.tensor(chosen, dtype=torch.long))
            predictions = self._predict(surrogate, knowledge.pool[chosen], knowledge.num_classes)
            for arm, answer, prediction in zip(arms, answers.double().numpy(), predictions):
                if np.isfinite(answer).all():  # a refused query gives no reward
                    bandit.update(arm, rewards(answer, prediction))
            if session.remaining > 0 and len(session.inputs) > 1:
                surrogate = train_surrogate(session.inputs, session.answers, knowledge, interim, rng, init=surrogate)
        log.info("knockoff adaptive: final policy over %d classes %s", n_arms, np.round(bandit.policy(), 3).tolist())

    @staticmethod
    @torch.no_grad()
    def _predict(surrogate: Surrogate | None, inputs: torch.Tensor, num_classes: int) -> np.ndarray:
        """The interim knockoff's probabilities on ``inputs`` (uniform before the first one is trained)."""
        if surrogate is None:
            return np.full((len(inputs), num_classes), 1.0 / num_classes)
        return torch.softmax(surrogate.eval()(inputs), dim=1).double().numpy()
