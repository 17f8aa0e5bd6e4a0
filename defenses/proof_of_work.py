"""``proof-of-work``: an answer costs its client compute that grows with its queries' leakage (Dziedzic et al. 2022)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from psml_bench import Allowed, Defense, Requests, register_defense

ORDERS = np.concatenate([np.arange(2.0, 101.0), np.logspace(np.log10(110.0), 3.0, 30)])
"""The Renyi orders the privacy cost is accounted at (PATE's range, 2 to 1000)."""


def gnmax_log_q(votes: np.ndarray, sigma: float) -> np.ndarray:
    """Per row of vote counts ``(queries, classes)``: an upper bound on log Pr[GNMax answers other than the top class].

    The union bound of Papernot et al. (ICLR 2018, Proposition 7): the sum over the other classes
    of Pr[N(0, 2 sigma^2) > top votes - their votes], capped at ``1 - 1/classes`` (a uniform vote).
    """
    votes = np.asarray(votes, dtype=np.float64)
    top = votes.argmax(axis=1)
    gaps = votes[np.arange(len(votes)), top][:, None] - votes
    tails = norm.logsf(gaps, scale=np.sqrt(2.0) * sigma)
    tails[np.arange(len(votes)), top] = -np.inf  # the top class is the likely outcome, not a deviation from it
    return np.minimum(logsumexp(tails, axis=1), np.log1p(-1.0 / votes.shape[1]))


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (-inf at x = 0)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(x < -np.log(2.0), np.log1p(-np.exp(x)), np.log(-np.expm1(x)))


def gnmax_rdp(log_q: np.ndarray, sigma: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """The data-dependent Renyi-DP cost of answering each query with GNMax, ``(queries, orders)``.

    Theorem 6 of Papernot et al. (ICLR 2018) with its higher orders from Proposition 10
    (``mu2 = sigma sqrt(-log q)``, ``mu1 = mu2 + 1``), where it applies (orders below ``mu1``, a
    ``q`` small enough); elsewhere the data-independent bound ``order / sigma^2`` of GNMax.
    """
    log_q = np.minimum(np.asarray(log_q, dtype=np.float64), 0.0)[:, None]
    orders = np.asarray(orders, dtype=np.float64)[None, :]
    variance = sigma ** 2
    bound = np.broadcast_to(orders / variance, (log_q.shape[0], orders.shape[1])).copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mu2 = np.sqrt(variance * -log_q)
        mu1 = mu2 + 1.0
        rdp1, rdp2 = mu1 / variance, mu2 / variance
        valid = ((mu2 > 1.0) & (-log_q > rdp2)
                 & (log_q <= (mu2 - 1.0) * rdp2 - mu2 * (np.log1p(1.0 / (mu1 - 1.0)) + np.log1p(1.0 / (mu2 - 1.0)))))
        applies = valid & (orders < mu1)
        log_1mq = _log1mexp(log_q)
        log_a = (orders - 1.0) * (log_1mq - _log1mexp(np.minimum((log_q + rdp2) * (1.0 - 1.0 / mu2), 0.0)))
        log_b = (orders - 1.0) * (rdp1 - log_q / (mu1 - 1.0))
        dependent = np.logaddexp(log_1mq + log_a, log_q + log_b) / (orders - 1.0)
    bound[applies] = np.minimum(bound, dependent)[applies]
    bound[np.isneginf(log_q[:, 0])] = 0.0  # a certain outcome costs nothing
    return np.maximum(bound, 0.0)


def epsilon(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """The (epsilon, ``delta``)-DP epsilon of each row of accumulated Renyi-DP costs (the best order)."""
    return np.min(np.atleast_2d(rdp) + np.log(1.0 / delta) / (np.asarray(orders) - 1.0), axis=1)


@register_defense("proof-of-work")
class ProofOfWork(Defense):
    """Calibrated proof of work: a client reads each answer only after client-side compute priced by its leakage.

    Dziedzic et al. (ICLR 2022) price every query in proof-of-work puzzles whose difficulty follows
    the privacy cost the client's queries have spent, estimated with PATE's accounting: an
    ensemble of teachers votes on the query, and the data-dependent Renyi-DP cost of the GNMax
    answer (Papernot et al., ICLR 2018) adds up over the client's queries. Queries the model is
    sure of cost almost nothing; ambiguous ones (near a decision boundary, off the data) cost up to
    GNMax's data-independent ``order / sigma^2``; and the cost grows with the number of queries, so an
    extraction attack pays far more than a user.

    Here the served model's answer stands in for the teachers' votes (``teachers`` times its
    probabilities, as if the ensemble voted in those proportions): the defense sees no training
    data to split among teachers. Each answered query adds its GNMax cost (noise ``sigma``) to its
    client's account, and costs ``work_factor`` ms of client compute per unit of the client's
    epsilon at ``delta`` after that query (the strength): ``work_ms = work_factor * epsilon``. The
    service counts that work on the cell's clock (``Defense.client_work_ms``): in the client's
    end-to-end latency and in the attacker's wall time. Answers are left as they are.
    """

    strength = "work_factor"
    deterministic = True  # the answers are the served model's; only their price depends on the history
    defaults = {"work_factor": 1.0, "teachers": 250, "sigma": 40.0, "delta": 1e-5}
    allowed = {"work_factor": Allowed(minimum=0, exclusive_minimum=True),
               "teachers": Allowed(minimum=2, integer=True),
               "sigma": Allowed(minimum=0, exclusive_minimum=True),
               "delta": Allowed(minimum=0, maximum=0.1, exclusive_minimum=True)}

    def __init__(self, **params):
        super().__init__(**params)
        self._rdp: dict[int, np.ndarray] = {}  # client -> its accumulated Renyi-DP cost per order
        self.work_ms: dict[int, float] = {}  # client -> the compute its answers have cost it so far

    def epsilon(self, client: int) -> float:
        """The privacy cost ``client``'s answered queries have spent so far (0 before its first)."""
        return float(epsilon(self._rdp[client], float(self.params["delta"]))[0]) if client in self._rdp else 0.0

    def client_work_ms(self, requests: Requests, answers: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        sigma, delta = float(self.params["sigma"]), float(self.params["delta"])
        votes = int(self.params["teachers"]) * answers.double().nan_to_num(0.0).numpy()
        costs = gnmax_rdp(gnmax_log_q(votes, sigma), sigma)
        work = np.empty(len(requests))
        for client in np.unique(requests.clients).tolist():
            rows = np.flatnonzero(requests.clients == client)
            spent = self._rdp.get(client, np.zeros(len(ORDERS))) + np.cumsum(costs[rows], axis=0)
            self._rdp[client] = spent[-1]
            work[rows] = float(self.params["work_factor"]) * epsilon(spent, delta)
            self.work_ms[client] = self.work_ms.get(client, 0.0) + float(work[rows].sum())
        return work
