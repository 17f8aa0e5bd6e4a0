"""`psml-bench serve`: the live service as an HTTP API (FastAPI on uvicorn) with Prometheus metrics.

Routes (docs/serving.md): ``GET /v1/service`` (what a client may know), ``GET /v1/budget`` (the
key's budget), ``POST /v1/query`` (a batch of inputs, .npy or safetensors; answers as
safetensors), ``GET /metrics`` (Prometheus text), and FastAPI's ``/openapi.json`` and ``/docs``.
Every error is a 4xx (or 500) with a one-line JSON body ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..contract.errors import BudgetExhausted, InvalidQueryError, PsmlError, sanitise
from .http_wire import SAFETENSORS, EncodingError, decode_query, encode_answers
from .live import LiveService

log = logging.getLogger(__name__)

KEY_HEADER = "X-API-Key"
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("psml_requests", "HTTP queries by status code", ["code"], registry=self.registry)
        self.inputs = Counter("psml_inputs", "Inputs answered or refused by the defense", ["outcome"],
                              registry=self.registry)
        self.refusals = Counter("psml_refusals", "Inputs the defense refused", registry=self.registry)
        self.budget_rejections = Counter("psml_budget_rejections", "Queries rejected (429) for the key's budget",
                                         registry=self.registry)
        self.batches = Counter("psml_batches", "Forward batches per model", ["model"], registry=self.registry)
        self.batch_size = Histogram("psml_batch_size", "Inputs per forward batch", ["model"], buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.inference = Histogram("psml_inference_seconds", "Forward pass time per batch", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("psml_query_latency_seconds", "Query latency at the server, arrival to answer",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def batch(self, model_id: str, size: int, seconds: float) -> None:
        self.batches.labels(model_id).inc()
        self.batch_size.labels(model_id).observe(size)
        self.inference.labels(model_id).observe(seconds)

    def answered(self, refused: int, answered: int) -> None:
        self.inputs.labels("answered").inc(answered)
        self.inputs.labels("refused").inc(refused)
        self.refusals.inc(refused)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP query may carry."""

    max_body_bytes: int = 64 * 2**20


class _CountQueries:
    """Counts ``/v1/query`` answers by status code (plain ASGI: cheaper than an HTTP middleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/query":
            await self.app(scope, receive, send)
            return

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def create_app(service: LiveService, metrics: Metrics, limits: HttpLimits = HttpLimits()):
    """The FastAPI app serving ``service``."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="psml-bench live service", version="1",
                  description="A model zoo behind an INFaaS-style policy and a defense (docs/serving.md).",
                  lifespan=lifespan)
    _add_error_handlers(app)
    app.add_middleware(_CountQueries, metrics=metrics)
    _add_routes(app, service, metrics, limits)

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        log.exception("query failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    return app


def _error(status: int, message: str) -> JSONResponse:
    """Every error's body: one sanitised line, ``{"error": "..."}``."""
    return JSONResponse({"error": sanitise(message, 500)}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """HTTP errors and invalid query parameters as one-line JSON errors."""

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


def _client_key(service: LiveService, request: Request) -> str:
    """The request's API key; 401 without one, 403 for a key ``service`` does not know."""
    key = request.headers.get(KEY_HEADER)
    if not key:
        raise HTTPException(401, f"missing API key: send it in the {KEY_HEADER} header")
    if key not in service.keys:
        raise HTTPException(403, "unknown API key")
    return key


async def _read_body(request: Request, limits: HttpLimits) -> bytes:
    """The request's body; 413 as soon as it (or its declared length) is above ``limits.max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise HTTPException(413, f"payload of {declared} bytes is above the limit of {limits.max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise HTTPException(413, f"payload is above the limit of {limits.max_body_bytes} bytes")
    return bytes(body)


def _add_routes(app: FastAPI, service: LiveService, metrics: Metrics, limits: HttpLimits) -> None:
    """The service's routes: what a client may know, its budget, queries, and the metrics."""

    @app.get("/v1/service", summary="What a client may know: spec ranges, input shape, classes")
    async def describe() -> dict[str, Any]:
        return service.describe()

    @app.get("/v1/budget", summary="The key's budget, queries used and remaining (null: unlimited)")
    async def budget(request: Request) -> dict[str, Any]:
        return service.budget(_client_key(service, request))

    @app.post("/v1/query", summary="Answer a batch of inputs (one query per row)",
              response_class=Response,
              responses={200: {"content": {SAFETENSORS: {}},
                               "description": "safetensors: probabilities, refused, latency_ms"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  SAFETENSORS: {"schema": {"type": "string", "format": "binary"}},
                  "application/x-npy": {"schema": {"type": "string", "format": "binary"}}}}})
    async def query(request: Request, purpose: str = Query("extract", max_length=32),
                    min_accuracy: float | None = Query(None), max_latency_ms: float | None = Query(None)):
        key = _client_key(service, request)
        arrival = time.perf_counter()
        body = await _read_body(request, limits)
        try:
            inputs, spec = decode_query(body, request.headers.get("content-type", ""), min_accuracy, max_latency_ms)
            answer = await service.query(key, inputs, spec, purpose)
        except EncodingError as exc:
            return _error(400, str(exc))
        except InvalidQueryError as exc:
            return _error(422, str(exc))
        except BudgetExhausted as exc:
            metrics.budget_rejections.inc()
            return _error(429, str(exc))
        metrics.latency.observe(time.perf_counter() - arrival)
        served_accuracy = answer.served_accuracy if service.keys[key].operator else None
        remaining = service.frontends[key].remaining
        return Response(encode_answers(answer.probabilities, answer.refused, answer.latency_ms, served_accuracy),
                        media_type=SAFETENSORS,
                        headers={"X-Budget-Remaining": "unlimited" if remaining is None else str(remaining)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``.

    Raises:
        PsmlError: the port is busy or the address unusable (one sentence).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's head and body go out at once, not 40 ms apart
    # (Nagle's algorithm waiting on the client's delayed ACK)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "the port is busy" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
        raise PsmlError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve_forever(service: LiveService, sock: socket.socket, limits: HttpLimits = HttpLimits(),
                  access_log: bool = False) -> None:
    """Serve on ``sock`` until SIGINT or SIGTERM, then finish the requests in flight and return."""
    import uvicorn

    metrics = service.metrics if isinstance(service.metrics, Metrics) else Metrics()
    service.metrics = metrics
    app = create_app(service, metrics, limits)
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it is done; a no-op handler makes that a clean return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
