"""The sandbox channel: its wire form (parsed without pickle) and the attack process's end of a query's round trip.

A message is an 8-byte little-endian header length, a JSON header, then a safetensors blob (empty
when the message carries no tensors). Unpickling bytes from a sandboxed process would let it run
code in the worker, so this direction is parsed as data only; the worker's replies, which the
sandboxed process may trust, are pickled. A query's spec travels in the header as ``[accuracy,
latency_ms]`` (one :class:`Spec`) or a list of such pairs (one per input). In the attack process,
:func:`remote_target` is the attack's :class:`Target`: each query one round trip, the server's errors
raised again with their class and message.
"""

from __future__ import annotations

import json
import pickle
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np
import safetensors.torch
import torch

from ..contract.errors import BudgetExhausted, InvalidQueryError, ProtocolError, PsmlError
from ..contract.spec import Spec
from ..contract.target import Target

FORWARDED_ERRORS: dict[str, type[PsmlError]] = {"BudgetExhausted": BudgetExhausted,
                                                "InvalidQueryError": InvalidQueryError}
"""The front end's errors re-raised in the attack process with the same class and message."""


def pack(header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    """One message of the attack -> worker direction: JSON header plus safetensors blob."""
    head = json.dumps(header).encode()
    body = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}) if tensors else b""
    return len(head).to_bytes(8, "little") + head + body


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse a message from the attack process without pickle; raise :class:`ProtocolError`."""
    try:
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError("header longer than the message")
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        body = data[8 + size:]
        tensors = safetensors.torch.load(body) if body else {}
    except Exception as exc:  # noqa: BLE001 - anything malformed is the attack's fault
        raise ProtocolError(f"ProtocolError: the attack process sent a malformed message ({exc})") from None
    return header, tensors


def spec_header(spec: Any) -> Any:
    """A query's ``spec`` (one :class:`Spec` or a sequence of them) in the header's form; None for anything else
    (the server then answers that the spec is malformed)."""
    if isinstance(spec, Spec):
        return [float(spec.min_accuracy), float(spec.max_latency_ms)]
    try:
        items = list(spec)
    except TypeError:
        items = [None]
    return ([[float(s.min_accuracy), float(s.max_latency_ms)] for s in items]
            if all(isinstance(s, Spec) for s in items) else None)


def spec_from_header(value: Any) -> Spec | list[Spec | None]:
    """The spec of a query's header, as the server takes it: one :class:`Spec`, a list of them, or ``[None]`` for
    a malformed one (the server answers: spec must be one Spec or a sequence of N Specs)."""
    if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        return Spec(float(value[0]), float(value[1]))
    if isinstance(value, list) and all(isinstance(s, list) and len(s) == 2
                                       and all(isinstance(v, (int, float)) for v in s) for s in value):
        return [Spec(float(a), float(lat)) for a, lat in value]
    return [None]


def caller(conn: Connection) -> Callable[..., Any]:
    """One round trip to the worker: (header, tensors) -> its reply's payload, or its error raised again."""

    def call(header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Any:
        conn.send_bytes(pack(header, tensors))
        status, *payload = pickle.loads(conn.recv_bytes())
        if status == "error":
            kind, message = payload
            raise FORWARDED_ERRORS[kind](message)
        return payload[0]

    return call


def remote_target(call: Callable[..., Any], budget: int | None) -> Target:
    """The attack's :class:`Target` over its channel: every answer comes with the server's remaining budget, so
    reading it costs no message (before the first query it is the ``budget`` the attack was given)."""

    def query(inputs: Any, spec: Any, purpose: str) -> torch.Tensor:
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if not isinstance(inputs, torch.Tensor):
            raise InvalidQueryError(f"inputs must be a torch.Tensor or numpy array, got {type(inputs).__name__}")
        return call({"op": "query", "purpose": str(purpose), "spec": spec_header(spec)}, {"inputs": inputs})

    return Target(query, lambda: budget)
