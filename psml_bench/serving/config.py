"""A cell's service parameters: load, clients, attacker pace, batching, replicas, admission (grid data)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

from ..contract.errors import ConfigError
from .simulator import BatchingConfig

MAX_LOAD = 2.0
"""The highest ``load``: twice the capacity at the SLO (overload, where serving curves end)."""

@dataclass(frozen=True)
class ServiceConfig:
    """The load and clients of a cell's service (grid parameters; all part of the cell key).

    Attributes:
        load: benign arrival rate as a fraction of the undefended service's capacity at the SLO, in (0, 2]
            (above 1 the service is overloaded: serving curves run there)
            (:mod:`psml_bench.serving.capacity`; the serving figure goes past 1 on the simulator alone).
        benign_clients: number of benign clients (at least 1).
        attacker_rate: the attacker's pace as a multiple of one benign client's mean rate (> 0).
        latency_visible: whether the attacker sees each answer's latency (a timing side channel).
        max_batch: the most requests a model's worker serves in one batch.
        max_wait_ms: how long a worker waits for a batch to fill (0: serve what is queued at once).
        timeout: a request still queued this many times the advertised maximum latency after it
            arrived is dropped (answered as refused): the overload protection of a real server.
        replicas: workers per model: one integer for every model, or a table ``{model id: workers}``
            (models it does not name have one).
        admission: what a queue-aware policy does with a request no model meeting its floor is predicted to serve
            within its bound: ``"fallback"`` (INFaaS's) or ``"reject"`` (Clockwork's: no service time, an SLO miss).
        slo_target: the SLO attainment the capacity is measured at, in (0, 1] (MLPerf's 0.99).
    """

    load: float = 0.5
    benign_clients: int = 8
    attacker_rate: float = 1.0
    latency_visible: bool = False
    max_batch: int = 8
    max_wait_ms: float = 0.0
    timeout: float = 10.0
    replicas: int | tuple[tuple[str, int], ...] = 1
    admission: str = "fallback"
    slo_target: float = 0.99

    def __post_init__(self) -> None:
        def number(value: object) -> bool:
            return isinstance(value, Real) and not isinstance(value, bool)

        if not (number(self.load) and 0 < self.load <= MAX_LOAD):
            raise ConfigError(f"service load must be a number in (0, {MAX_LOAD:g}] (a fraction of the service's "
                              f"capacity; above 1: overload), "
                              f"got {self.load!r}")
        if isinstance(self.benign_clients, bool) or not isinstance(self.benign_clients, int) or self.benign_clients < 1:
            raise ConfigError(f"benign_clients must be an integer >= 1 (goodput is measured on benign clients), "
                              f"got {self.benign_clients!r}")
        if not (number(self.attacker_rate) and math.isfinite(self.attacker_rate) and self.attacker_rate > 0):
            raise ConfigError(f"attacker_rate must be a finite number > 0 (a multiple of one benign client's rate), "
                              f"got {self.attacker_rate!r}")
        if not isinstance(self.latency_visible, bool):
            raise ConfigError(f"latency_visible must be true or false, got {self.latency_visible!r}")
        if not (number(self.timeout) and math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be a finite number > 0 (a multiple of the advertised maximum latency), "
                              f"got {self.timeout!r}")
        BatchingConfig(self.max_batch, self.max_wait_ms)
        if isinstance(self.replicas, dict):
            object.__setattr__(self, "replicas", tuple(sorted((str(k), v) for k, v in self.replicas.items())))
        counts = [v for _, v in self.replicas] if isinstance(self.replicas, tuple) else [self.replicas]
        if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ConfigError(f"replicas must be an integer >= 1 or a table of model id = integer >= 1 (workers per "
                              f"model), got {self.replicas!r}")
        if self.admission not in ("fallback", "reject"):
            raise ConfigError(f"admission must be 'fallback' or 'reject', got {self.admission!r}")
        if not (number(self.slo_target) and 0 < self.slo_target <= 1):
            raise ConfigError(f"slo_target must be a number in (0, 1] (the SLO attainment capacity is measured at), "
                              f"got {self.slo_target!r}")

    def replica_counts(self, model_ids: Sequence[str]) -> list[int]:
        """Workers per model of a menu, in its order (a ConfigError if the table names a model it lacks)."""
        if isinstance(self.replicas, int):
            return [self.replicas] * len(model_ids)
        table = dict(self.replicas)
        unknown = sorted(set(table) - set(model_ids))
        if unknown:
            raise ConfigError(f"replicas names model(s) {', '.join(unknown)} that the zoo does not serve; "
                              f"its models: {', '.join(model_ids)}")
        return [table.get(model_id, 1) for model_id in model_ids]

    def batching(self, max_latency_ms: float) -> BatchingConfig:
        """The workers' batching, for a service whose advertised maximum latency is ``max_latency_ms``."""
        return BatchingConfig(self.max_batch, self.max_wait_ms, self.timeout * max_latency_ms)

    def benign_requests_per_client(self, budget: int, benign_queries: int) -> float:
        """About the fewest requests each benign client sends in a cell of ``budget`` queries: the stream runs
        until the attacker, at ``attacker_rate`` times one client's rate, has sent its budget (longer when its
        answers come back late), and for ``benign_queries`` requests in all at least."""
        return max(budget / self.attacker_rate, benign_queries / self.benign_clients)

    def as_dict(self) -> dict[str, object]:
        return {"load": self.load, "benign_clients": self.benign_clients, "attacker_rate": self.attacker_rate,
                "latency_visible": self.latency_visible, "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms,
                "timeout": self.timeout,
                "replicas": self.replicas if isinstance(self.replicas, int) else dict(self.replicas),
                "admission": self.admission, "slo_target": self.slo_target}
