"""The extraction step shared by attacks: a strategy collects queries, a surrogate is trained."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ..contract.checks import generator
from ..contract.errors import ConfigError
from ..contract.registries import STRATEGIES
from ..contract.session import QuerySession, sample_pool
from ..contract.spec import Spec
from ..contract.strategy import Strategy
from ..contract.surrogate_config import SurrogateConfig
from ..contract.target import Knowledge, Target
from .surrogate import Surrogate, train_surrogate


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


def extract(target: Target, knowledge: Knowledge, spec: Spec | Sequence[Spec], n_queries: int,
            rng: np.random.Generator, config: SurrogateConfig,
            extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> Surrogate:
    """Query up to ``n_queries`` inputs chosen by ``config.strategy`` under ``spec``, train a surrogate.

    The surrogate is trained on every answer with ``config``, or is the one the strategy trained itself
    (see :meth:`Strategy.collect`).

    Args:
        spec: one spec for all queries, or a sequence of ``n_queries`` specs, consumed in order.
        extra: answers the attack already holds (inputs, probabilities), added to the training set (a
            strategy's own surrogate is trained further on them).
    """
    if not isinstance(config, SurrogateConfig):
        raise ConfigError(f"config must be a psml_bench.SurrogateConfig, got {type(config).__name__}")
    generator("extract's rng", rng)
    strategy = STRATEGIES.get(config.strategy)()
    session = QuerySession(target, knowledge, spec, n_queries)
    own = strategy.collect(session, knowledge, config, rng)
    if own is not None:
        return _strategy_surrogate(own, config.strategy, knowledge, config, rng, extra)
    inputs, answers = session.inputs, session.answers
    if extra is not None and len(extra[0]):
        inputs, answers = torch.cat([inputs, extra[0]]), torch.cat([answers, extra[1]])
    return train_surrogate(inputs, answers, knowledge, config, rng)


def _strategy_surrogate(own: object, name: str, knowledge: Knowledge, config: SurrogateConfig,
                        rng: np.random.Generator, extra: tuple[torch.Tensor, torch.Tensor] | None) -> Surrogate:
    """The surrogate a strategy trained itself, trained further on ``extra`` (with the attack's recipe) if any."""
    if not isinstance(own, Surrogate):
        raise ConfigError(f"strategy '{name}' returned {type(own).__name__} from collect; it must return None or "
                          "a psml_bench.Surrogate")
    own = own.to("cpu").eval()
    if extra is not None and len(extra[0]):
        return train_surrogate(extra[0], extra[1], knowledge, config, rng, init=own)
    return own
