"""Checks of the values a user hands the public API: each failure is one :class:`PsmlError` sentence.

The public functions and classes (``psml_bench.__all__``) call these on their arguments, so that a
malformed spec, role, pool size, generator or surrogate architecture is named in the harness's
words instead of surfacing as a ``ValueError``, ``TypeError``, ``IndexError`` or timm's
``RuntimeError('Unknown model')`` from deep inside (``tests/test_user_errors.py`` holds the table).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from typing import Any

import numpy as np

from .errors import ConfigError, DefenseError, InvalidQueryError

ROLE = re.compile(r"^rank:[1-9][0-9]*$")
"""A victim role: ``rank:k``, the k-th most accurate model the service offers."""
INPUT_SLACK = 1e-6
"""How far past [0, 1] an input value may lie (float rounding) before a query is refused."""


def count(name: str, value: Any, minimum: int = 0, error: type[Exception] = ConfigError) -> int:
    """``value`` as an int of at least ``minimum`` (an integral number, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def finite(name: str, value: Any, minimum: float | None = None, exclusive: bool = False,
           error: type[Exception] = ConfigError) -> float:
    """``value`` as a finite float (above ``minimum``, or at least it unless ``exclusive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise error(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value:g}")
    return float(value)


def generator(name: str, value: Any) -> np.random.Generator:
    """``value`` if it is a ``numpy.random.Generator`` (seeds are explicit generators, never ints)."""
    if not isinstance(value, np.random.Generator):
        raise ConfigError(f"{name} must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                          f"got {type(value).__name__}")
    return value


def role(value: Any) -> str:
    """A victim role ``rank:k`` (k >= 1)."""
    if not isinstance(value, str) or not ROLE.match(value):
        raise ConfigError(f"role must be 'rank:k' with k >= 1 (the k-th most accurate model), got {value!r}")
    return value


def surrogate_arch(value: Any) -> str:
    """A timm architecture of the local registry (a Hub name would download: refused)."""
    import timm

    if not isinstance(value, str) or not value:
        raise ConfigError(f"surrogate architecture must be a timm architecture name, got {value!r}")
    if ":" in value or "/" in value:
        raise ConfigError(f"surrogate architecture '{value}' names a download; surrogates are built from timm's "
                          "local registry only (e.g. 'test_resnet', 'resnet18')")
    if not timm.is_model(value):
        close = difflib.get_close_matches(value, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown surrogate architecture '{value}' (not a timm architecture{hint})")
    return value


class TimmArchitecture:
    """A parameter rule (as :class:`~psml_bench.Allowed` is one) for a surrogate architecture parameter."""

    registry = None

    def check(self, value: Any) -> None:
        try:
            surrogate_arch(value)
        except ConfigError as exc:
            raise ConfigError(f"must be {self.describe()} ({exc})") from None

    def accepts(self, value: Any) -> bool:
        try:
            surrogate_arch(value)
        except ConfigError:
            return False
        return True

    def describe(self) -> str:
        return "a timm architecture of the local registry"


def endpoint(url: Any) -> str:
    """An http(s) URL with a host, e.g. ``http://127.0.0.1:8000``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the endpoint must be an http:// or https:// URL with a host, e.g. "
                          f"http://127.0.0.1:8000, got {url!r}")
    return url


def spec_values(spec: Any) -> None:
    """A :class:`~psml_bench.Spec`'s two bounds are numbers (NaN and the range are the server's to refuse)."""
    for name in ("min_accuracy", "max_latency_ms"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidQueryError(f"spec {name} must be a number, got {value!r}")


def interval(name: str, bounds: Any) -> tuple[float, float]:
    """A (low, high) pair of finite numbers with low <= high."""
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ConfigError(f"{name} must be (low, high), got {bounds!r}")
    low, high = (finite(name, v) for v in bounds)
    if low > high:
        raise ConfigError(f"{name} must be (low, high) with low <= high, got {tuple(bounds)}")
    return low, high


def knowledge_fields(knowledge: Any) -> None:
    """A :class:`~psml_bench.Knowledge`'s role, input shape, classes, pool and device."""
    import torch

    role(knowledge.role)
    shape = knowledge.input_shape
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise ConfigError(f"input_shape must be (channels, height, width) of positive integers, got {shape!r}")
    count("num_classes", knowledge.num_classes, 2)
    pool = knowledge.pool
    if not (isinstance(pool, torch.Tensor) and pool.is_floating_point() and pool.ndim == 4
            and tuple(pool.shape[1:]) == tuple(shape)):
        got = f"shape {tuple(pool.shape)} of {pool.dtype}" if isinstance(pool, torch.Tensor) else type(pool).__name__
        raise ConfigError(f"pool must be a floating-point tensor of shape (N, {', '.join(map(str, shape))}), got {got}")
    device = knowledge.device
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def unit_interval(inputs: Any) -> Any:
    """Query inputs (a float tensor) whose values lie in [0, 1], as the protocol says."""
    low, high = float(inputs.min()), float(inputs.max())
    if low < -INPUT_SLACK or high > 1 + INPUT_SLACK:
        raise InvalidQueryError(f"inputs must be in [0, 1] (images scaled to [0, 1]), got values in "
                                f"[{low:.4g}, {high:.4g}]")
    return inputs


def defense_answers(shaped: Any, produced: Any, name: str) -> Any:
    """A defense's answers to the served models' ``produced`` probabilities: a tensor of their shape, in their
    dtype (float16, bfloat16 widen exactly, float64 rounds); an integer, boolean or complex one is named."""
    import torch

    if not isinstance(shaped, torch.Tensor) or shaped.shape != produced.shape:
        hint = " (convert it with torch.from_numpy)" if isinstance(shaped, np.ndarray) else ""
        got = (f"shape {tuple(shaped.shape)}, one row per answered query" if isinstance(shaped, torch.Tensor)
               else f"{type(shaped).__module__}.{type(shaped).__name__}{hint}")
        raise DefenseError(f"defense '{name}' answer()/postprocess() must return a torch.Tensor "
                           f"of shape ({produced.shape[0]}, {produced.shape[1]}), got {got}")
    if shaped.dtype != torch.float32:
        if not shaped.is_floating_point():  # an integer or boolean "probability" is a defense's bug
            raise DefenseError(f"defense '{name}' answer()/postprocess() returned {shaped.dtype} answers; answers "
                               f"are probabilities: return a floating-point tensor (torch.float32; other "
                               "floating dtypes are converted to it)")
        shaped = shaped.to(torch.float32)
    return shaped


def client_work(work: Any, rows: int, name: str) -> np.ndarray:
    """A defense's ``client_work_ms``: ``None`` (no work) or one finite, non-negative ms per answered request."""
    if work is None:
        return np.zeros(rows)
    try:
        values = np.asarray(work, dtype=float)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (rows,) or not np.isfinite(values).all() or (values < 0).any():
        got = "an array of another shape or with negative or non-finite values" if values is not None \
            else f"{type(work).__name__}"
        raise DefenseError(f"defense '{name}' client_work_ms() must return None or {rows} finite ms >= 0, one per "
                           f"answered request, got {got}")
    return values


def pool_size(name: str, value: Any) -> int:
    """A number of pool inputs or queries: an integer >= 0."""
    return count(name, value, 0, InvalidQueryError)
