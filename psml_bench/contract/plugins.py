"""The two kinds of plugin a grid names: extraction attacks and defenses (base classes)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from .parameters import Allowed, Plugin
from .surrogate_config import SURROGATE_ALLOWED

if TYPE_CHECKING:
    from .target import Knowledge, Target
    from .requests import Requests
    from .spec import SpecRange


class Attack(Plugin, ABC):
    """An extraction attack. Sees only the :class:`Target` and :class:`Knowledge`.

    ``access`` says what the harness connects ``target`` to: ``"service"`` (the zoo behind
    the serving policy and the defense) or ``"victim"`` (a service that hosts the victim
    alone: the single-model setting, an upper bound). ``requires_latency``: the attack needs the
    service to show each answer's latency (``latency_visible = true``); a grid that runs it on a
    service that does not is refused when it loads.
    """

    kind: ClassVar[str] = "attack"
    access: ClassVar[str] = "service"
    requires_latency: ClassVar[bool] = False
    # the surrogate parameters' rules, for every attack that declares them: a grid with a misspelt
    # strategy or label mode fails when it loads, not per cell
    allowed: ClassVar[dict[str, Allowed]] = dict(SURROGATE_ALLOWED)

    @abstractmethod
    def run(self, target: Target, knowledge: Knowledge, budget: int,
            rng: np.random.Generator) -> torch.nn.Module:
        """Spend at most ``budget`` queries on ``target``; return a surrogate (inputs -> logits)."""


class Defense(Plugin):
    """A defense: hooks the serving system calls around routing (defense API v3).

    One instance serves a whole cell: every request of every client passes through it in
    arrival order, so it may keep per-client state. For each batch of requests (a
    :class:`~psml_bench.Requests` view: opaque client ids, inputs, specs, arrival times):
    ``admit`` may refuse requests, then ``perturb_spec`` runs before the policy on each admitted
    request's spec, ``reroute`` after it on the policy's choice, and ``answer`` (by default
    ``postprocess``, which sees only the probabilities) shapes the answers, and ``client_work_ms`` may
    price each answer in the client's compute (proof of work; none by default). A hook may call
    :meth:`block` (every later request of that client is refused) or :meth:`detect` (the client
    is marked detected; what follows is the defense's choice). ``strength`` names the parameter
    that sets how strong the defense is (the one a sweep varies), ``deterministic`` whether
    identical calls give identical answers.
    """

    kind: ClassVar[str] = "defense"
    strength: ClassVar[str | None] = None
    deterministic: ClassVar[bool] = True

    def admit(self, requests: Requests, rng: np.random.Generator) -> np.ndarray | None:
        """Which requests to serve: ``None`` (all) or a boolean array, one per request.

        Refused requests are answered as refused (NaN rows) and still cost the client its budget.
        Requests of a blocked client are refused whatever this returns.
        """
        return None

    def block(self, client: int) -> None:
        """Refuse every request of ``client`` from now on (it counts as detected too)."""
        self._state("_blocked").add(int(client))
        self.detect(client)

    def detect(self, client: int) -> None:
        """Mark ``client`` as detected (the harness records when; detection alone refuses nothing)."""
        self._state("_detected").add(int(client))

    @property
    def blocked(self) -> frozenset[int]:
        """Clients blocked so far."""
        return frozenset(self._state("_blocked"))

    @property
    def detected(self) -> frozenset[int]:
        """Clients detected (or blocked) so far."""
        return frozenset(self._state("_detected"))

    def _state(self, name: str) -> set[int]:
        if name not in self.__dict__:
            self.__dict__[name] = set()
        return self.__dict__[name]

    def perturb_spec(self, min_accuracy: np.ndarray, max_latency_ms: np.ndarray, spec_range: SpecRange,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Specs the policy sees, one per query. The server clips them to the advertised range."""
        return min_accuracy, max_latency_ms

    def reroute(self, served: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The model that answers each query, after the policy chose ``served``.

        Args:
            served: the policy's choice, a menu index per query.
            candidates: ``(queries, models)`` booleans, the models meeting the spec the policy saw
                (all ``False`` in a row whose spec nothing meets).
        """
        return served

    def postprocess(self, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Answers returned to the client, one row per query (a ``(queries, classes)`` tensor)."""
        return probabilities

    def answer(self, requests: Requests, probabilities: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Answers to the admitted ``requests`` given the served models' ``probabilities`` (one row each).

        Override this instead of :meth:`postprocess` when the answer depends on the input or the
        client (e.g. Adaptive Misinformation, Prediction Poisoning).
        """
        return self.postprocess(probabilities, rng)

    def client_work_ms(self, requests: Requests, answers: torch.Tensor,
                       rng: np.random.Generator) -> np.ndarray | None:
        """Client-side compute, in ms, that each answered request costs before its answer is read; ``None``: none.

        Called after :meth:`answer`, on the same admitted ``requests`` and their ``answers``, it
        returns one finite, non-negative value per request (a proof-of-work puzzle's solving time,
        say). The simulated service counts it on the cell's clock: each client solves its puzzles
        one at a time, so a request's answer reaches its client only once that client has done the
        work of it and of the earlier answers it was still working on; the delay is in the client's
        end-to-end latency and in the attacker's wall time. The default, ``None``, adds nothing.
        """
        return None

    def watermark_pairs(self, client: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (inputs, watermark labels) the owner kept from ``client``'s queries; ``None``: none kept.

        A watermarking defense returns the inputs it answered with a deliberately wrong label and
        those labels (``(n, *input_shape)`` floats and ``n`` class indices, ``n`` possibly 0); the
        harness tests the attacker's surrogate and independent models on them after the cell
        (``ownership_queries``). Called once per cell, after the last request.
        """
        return None
