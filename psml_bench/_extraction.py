"""The extraction step shared by attacks: choose queries, send them, train a timm surrogate on the answers.

Which inputs are queried is an extraction :class:`Strategy`, a plugin (``strategies/``, one
module each, registered in :data:`STRATEGIES`). The default, ``random``, is random pool sampling
(Knockoff Nets / Copycat): inputs drawn from the attacker's unlabeled pool without replacement.
Whatever the strategy, the queries go through a :class:`QuerySession` (the attack's specs in
order, never past the query count, each pool input at most once) and the final surrogate is a
small timm model fitted to every answer (soft labels: the probability vectors; hard labels:
their argmax).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._errors import ConfigError
from ._plugins import Plugin
from ._registry import Registry
from ._serving import Knowledge, Spec, Target

QUERY_BATCH = 512


@dataclass(frozen=True)
class SurrogateConfig:
    """How the attacker trains its surrogate.

    Attributes:
        arch: timm architecture of the surrogate.
        epochs: passes over the queried set (at least ``min_steps`` optimiser steps in all).
        labels: ``"soft"`` (probability vectors) or ``"hard"`` (argmax class).
        strategy: the registered extraction :class:`Strategy` that chooses the queries.
    """

    arch: str = "test_resnet"
    epochs: int = 10
    min_steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    labels: str = "soft"
    strategy: str = "random"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SurrogateConfig:
        """Take the surrogate fields (``surrogate`` = arch, ``epochs``, ``min_steps``, ``labels``, ``strategy``)
        from plugin params.

        Raises:
            ConfigError: ``labels`` is not soft or hard.
            UnknownPluginError: ``strategy`` is not registered (with "did you mean").
        """
        config = cls(arch=params.get("surrogate", cls.arch), epochs=int(params.get("epochs", cls.epochs)),
                     min_steps=int(params.get("min_steps", cls.min_steps)), labels=params.get("labels", cls.labels),
                     strategy=params.get("strategy", cls.strategy))
        if config.labels not in ("soft", "hard"):
            raise ConfigError(f"parameter 'labels' must be 'soft' or 'hard', got {config.labels!r}")
        STRATEGIES.get(config.strategy)
        return config

    def steps(self, n: int) -> int:
        """Optimiser steps :func:`train_surrogate` takes on ``n`` examples."""
        return max(self.min_steps, self.epochs * math.ceil(n / self.batch_size))

    def cheaper(self, fraction: float, n: int) -> SurrogateConfig:
        """This config for ``fraction`` of the steps it takes on ``n`` examples (a strategy's interim surrogate)."""
        return replace(self, epochs=0, min_steps=max(2, math.ceil(fraction * self.steps(n))))


SURROGATE_DEFAULTS: dict[str, Any] = {"surrogate": SurrogateConfig.arch, "epochs": SurrogateConfig.epochs,
                                      "min_steps": SurrogateConfig.min_steps, "labels": SurrogateConfig.labels,
                                      "strategy": SurrogateConfig.strategy}


class Surrogate(torch.nn.Module):
    """A timm network behind a fixed input normalisation estimated from the attacker's pool."""

    def __init__(self, arch: str, in_chans: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        import timm

        self.net = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("std", std.view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of the classifier layer), one row per input."""
        return self.net.forward_head(self.net.forward_features((x - self.mean) / self.std), pre_logits=True)


def sample_pool(knowledge: Knowledge, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` distinct pool indices (fewer if the pool is smaller), drawn with ``rng``."""
    n = min(n, len(knowledge.pool))
    return torch.from_numpy(np.sort(rng.choice(len(knowledge.pool), size=n, replace=False)))


def query_batched(target: Target, inputs: torch.Tensor, spec: Spec | Sequence[Spec], *,
                  purpose: str = "extract") -> torch.Tensor:
    """Query ``inputs`` in batches; one query per row."""
    answers = []
    for start in range(0, len(inputs), QUERY_BATCH):
        batch_spec = spec if isinstance(spec, Spec) else list(spec)[start:start + QUERY_BATCH]
        answers.append(target.query(inputs[start:start + QUERY_BATCH], batch_spec, purpose=purpose))
    return torch.cat(answers)


def train_surrogate(inputs: torch.Tensor, answers: torch.Tensor, knowledge: Knowledge, config: SurrogateConfig,
                    rng: np.random.Generator, *, init: Surrogate | None = None) -> Surrogate:
    """Fit a surrogate to (inputs, answers); answers are probability rows.

    Args:
        init: a surrogate to train further (in place) instead of a fresh one, e.g. a strategy's
            interim surrogate of the previous round.
    """
    seed = int(rng.integers(2**31))
    if init is not None:
        model = init
    else:
        pool = knowledge.pool
        mean = pool.mean(dim=(0, 2, 3))
        std = pool.std(dim=(0, 2, 3)).clamp_min(1e-6)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Surrogate(config.arch, knowledge.input_shape[0], knowledge.num_classes, mean, std)
    if config.labels == "hard":
        targets = F.one_hot(answers.argmax(1), knowledge.num_classes).float()
    elif config.labels == "soft":
        targets = answers.float()
    else:
        raise ValueError(f"labels must be 'soft' or 'hard', got {config.labels!r}")
    n = len(inputs)
    if n < 2:  # batches of one are skipped (batch norm): nothing to train on
        return model.eval()
    steps = config.steps(n)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2 or done == steps:
                continue
            log_probs = F.log_softmax(model(inputs[batch]), dim=1)
            loss = -(targets[batch] * log_probs).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
    return model.eval()


class QuerySession:
    """The queries of one extraction: at most ``n_queries``, sent under the attack's spec(s) in order.

    Every answer is kept (:attr:`inputs`, :attr:`answers`, in the order sent); pool inputs are
    tracked so that none is queried twice.

    Args:
        spec: one spec for all queries, or a sequence with one spec per query, consumed in order.

    Attributes:
        sent: queries sent so far.
        queried: per pool input, whether it was queried.
    """

    def __init__(self, target: Target, knowledge: Knowledge, spec: Spec | Sequence[Spec], n_queries: int):
        self.target = target
        self.knowledge = knowledge
        self.n_queries = int(n_queries)
        self._spec = spec if isinstance(spec, Spec) else list(spec)
        self._inputs: list[torch.Tensor] = []
        self._answers: list[torch.Tensor] = []
        self.sent = 0
        self.queried = torch.zeros(len(knowledge.pool), dtype=torch.bool)

    @property
    def remaining(self) -> int:
        """Queries this session may still send."""
        return self.n_queries - self.sent

    @property
    def inputs(self) -> torch.Tensor:
        """Every input queried so far."""
        return torch.cat(self._inputs) if self._inputs else torch.empty(0, *self.knowledge.input_shape)

    @property
    def answers(self) -> torch.Tensor:
        """The answers (probability rows) to :attr:`inputs`."""
        return torch.cat(self._answers) if self._answers else torch.empty(0, self.knowledge.num_classes)

    def unqueried(self) -> torch.Tensor:
        """Indices of the pool inputs not queried yet, ascending."""
        return torch.nonzero(~self.queried).flatten()

    def query(self, inputs: torch.Tensor) -> torch.Tensor:
        """Query ``inputs`` (any inputs in [0, 1], e.g. synthetic ones); return their answers.

        Raises:
            ValueError: more inputs than :attr:`remaining`, or than specs left in the sequence.
        """
        n = len(inputs)
        if n > self.remaining:
            raise ValueError(f"{n} queries exceed the {self.remaining} left of this extraction's {self.n_queries}")
        if n == 0:
            return torch.empty(0, self.knowledge.num_classes)
        if isinstance(self._spec, Spec):
            spec: Spec | list[Spec] = self._spec
        else:
            spec = self._spec[self.sent:self.sent + n]
            if len(spec) < n:
                raise ValueError(f"{n} queries but only {len(spec)} specs left in the sequence")
        answers = query_batched(self.target, inputs, spec)
        self._inputs.append(inputs)
        self._answers.append(answers)
        self.sent += n
        return answers

    def query_pool(self, indices: torch.Tensor) -> torch.Tensor:
        """Query the pool inputs at ``indices``; return their answers.

        Raises:
            ValueError: an index was queried before (or appears twice).
        """
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self.queried[indices].any() or len(torch.unique(indices)) != len(indices):
            raise ValueError("pool inputs may be queried only once")
        answers = self.query(self.knowledge.pool[indices])
        self.queried[indices] = True
        return answers


class Strategy(Plugin, ABC):
    """An extraction strategy: chooses which inputs an extraction queries.

    ``collect`` sends the queries through the session; :func:`extract` then trains the final
    surrogate (the attack's :class:`SurrogateConfig`) on everything collected. Randomness comes
    only from the given generator.
    """

    kind: ClassVar[str] = "strategy"

    @abstractmethod
    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        """Send ``session.remaining`` queries (fewer only when the pool runs out of new inputs)."""


class ActiveLearning(Strategy):
    """Pool-based active learning in rounds (ActiveThief): subclasses say which candidates to pick.

    A random seed set (``seed_fraction`` of the queries), then ``rounds`` equal rounds: an
    interim surrogate, trained on every answer so far for ``round_cost`` of the final
    surrogate's steps (warm-started from the previous round's, so it stays cheap), scores a
    random subsample of the unqueried pool (``candidate_factor`` times the round's size) and
    :meth:`select` picks the round's queries among them.
    """

    defaults: ClassVar[dict[str, Any]] = {"rounds": 3, "seed_fraction": 0.25, "round_cost": 0.1,
                                          "candidate_factor": 4}

    @abstractmethod
    def select(self, surrogate: Surrogate, candidates: torch.Tensor, session: QuerySession, k: int) -> torch.Tensor:
        """Positions in ``candidates`` (inputs) of the ``k`` to query; runs under ``torch.no_grad``."""

    def collect(self, session: QuerySession, knowledge: Knowledge, config: SurrogateConfig,
                rng: np.random.Generator) -> None:
        rounds = int(self.params["rounds"])
        seed = math.ceil(session.remaining * float(self.params["seed_fraction"])) if rounds > 0 else session.remaining
        session.query_pool(sample_pool(knowledge, seed, rng))
        interim = config.cheaper(float(self.params["round_cost"]), session.n_queries)
        surrogate = None
        for round_index in range(rounds):
            unqueried = session.unqueried()
            k = min(len(unqueried), math.ceil(session.remaining / (rounds - round_index)))
            if k == 0:
                break
            size = min(len(unqueried), max(k, int(self.params["candidate_factor"] * k)))
            candidates = unqueried[np.sort(rng.choice(len(unqueried), size=size, replace=False))]
            if size > k:
                surrogate = train_surrogate(session.inputs, session.answers, knowledge, interim, rng, init=surrogate)
                with torch.no_grad():
                    candidates = candidates[self.select(surrogate, knowledge.pool[candidates], session, k)]
            session.query_pool(candidates)


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", Strategy, builtin_package="strategies",
                                                entry_point_group="psml_bench.strategies")


def register_strategy(name: str):
    """Class decorator registering a built-in or third-party extraction strategy."""
    return STRATEGIES.register(name)


def extract(target: Target, knowledge: Knowledge, spec: Spec | Sequence[Spec], n_queries: int,
            rng: np.random.Generator, config: SurrogateConfig,
            extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> Surrogate:
    """Query up to ``n_queries`` inputs chosen by ``config.strategy`` under ``spec``, train a surrogate.

    Args:
        spec: one spec for all queries, or a sequence of ``n_queries`` specs, consumed in order.
        extra: answers the attack already holds (inputs, probabilities), added to the training set.
    """
    strategy = STRATEGIES.get(config.strategy)()
    session = QuerySession(target, knowledge, spec, n_queries)
    strategy.collect(session, knowledge, config, rng)
    inputs, answers = session.inputs, session.answers
    if extra is not None and len(extra[0]):
        inputs, answers = torch.cat([inputs, extra[0]]), torch.cat([answers, extra[1]])
    return train_surrogate(inputs, answers, knowledge, config, rng)
