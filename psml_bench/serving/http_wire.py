"""The HTTP service's wire format: query bodies (.npy or safetensors) and answer bodies (safetensors).

A query body is either a safetensors blob holding ``inputs`` (float, shape ``(N, C, H, W)``) and
optionally ``spec`` (float64, ``(2,)`` for one spec or ``(N, 2)`` for one per row: min accuracy,
max latency in ms), or a NumPy ``.npy`` file holding the inputs alone, the spec then coming as
query parameters. An answer body is a safetensors blob with ``probabilities`` (float32,
``(N, classes)``, NaN where refused), ``refused`` (uint8) and ``latency_ms`` (float64, NaN where
refused), and for the operator's keys ``served_accuracy`` (the serving model's accuracy per row).
Both are parsed without pickle.
"""

from __future__ import annotations

import io

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from ..contract.errors import InvalidQueryError
from ..contract.spec import Spec

NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"


class EncodingError(InvalidQueryError):
    """A body that does not parse as the content type it claims."""


def encode_query(inputs: torch.Tensor, spec: Spec | list[Spec]) -> bytes:
    """A safetensors query body: the inputs and one spec, or one spec per row."""
    if isinstance(spec, Spec):
        specs = torch.tensor([spec.min_accuracy, spec.max_latency_ms], dtype=torch.float64)
    else:
        specs = torch.tensor([[s.min_accuracy, s.max_latency_ms] for s in spec], dtype=torch.float64)
    return safetensors.torch.save({"inputs": inputs.detach().cpu().contiguous(), "spec": specs})


def _specs(array: np.ndarray, n: int) -> Spec | list[Spec]:
    if array.dtype.kind != "f":
        raise InvalidQueryError(f"spec must be floating point, got dtype {array.dtype}")
    if array.shape == (2,):
        return Spec(float(array[0]), float(array[1]))
    if array.shape == (n, 2):
        return [Spec(float(a), float(lat)) for a, lat in array]
    raise InvalidQueryError(f"spec must have shape (2,) or ({n}, 2) (min accuracy, max latency ms), "
                            f"got {tuple(array.shape)}")


def decode_query(body: bytes, content_type: str, min_accuracy: float | None,
                 max_latency_ms: float | None) -> tuple[np.ndarray, Spec | list[Spec]]:
    """The inputs and spec(s) of a query body.

    Raises:
        EncodingError: the body does not parse as ``content_type``.
        InvalidQueryError: the spec is missing or malformed.
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind == SAFETENSORS:
        try:
            tensors = safetensors.numpy.load(body)
        except Exception as exc:  # noqa: BLE001 - anything unparsable is the client's error
            raise EncodingError(f"body is not a valid safetensors file ({str(exc).splitlines()[0][:120]})") from None
        if "inputs" not in tensors:
            raise InvalidQueryError("safetensors body holds no 'inputs' tensor")
        inputs = tensors["inputs"]
        if "spec" in tensors:
            return inputs, _specs(tensors["spec"], len(inputs))
    elif kind == NPY:
        try:
            inputs = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise EncodingError(f"body is not a valid .npy file ({str(exc).splitlines()[0][:120]})") from None
    else:
        raise EncodingError(f"content type must be {SAFETENSORS} or {NPY}, got '{kind or 'none'}'")
    if min_accuracy is None or max_latency_ms is None:
        raise InvalidQueryError("no spec: send a 'spec' tensor or the min_accuracy and max_latency_ms parameters")
    return inputs, Spec(float(min_accuracy), float(max_latency_ms))


def encode_answers(probabilities: torch.Tensor, refused: np.ndarray, latency_ms: np.ndarray,
                   served_accuracy: np.ndarray | None = None) -> bytes:
    """An answer body (``served_accuracy``: only for the operator's keys)."""
    tensors = {"probabilities": probabilities.float().contiguous(),
               "refused": torch.from_numpy(refused.astype(np.uint8)),
               "latency_ms": torch.from_numpy(latency_ms.astype(np.float64))}
    if served_accuracy is not None:
        tensors["served_accuracy"] = torch.from_numpy(served_accuracy.astype(np.float64))
    return safetensors.torch.save(tensors)


def decode_answers(body: bytes) -> dict[str, torch.Tensor]:
    """The tensors of an answer body (``refused`` as bool)."""
    tensors = safetensors.torch.load(body)
    tensors["refused"] = tensors["refused"].bool()
    return tensors
