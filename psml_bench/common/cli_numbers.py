"""Range-checked arguments of the command line: a bad number or role is refused by the parser, naming the range.

``argparse`` then prints the option, the value and the range on one line and exits with status 2,
before any work, instead of every cell failing later with a misleading error (a negative
``--timeout`` timing every cell out at once, a ``--memory-mb`` too small to import torch).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from ..contract.checks import role
from ..contract.errors import ConfigError

MAX_BUDGET = 100_000_000
"""Most queries an attack may be given (far beyond any pool; a larger number is a typo)."""
MIN_MEMORY_MB = 512
"""Least per-cell memory limit: an attack process needs about this much to import torch and timm."""


def integer(minimum: int, maximum: int | None = None, zero: str = "") -> Callable[[str], int]:
    """An int in [minimum, maximum]; ``zero``: 0 is accepted too, meaning this (e.g. "none")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if zero and value == 0:
            return 0
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {_describe(minimum, maximum, zero, False)}")
        return value

    return parse


def number(minimum: float, maximum: float | None = None, *, exclusive: bool = False) -> Callable[[str], float]:
    """A finite float >= ``minimum`` (> with ``exclusive``), at most ``maximum``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or (value <= minimum if exclusive else value < minimum) \
                or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {_describe(minimum, maximum, '', exclusive)}")
        return value

    return parse


def victim_role(text: str) -> str:
    """A victim role ``rank:k``."""
    try:
        return role(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _describe(minimum: float, maximum: float | None, zero: str, exclusive: bool) -> str:
    low = f"{'>' if exclusive else '>='} {minimum:g}"
    text = f"{low} and <= {maximum:,}" if maximum is not None else low
    return f"0 ({zero}) or {text}" if zero else f"must be {text}"
