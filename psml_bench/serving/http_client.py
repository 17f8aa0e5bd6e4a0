"""A live endpoint as a client sees it: :class:`HttpClient` (the harness's handle) and :class:`HttpTarget`.

Both speak the API of ``psml-bench serve`` (docs/serving.md): the server counts and enforces the
key's budget (a ``429`` is :class:`BudgetExhausted`, nothing served), a ``4xx`` about the query is
:class:`InvalidQueryError`, and each answer comes with the rows the service refused and the
latency each row took.
"""

from __future__ import annotations

import socket
from typing import Any, Sequence

import torch

from ..contract.checks import endpoint, finite
from ..contract.errors import BudgetExhausted, ConfigError, InvalidQueryError, PsmlError
from .http_wire import SAFETENSORS, decode_answers, encode_query
from ..contract.target import Knowledge, Target
from ..contract.spec import Spec, SpecRange

KEY_HEADER = "X-API-Key"
# no Nagle: a query's head and body go out at once, not 40 ms apart (the server's delayed ACK)
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class HttpClient:
    """Queries a live endpoint with one API key; mirrors :class:`~psml_bench.serving.frontend.Frontend`'s client face.

    Args:
        url: the service's base URL (``http://host:port``).
        api_key: the client's key.
        limit: the most queries this client will send (``None``: only the server's budget counts).
        timeout_s: per HTTP call.
    """

    def __init__(self, url: str, api_key: str, *, limit: int | None = None, timeout_s: float = 120.0):
        import httpx

        endpoint(url)
        finite("timeout_s", timeout_s, 0.0, exclusive=True)
        if not isinstance(api_key, str):
            raise ConfigError(f"api_key must be a string, got {type(api_key).__name__}")
        self.url = url.rstrip("/")
        self.limit = limit
        self.sent = 0
        transport = httpx.HTTPTransport(socket_options=NO_DELAY)
        self._http = httpx.Client(base_url=self.url, headers={KEY_HEADER: api_key}, timeout=timeout_s,
                                  transport=transport)
        self.last_refused = torch.zeros(0, dtype=torch.bool)
        self.last_latency_ms: torch.Tensor | None = None
        self.last_served_accuracy: torch.Tensor | None = None

    def _call(self, method: str, path: str, **kwargs: Any):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise PsmlError(f"cannot reach the service at {self.url}: {exc}") from None
        if response.status_code == 200:
            return response
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        message = f"{message} (HTTP {response.status_code})"
        if response.status_code == 429:
            raise BudgetExhausted(message)
        if response.status_code in (400, 413, 422):
            raise InvalidQueryError(message)
        raise PsmlError(f"the service at {self.url} answered: {message}")

    def describe(self) -> dict[str, Any]:
        """The service's ``GET /v1/service``."""
        return self._call("GET", "/v1/service").json()

    def knowledge(self, pool: torch.Tensor, role: str) -> Knowledge:
        """The attacker's :class:`Knowledge` of this service, with its own ``pool`` and target ``role``."""
        info = self.describe()
        spec_range = SpecRange(tuple(info["spec_range"]["accuracy"]), tuple(info["spec_range"]["latency_ms"]))
        shape = tuple(int(d) for d in info["input_shape"])
        if tuple(pool.shape[1:]) != shape:
            raise PsmlError(f"the pool's inputs have shape {tuple(pool.shape[1:])}, the service takes {shape}")
        return Knowledge(input_shape=shape, num_classes=int(info["num_classes"]), spec_range=spec_range,
                         pool=pool, role=role, latency_visible=bool(info.get("latency_visible", False)))

    def budget(self) -> dict[str, Any]:
        """The service's ``GET /v1/budget`` for this key."""
        return self._call("GET", "/v1/budget").json()

    @property
    def remaining(self) -> int | None:
        """The key's remaining budget at the server, capped by this client's own ``limit``."""
        server = self.budget()["remaining"]
        own = None if self.limit is None else self.limit - self.sent
        return own if server is None else server if own is None else min(server, own)

    def query(self, inputs: Any, spec: Spec | Sequence[Spec], purpose: str = "extract") -> torch.Tensor:
        """Class probabilities per input row (NaN where refused); see :attr:`last_refused`, :attr:`last_latency_ms`.

        Raises:
            BudgetExhausted: past the server's budget for the key, or this client's ``limit``.
            InvalidQueryError: the service rejected the query as malformed.
        """
        if not isinstance(inputs, torch.Tensor):
            try:
                inputs = torch.as_tensor(inputs)
            except (TypeError, ValueError, RuntimeError):
                raise InvalidQueryError(f"inputs must be a torch.Tensor or numpy array, "
                                        f"got {type(inputs).__name__}") from None
        if not isinstance(spec, Spec):
            spec = list(spec)
            if len(spec) != len(inputs) or not all(isinstance(s, Spec) for s in spec):
                raise InvalidQueryError(f"spec must be one Spec or a sequence of {len(inputs)} Specs (one per input)")
        if self.limit is not None and self.sent + len(inputs) > self.limit:
            raise BudgetExhausted(f"query of {len(inputs)} inputs exceeds the remaining budget of "
                                  f"{self.limit - self.sent} (budget {self.limit}); nothing was served")
        response = self._call("POST", "/v1/query", params={"purpose": purpose}, content=encode_query(inputs, spec),
                              headers={"content-type": SAFETENSORS})
        self.sent += len(inputs)
        answers = decode_answers(response.content)
        self.last_refused = answers["refused"]
        self.last_latency_ms = answers["latency_ms"]
        self.last_served_accuracy = answers.get("served_accuracy")
        return answers["probabilities"]

    def close(self) -> None:
        self._http.close()


class HttpTarget(Target):
    """A :class:`~psml_bench.Target` over a live endpoint: ``HttpTarget("http://127.0.0.1:8000", key)``.

    What an attack sees is the same as in a cell: answers, refusals, observed latencies and the
    remaining budget as the server counts it.
    """

    __slots__ = ("client",)

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 120.0):
        self.client = HttpClient(url, api_key, timeout_s=timeout_s)

        def query(inputs, spec, purpose):
            answers = self.client.query(inputs, spec, purpose)
            return answers, self.client.last_refused, self.client.last_latency_ms

        super().__init__(query, lambda: self.client.remaining)
