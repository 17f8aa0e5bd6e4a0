"""Capacity at the SLO: the highest Poisson rate of the benign spec mix that the undefended service serves
with SLO attainment at or above a target (0.99 by default), found by a fixed-seed search on the simulator.

This is MLPerf Inference's server scenario: queries arrive as a Poisson process and a system's result
is the highest arrival rate at which the 99th percentile of latency stays within the bound (here each
request has its own bound, so: at which at least 99% of requests are answered within their bound, by a
model meeting their accuracy floor). A request rejected at admission or dropped from an overloaded queue
is a miss. ``saturation_capacity`` (:func:`psml_bench.serving.simulator.saturation_capacity`: the rate at which the
busiest model's workers run full batches back to back under the queue-blind routing of the mix) is an
upper reference, not a rate any request's bound survives.

The search, for one :class:`CapacityProblem` (menu, batch service times, workers, batching, policy,
admission, target), all of it fixed-seed:

- the workload: ``CAPACITY_REQUESTS`` benign specs drawn as the cells' benign clients draw theirs
  (uniform over the advertised ranges, kept if some model meets them), from ``default_rng(0)``, and
  ``CAPACITY_REQUESTS`` unit-mean exponential gaps from ``default_rng(1)``; at rate ``r`` request ``i``
  arrives at (sum of its gaps) / ``r``. The same requests at every rate (common random numbers), so
  attainment moves with the rate alone;
- a tiny rate first, one request per ``1000`` times the longest routing latency (so that hardly any
  request finds a worker busy): a service that misses the target even there cannot meet it at any
  load, which is a configuration error naming the model that misses most;
- then a bracket: ``hi`` starts at the saturation capacity and doubles (at most ``MAX_DOUBLINGS``
  times) while attainment there still meets the target; ``lo`` is the last rate that met it;
- then ``SEARCH_STEPS`` geometric bisections of ``[lo, hi]``; the capacity is the final ``lo``, the
  highest rate measured to meet the target (relative resolution ``(hi / lo) ** (1 / 2**SEARCH_STEPS)``:
  under 0.5% for a bracket up to 10^8 wide).

Results are kept in a :class:`CapacityCache` passed in by the caller, by a content hash of the problem. A
problem's batch service times come from latency profiles (:func:`batch_service_times`);
:func:`committed_capacity_problem` builds a zoo's problem from its committed profiles alone, without the zoo.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..common.files import content_hash
from ..contract.errors import ConfigError
from ..contract.registries import POLICIES
from ..common.metrics import benign_specs
from ..contract.spec import SpecRange
from ..zoo.config import load_zoo_config
from ..zoo.model_zoo import MenuEntry, service_ranges
from ..zoo.profiling import load_profile, reference_profile_path
from .config import ServiceConfig
from .simulator import BatchingConfig, BatchingSimulator, saturation_capacity
from .slo_routing import simulate_routing

CAPACITY_REQUESTS = 20000
SEARCH_STEPS = 12
MAX_DOUBLINGS = 4
TINY_LOAD = 1e-3
"""The feasibility check's rate: this many requests per longest routing latency."""


@dataclass(frozen=True)
class CapacityProblem:
    """Everything the capacity at the SLO depends on (and nothing else: it is the cache key)."""

    model_ids: tuple[str, ...]
    accuracy: tuple[float, ...]
    latency_ms: tuple[float, ...]
    intercept_ms: tuple[float, ...]
    slope_ms: tuple[float, ...]
    replicas: tuple[int, ...]
    spec_range: SpecRange
    policy: str
    batching: BatchingConfig
    reject: bool = False
    slo_target: float = 0.99

    def key(self) -> str:
        return content_hash({"capacity_requests": CAPACITY_REQUESTS, "steps": SEARCH_STEPS, **asdict(self)})

    def saturation(self) -> float:
        """Requests per ms at which the busiest model saturates under the queue-blind routing of the benign mix."""
        specs = self.workload(CAPACITY_REQUESTS)[0]
        policy = POLICIES.get("infaas")()
        requested = policy.select(np.array(self.accuracy), np.array(self.latency_ms), specs[:, 0], specs[:, 1])[0]
        shares = np.bincount(requested, minlength=len(self.accuracy)).astype(float)
        return saturation_capacity(np.array(self.intercept_ms), np.array(self.slope_ms), shares,
                                   self.batching.max_batch, self.replicas)

    def workload(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The search's ``n`` benign requests: (specs as (min accuracy, max latency) rows, unit-rate arrival times)."""
        specs = benign_specs(np.array(self.accuracy), np.array(self.latency_ms), self.spec_range, n,
                             np.random.default_rng(0))
        arrivals = np.cumsum(np.random.default_rng(1).exponential(1.0, n))
        return np.array([[s.min_accuracy, s.max_latency_ms] for s in specs]), arrivals


@dataclass(frozen=True)
class Attainment:
    """What the undefended service did with the benign requests at one rate."""

    rate_per_ms: float
    served: np.ndarray
    latency_ms: np.ndarray
    ok: np.ndarray

    @property
    def attainment(self) -> float:
        """Share of requests answered by a model meeting their floor within their bound (SLO attainment)."""
        return float(np.mean(self.ok))

    def p99_ms(self) -> float:
        """99th percentile of the answered requests' latency."""
        finite = self.latency_ms[np.isfinite(self.latency_ms)]
        return float(np.percentile(finite, 99)) if len(finite) else math.inf


def capacity_problem(frontend, intercept_ms: Sequence[float], slope_ms: Sequence[float], replicas: Sequence[int],
                     batching: BatchingConfig, reject: bool, slo_target: float) -> CapacityProblem:
    """The capacity problem of a :class:`~psml_bench.serving.frontend.Frontend`'s whole menu (undefended, its
    policy)."""
    return CapacityProblem(tuple(e.id for e in frontend.menu), tuple(float(e.accuracy) for e in frontend.menu),
                           tuple(float(e.latency_ms) for e in frontend.menu), tuple(float(a) for a in intercept_ms),
                           tuple(float(b) for b in slope_ms), tuple(int(r) for r in replicas), frontend.spec_range,
                           frontend.policy.name, batching, bool(reject), float(slo_target))


def batch_service_times(menu: Sequence[MenuEntry], profiles: Sequence[Path | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per menu model, the (intercept, slope) in ms of its batch service time (as
    :func:`~psml_bench.serving.service.service_times` says) from the first of ``profiles`` with a batch fit for it."""
    fits: dict[str, dict] = {}
    for path in profiles:
        if path is not None and Path(path).is_file():
            stat = Path(path).stat()
            for model_id, fit in _profile_fits(str(path), stat.st_mtime_ns, stat.st_size).items():
                fits.setdefault(model_id, fit)
    intercept, slope = [], []
    for entry in menu:
        fit = fits.get(entry.id)
        a, s = (max(float(fit["intercept_ms"]), 0.0), max(float(fit["slope_ms"]), 0.0)) if fit else (0.0, 0.0)
        if a + s > 0:
            intercept.append(a * entry.latency_ms / (a + s))
            slope.append(s * entry.latency_ms / (a + s))
        else:
            intercept.append(0.0)
            slope.append(entry.latency_ms)
    return np.array(intercept), np.array(slope)


@functools.lru_cache(maxsize=32)
def _profile_fits(path: str, mtime_ns: int, size: int) -> dict[str, dict]:
    """Each model's batch fit in a profile file (read once per version of the file: every cell key asks)."""
    return {model_id: entry["fit"] for model_id, entry in load_profile(Path(path))["models"].items() if "fit" in entry}


def committed_capacity_problem(zoo: str, accuracy: Mapping[str, float], policy: str,
                               reject: bool = False) -> CapacityProblem:
    """The capacity problem of zoo ``zoo`` from its committed profiles alone, without building it.

    The menu is ``accuracy`` (model id: test accuracy, as a leaderboard's lock records it) at each model's batch-1
    p50 in the zoo's committed reference profile; the batch service times are that profile's fits (else its
    committed CPU profile's); the advertised ranges come from the zoo config's margins; one worker per model and
    the default service (:class:`~psml_bench.serving.config.ServiceConfig`), ``policy`` and ``reject`` admission.
    """
    config = load_zoo_config(zoo)
    reference = reference_profile_path(config.reference_profile)
    profile = load_profile(reference)
    menu = [MenuEntry(m, a, profile["models"][m]["p50_ms"]) for m, a in accuracy.items()]
    intercept, slope = batch_service_times(menu, [reference, reference_profile_path(f"{config.name}-cpu.json")])
    accuracy_range, latency_range = service_ranges([e.accuracy for e in menu], [e.latency_ms for e in menu],
                                                   config.accuracy_margin, config.latency_margin)
    return CapacityProblem(tuple(accuracy), tuple(e.accuracy for e in menu), tuple(e.latency_ms for e in menu),
                           tuple(intercept), tuple(slope), (1,) * len(menu), SpecRange(accuracy_range, latency_range),
                           policy, ServiceConfig().batching(latency_range[1]), reject)


def attainment(problem: CapacityProblem, rate_per_ms: float, requests: int | None = None) -> Attainment:
    """The undefended service's SLO attainment on the search's first ``requests`` (default ``CAPACITY_REQUESTS``)
    benign requests at ``rate_per_ms``."""
    specs, unit_arrivals = problem.workload(requests or CAPACITY_REQUESTS)
    accuracy, latency = np.array(problem.accuracy), np.array(problem.latency_ms)
    simulator = BatchingSimulator(np.array(problem.intercept_ms), np.array(problem.slope_ms), problem.batching,
                                  problem.replicas)
    served, latency_ms = simulate_routing(POLICIES.get(problem.policy)(), accuracy, latency, specs[:, 0], specs[:, 1],
                                          unit_arrivals / rate_per_ms, simulator, problem.reject)
    ok = (served >= 0) & (accuracy[np.maximum(served, 0)] >= specs[:, 0]) & (latency_ms <= specs[:, 1])
    return Attainment(rate_per_ms, served, latency_ms, ok)


def search_capacity(problem: CapacityProblem) -> float:
    """Requests per ms: the highest rate measured to keep SLO attainment >= the target (see the module docstring).

    Raises:
        ConfigError: even at a tiny rate the service misses the target (the message names the model that misses most).
    """
    saturation = problem.saturation()
    target = problem.slo_target
    tiny = attainment(problem, min(TINY_LOAD / max(problem.latency_ms), saturation / 2))
    if tiny.attainment < target:
        worst, share = _worst_model(problem, tiny)
        raise ConfigError(f"no load meets SLO attainment {target}: even at a tiny rate only {tiny.attainment:.4f} of "
                          f"benign requests meet their spec; {share:.1%} of those whose spec model '{worst}' meets by "
                          f"the profile miss (its service time exceeds the latency bounds it is routed for)")
    lo, hi = tiny.rate_per_ms, saturation
    for _ in range(MAX_DOUBLINGS + 1):
        if attainment(problem, hi).attainment < target:
            break
        lo, hi = hi, 2 * hi
    else:
        return lo
    for _ in range(SEARCH_STEPS):
        middle = math.sqrt(lo * hi)
        if attainment(problem, middle).attainment >= target:
            lo = middle
        else:
            hi = middle
    return lo


def _worst_model(problem: CapacityProblem, result: Attainment) -> tuple[str, float]:
    """The model whose requests miss most, grouping requests by the model their spec selects by the profile alone."""
    specs = problem.workload(len(result.ok))[0]
    requested = POLICIES.get("infaas")().select(np.array(problem.accuracy), np.array(problem.latency_ms), specs[:, 0],
                                                specs[:, 1])[0]
    share, worst = max((float(np.mean(~result.ok[requested == m])), m) for m in np.unique(requested))
    return problem.model_ids[worst], share


class CapacityCache:
    """Capacities at the SLO already searched, by :meth:`CapacityProblem.key`; kept in a JSON file when given a path.

    One object per run context (the runner's, a benchmark's); the file lets the worker processes of a run, and
    later runs, reuse what the driver searched. A failed search is not kept.
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else None
        self._values: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        try:
            stored = json.loads(self.path.read_text()) if self.path is not None and self.path.is_file() else {}
        except (OSError, ValueError):
            stored = {}
        if not isinstance(stored, dict):
            return {}
        return {k: float(v) for k, v in stored.items() if isinstance(v, (int, float))}

    def get(self, problem: CapacityProblem, search: Callable[[CapacityProblem], float] = search_capacity) -> float:
        """The problem's capacity (requests per ms): remembered, read from the file, or searched now and kept."""
        key = problem.key()
        if key not in self._values:
            self._values.update(self._read())
        if key not in self._values:
            self._values[key] = search(problem)
            self._write()
        return self._values[key]

    def _write(self) -> None:
        if self.path is None:
            return
        try:  # through a rename: two workers may write at once; a read-only cache keeps values in memory
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read(), **self._values}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass
