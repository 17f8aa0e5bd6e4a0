"""`psml-bench load`: benign traffic against a live endpoint from MLPerf LoadGen's server scenario.

LoadGen (``mlcommons-loadgen``) schedules single-input queries as a Poisson process at the
target rate, enforces its minimum duration and query count, and judges the run against its
latency bound at the 99th percentile (with its early-stopping rule); its verdict
(``VALID``/``INVALID``) is reported as it gives it. Each query is one benign request: an input
from the zoo's benign split and a spec drawn like the cells' benign workload
(:func:`psml_bench.common.metrics.benign_specs`). LoadGen's issue callback only hands each sample to
one asyncio event loop in a thread of its own, which sends it with one ``httpx.AsyncClient`` and
completes it from the loop when the answer is in: the issue thread never waits on the network,
and no pool of client threads competes for the interpreter lock, so LoadGen's latencies measure
the server, not the load generator. Goodput is the share of issued requests answered (not
refused) by a model meeting the request's accuracy floor (the operator key is told the serving
model's accuracy) within LoadGen's latency bound, measured at the client from the moment LoadGen
issued the request. (Not within the request's own latency bound: that comes from the routing
profile, sub-millisecond for the tiny zoo, below any HTTP round trip.)
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..contract.errors import ConfigError, PsmlError
from .http_client import KEY_HEADER, NO_DELAY, HttpClient
from .http_wire import SAFETENSORS, decode_answers, encode_query
from ..common.metrics import benign_specs
from ..contract.spec import SpecRange
from ..zoo.model_zoo import Zoo

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


@dataclass(frozen=True)
class Outcome:
    """One benign request: answered (not refused, status 200), by a model meeting its accuracy floor, latency."""

    answered: bool
    meets_floor: bool
    latency_ms: float


class _Sender:
    """Benign requests sent from one asyncio loop in a thread of its own, through one ``httpx.AsyncClient``.

    ``submit`` may be called from any thread and returns at once; the request bodies (one
    input and its spec per sample index) are encoded up front.
    """

    def __init__(self, url: str, key: str, zoo: Zoo, spec_range: SpecRange, seed: int, timeout_s: float = 30.0):
        rng = np.random.default_rng([seed, 3])
        inputs = zoo.splits["benign_x"] if "benign_x" in zoo.splits else zoo.splits["attacker_x"]
        inputs = inputs[torch.from_numpy(rng.integers(len(inputs), size=SAMPLES))]
        self.specs = benign_specs(np.array([e.accuracy for e in zoo.menu]), np.array([e.latency_ms for e in zoo.menu]),
                                  spec_range, SAMPLES, rng)
        self.bodies = [encode_query(inputs[i:i + 1], spec) for i, spec in enumerate(self.specs)]
        self.outcomes: list[Outcome] = []
        self._url, self._key, self._timeout_s = url, key, timeout_s
        self._tasks: set[asyncio.Task] = set()
        try:
            import uvloop  # the server's loop too; optional (not on Windows)

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="psml-load", daemon=True)
        self._thread.start()
        self._client = self._run(self._open())

    def _run(self, coroutine, timeout_s: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    async def _open(self):
        import httpx

        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        return httpx.AsyncClient(base_url=self._url.rstrip("/"), timeout=self._timeout_s, limits=limits,
                                 headers={KEY_HEADER: self._key, "content-type": SAFETENSORS},
                                 transport=httpx.AsyncHTTPTransport(socket_options=NO_DELAY, limits=limits))

    async def send(self, index: int, issued: float) -> Outcome:
        """Send sample ``index`` (issued at ``issued``, ``time.perf_counter``); record and return its outcome."""
        import httpx

        try:
            response = await self._client.post("/v1/query", params={"purpose": "benign"}, content=self.bodies[index])
        except httpx.HTTPError:
            response = None
        latency = (time.perf_counter() - issued) * 1000
        if response is None or response.status_code != 200:
            outcome = Outcome(False, False, float("nan"))
        else:
            answers = decode_answers(response.content)
            answered = not bool(answers["refused"][0])
            accuracy = answers.get("served_accuracy")
            outcome = Outcome(answered, answered and accuracy is not None and
                              float(accuracy[0]) >= self.specs[index].min_accuracy, latency)
        self.outcomes.append(outcome)
        return outcome

    def submit(self, index: int, done: Callable[[], None]) -> None:
        """Send sample ``index`` without waiting; ``done()`` runs on the loop when its answer is in (or it failed)."""
        self.loop.call_soon_threadsafe(self._spawn, index, time.perf_counter(), done)

    def _spawn(self, index: int, issued: float, done: Callable[[], None]) -> None:
        task = self.loop.create_task(self.send(index, issued))
        self._tasks.add(task)
        task.add_done_callback(lambda finished: (self._tasks.discard(finished), done()))

    def closed_loop(self, clients: int, seconds: float) -> float:
        """Queries per second with ``clients`` requests always in flight, for ``seconds`` (each stops at the
        deadline)."""

        async def client(first: int, deadline: float) -> int:
            count, index = 0, first
            while time.perf_counter() < deadline:
                await self.send(index % SAMPLES, time.perf_counter())
                count, index = count + 1, index + clients
            return count

        async def run() -> tuple[int, float]:
            started = time.perf_counter()
            counts = await asyncio.gather(*(client(i, started + seconds) for i in range(clients)))
            return sum(counts), time.perf_counter() - started

        done, elapsed = self._run(run(), seconds + self._timeout_s + 10)
        return done / elapsed

    def close(self) -> None:
        async def shut() -> None:
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=self._timeout_s)
            await self._client.aclose()

        try:
            self._run(shut(), self._timeout_s + 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


def _endpoint(url: str, key: str, zoo: Zoo) -> tuple[dict[str, Any], SpecRange]:
    """The endpoint's ``/v1/service`` and spec range, checked: an operator key, serving ``zoo``."""
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
    return info, SpecRange(tuple(info["spec_range"]["accuracy"]), tuple(info["spec_range"]["latency_ms"]))


def _summary_value(text: str, label: str) -> str | None:
    match = re.search(rf"^{re.escape(label)}\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


def run_load(url: str, key: str, zoo: Zoo, *, qps: float, duration_s: float, latency_bound_ms: float | None = None,
             seed: int = 0, log_dir: Path | None = None) -> LoadReport:
    """Drive benign traffic at ``qps`` for ``duration_s`` with LoadGen's server scenario; report what happened.

    Args:
        url: the endpoint; ``key`` an operator key (else goodput cannot see the accuracy floor: 0).
        zoo: the zoo the endpoint serves (benign inputs and the benign spec mix).
        qps: LoadGen's target rate; ``duration_s`` its minimum duration.
        latency_bound_ms: LoadGen's latency bound at the 99th percentile (default: the advertised
            maximum latency).
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
    _, spec_range = _endpoint(url, key, zoo)
    bound_ms = float(latency_bound_ms if latency_bound_ms is not None else spec_range.latency_ms[1])
    sender = _Sender(url, key, zoo, spec_range, seed)
    summary, elapsed = _run_loadgen(lg, sender, _server_settings(lg, qps, duration_s, bound_ms), log_dir)
    return _report(summary, sender.outcomes, qps, duration_s, bound_ms, elapsed)


def _server_settings(lg: Any, qps: float, duration_s: float, bound_ms: float) -> Any:
    """LoadGen's server scenario, performance only: ``qps`` Poisson arrivals for at least ``duration_s``, judged at
    the 99th percentile against ``bound_ms``."""
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = float(qps)
    settings.server_target_latency_ns = int(bound_ms * 1e6)
    settings.server_target_latency_percentile = 0.99
    settings.min_duration_ms = int(duration_s * 1000)
    settings.max_duration_ms = int(duration_s * 1000 * 2 + 10_000)
    settings.min_query_count = max(1, int(qps * duration_s * 0.5))
    return settings


def _run_loadgen(lg: Any, sender: _Sender, settings: Any, log_dir: Path | None) -> tuple[str, float]:
    """Run LoadGen with ``settings``, each sample sent by ``sender`` (closed at the end); return LoadGen's summary
    text and the run's seconds. Its logs go to ``log_dir`` (default: a temporary directory)."""

    def issue(samples) -> None:  # on LoadGen's issue thread: hand over, never wait
        for sample in samples:
            sender.submit(sample.index,
                          lambda sample_id=sample.id: lg.QuerySamplesComplete(
                              [lg.QuerySampleResponse(sample_id, 0, 0)]))

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
            elapsed = time.perf_counter() - started
            sender.close()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        return (out / "mlperf_log_summary.txt").read_text(), elapsed


def _report(summary: str, outcomes: list[Outcome], qps: float, duration_s: float, bound_ms: float,
            elapsed: float) -> LoadReport:
    """The report of a run: LoadGen's verdict, unmet constraints and p99 from its ``summary``, goodput and latency
    from the requests' ``outcomes`` over ``elapsed`` seconds."""
    verdict = _summary_value(summary, "Result is") or "UNKNOWN"
    unmet = [m.group(1).strip() for m in re.finditer(r"^\s*(.+?)\s*satisfied\s*:\s*NO\s*$", summary,
                                                      flags=re.MULTILINE | re.IGNORECASE)]
    p99 = _summary_value(summary, "99.00 percentile latency (ns)")
    good = np.array([o.meets_floor and o.latency_ms <= bound_ms for o in outcomes], dtype=bool)
    latency = np.array([o.latency_ms for o in outcomes if o.answered], dtype=float)
    return LoadReport(
        target_qps=float(qps), duration_s=float(duration_s), latency_bound_ms=bound_ms, issued=len(outcomes),
        answered=int(sum(o.answered for o in outcomes)),
        goodput=float(good.mean()) if len(good) else float("nan"),
        goodput_qps=float(good.sum() / elapsed) if elapsed > 0 else float("nan"),
        latency_p50_ms=float(np.percentile(latency, 50)) if len(latency) else float("nan"),
        latency_p99_ms=float(np.percentile(latency, 99)) if len(latency) else float("nan"),
        achieved_qps=len(outcomes) / elapsed if elapsed > 0 else float("nan"),
        valid=verdict == "VALID", verdict=verdict, unmet=", ".join(unmet),
        loadgen_p99_ms=float(p99) / 1e6 if p99 and p99.replace(".", "").isdigit() else float("nan"))


def measure_capacity(url: str, key: str, zoo: Zoo, *, seconds: float = 5.0, clients: int = 16,
                     seed: int = 0) -> float:
    """Closed-loop capacity in queries per second: ``clients`` benign single-input queries always in flight
    for ``seconds`` (bounded in time: each client stops at the deadline), from the same sender as :func:`run_load`."""
    _, spec_range = _endpoint(url, key, zoo)
    sender = _Sender(url, key, zoo, spec_range, seed)
    try:
        return sender.closed_loop(clients, seconds)
    finally:
        sender.close()
