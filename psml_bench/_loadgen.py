"""`psml-bench load`: benign traffic against a live endpoint from MLPerf LoadGen's server scenario.

LoadGen (``mlcommons-loadgen``) schedules single-input queries as a Poisson process at the
target rate, enforces its minimum duration and query count, and judges the run against its
latency bound at the 99th percentile; its verdict (``VALID``/``INVALID``) is reported as it
gives it. Each query is one benign request: an input from the zoo's benign split and a spec
drawn like the cells' benign workload (:func:`psml_bench._scoring.benign_specs`), sent from a
pool of client threads. Goodput is the share of issued requests answered (not refused) by a
model meeting the request's accuracy floor (the operator key is told the serving model's
accuracy) within LoadGen's latency bound, measured end to end at the client. (Not within the
request's own latency bound: that comes from the routing profile, sub-millisecond for the tiny
zoo, below any HTTP round trip.)
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._errors import BudgetExhausted, ConfigError, InvalidQueryError, PsmlError
from ._http_target import HttpClient
from ._scoring import benign_specs
from ._serving import Spec, SpecRange
from ._zoo import Zoo

SAMPLES = 1024


@dataclass(frozen=True)
class LoadReport:
    """What one LoadGen run measured (``verdict`` and ``unmet``, the constraints it found unmet, are LoadGen's)."""

    target_qps: float
    duration_s: float
    latency_bound_ms: float
    issued: int
    answered: int
    goodput: float
    goodput_qps: float
    latency_p50_ms: float
    latency_p99_ms: float
    achieved_qps: float
    valid: bool
    verdict: str
    unmet: str
    loadgen_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Benign:
    """The benign requests: inputs and specs per LoadGen sample index, and one HTTP client per thread."""

    def __init__(self, url: str, key: str, zoo: Zoo, spec_range: SpecRange, seed: int):
        rng = np.random.default_rng([seed, 3])
        inputs = zoo.splits["benign_x"] if "benign_x" in zoo.splits else zoo.splits["attacker_x"]
        self.inputs = inputs[torch.from_numpy(rng.integers(len(inputs), size=SAMPLES))]
        self.specs: list[Spec] = benign_specs(np.array([e.accuracy for e in zoo.menu]),
                                              np.array([e.latency_ms for e in zoo.menu]), spec_range, SAMPLES, rng)
        self.url, self.key = url, key
        self._local = threading.local()
        self._clients: list[HttpClient] = []
        self._lock = threading.Lock()

    def client(self) -> HttpClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = HttpClient(self.url, self.key, timeout_s=30.0)
            with self._lock:
                self._clients.append(client)
        return client

    def send(self, index: int) -> tuple[bool, float, bool]:
        """Send sample ``index``; return (answered by a model meeting its accuracy floor, latency ms, answered)."""
        spec = self.specs[index]
        client = self.client()
        started = time.perf_counter()
        try:
            client.query(self.inputs[index:index + 1], spec, purpose="benign")
        except (BudgetExhausted, InvalidQueryError, PsmlError):
            return False, float("nan"), False
        latency = (time.perf_counter() - started) * 1000
        answered = not bool(client.last_refused[0])
        accuracy = client.last_served_accuracy
        meets_floor = answered and accuracy is not None and float(accuracy[0]) >= spec.min_accuracy
        return meets_floor, latency, answered

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _summary_value(text: str, label: str) -> str | None:
    match = re.search(rf"^{re.escape(label)}\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


def run_load(url: str, key: str, zoo: Zoo, *, qps: float, duration_s: float, latency_bound_ms: float | None = None,
             seed: int = 0, threads: int = 8, log_dir: Path | None = None) -> LoadReport:
    """Drive benign traffic at ``qps`` for ``duration_s`` with LoadGen's server scenario; report what happened.

    Args:
        url: the endpoint; ``key`` an operator key (else goodput cannot see the accuracy floor: 0).
        zoo: the zoo the endpoint serves (benign inputs and the benign spec mix).
        qps: LoadGen's target rate; ``duration_s`` its minimum duration.
        latency_bound_ms: LoadGen's latency bound at the 99th percentile (default: the advertised
            maximum latency).
        threads: client threads sending the requests.
        log_dir: where LoadGen writes its logs (default: a temporary directory).

    Raises:
        PsmlError: LoadGen is not installed, the endpoint is unreachable, or the arguments are out of range.
    """
    try:
        import mlperf_loadgen as lg
    except ImportError:
        raise PsmlError("MLPerf LoadGen is not installed: pip install 'psml-bench[serve]' "
                        "(package mlcommons-loadgen)") from None
    if not (qps > 0 and duration_s > 0):
        raise ConfigError(f"--qps and --duration must be > 0, got {qps} and {duration_s}")
    probe = HttpClient(url, key)
    try:
        info = probe.describe()
        operator = probe.budget().get("operator", False)
    finally:
        probe.close()
    if not operator:
        raise ConfigError("load needs an operator key (goodput needs the accuracy of the model that served each "
                          "request; see docs/serving.md, keys file)")
    if info.get("zoo") != zoo.name:
        raise ConfigError(f"the endpoint serves zoo '{info.get('zoo')}', not '{zoo.name}'")
    spec_range = SpecRange(tuple(info["spec_range"]["accuracy"]), tuple(info["spec_range"]["latency_ms"]))
    bound_ms = float(latency_bound_ms if latency_bound_ms is not None else spec_range.latency_ms[1])
    benign = _Benign(url, key, zoo, spec_range, seed)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="psml-load")
    results: list[tuple[bool, float, bool]] = []
    lock = threading.Lock()

    def one(sample_id: int, index: int) -> None:
        outcome = benign.send(index)
        with lock:
            results.append(outcome)
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

    def issue(samples) -> None:
        for sample in samples:
            pool.submit(one, sample.id, sample.index)

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = float(qps)
    settings.server_target_latency_ns = int(bound_ms * 1e6)
    settings.server_target_latency_percentile = 0.99
    settings.min_duration_ms = int(duration_s * 1000)
    settings.max_duration_ms = int(duration_s * 1000 * 2 + 10_000)
    settings.min_query_count = max(1, int(qps * duration_s * 0.5))
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(SAMPLES, SAMPLES, lambda _: None, lambda _: None)
    with tempfile.TemporaryDirectory(prefix="psml-loadgen-") as scratch:
        out = Path(log_dir) if log_dir is not None else Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        output = lg.LogOutputSettings()
        output.outdir = str(out)
        output.copy_summary_to_stdout = False
        log_settings = lg.LogSettings()
        log_settings.log_output = output
        log_settings.enable_trace = False
        started = time.perf_counter()
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        finally:
            pool.shutdown(wait=True)
            elapsed = time.perf_counter() - started
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
            benign.close()
        summary = (out / "mlperf_log_summary.txt").read_text()
    verdict = _summary_value(summary, "Result is") or "UNKNOWN"
    unmet = [m.group(1).strip() for m in re.finditer(r"^\s*(.+?)\s*satisfied\s*:\s*NO\s*$", summary,
                                                      flags=re.MULTILINE | re.IGNORECASE)]
    p99 = _summary_value(summary, "99.00 percentile latency (ns)")
    good = np.array([r[0] and r[1] <= bound_ms for r in results], dtype=bool)
    latency = np.array([r[1] for r in results if r[2]], dtype=float)
    return LoadReport(
        target_qps=float(qps), duration_s=float(duration_s), latency_bound_ms=bound_ms, issued=len(results),
        answered=int(sum(r[2] for r in results)),
        goodput=float(good.mean()) if len(good) else float("nan"),
        goodput_qps=float(good.sum() / elapsed) if elapsed > 0 else float("nan"),
        latency_p50_ms=float(np.percentile(latency, 50)) if len(latency) else float("nan"),
        latency_p99_ms=float(np.percentile(latency, 99)) if len(latency) else float("nan"),
        achieved_qps=len(results) / elapsed if elapsed > 0 else float("nan"),
        valid=verdict == "VALID", verdict=verdict, unmet=", ".join(unmet),
        loadgen_p99_ms=float(p99) / 1e6 if p99 and p99.replace(".", "").isdigit() else float("nan"))


def measure_capacity(url: str, key: str, zoo: Zoo, *, seconds: float = 5.0, clients: int = 16,
                     seed: int = 0) -> float:
    """Closed-loop capacity in queries per second: ``clients`` threads send benign single-input queries
    back to back for ``seconds`` (bounded in time; each thread stops at the deadline)."""
    info = HttpClient(url, key).describe()
    spec_range = SpecRange(tuple(info["spec_range"]["accuracy"]), tuple(info["spec_range"]["latency_ms"]))
    benign = _Benign(url, key, zoo, spec_range, seed)
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def loop(worker: int) -> None:
        index = worker
        while time.perf_counter() < deadline:
            benign.send(index % SAMPLES)
            counts[worker] += 1
            index += clients

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(loop, range(clients)))
    elapsed = time.perf_counter() - started
    benign.close()
    return sum(counts) / elapsed
