"""The device a cell's tensors run on: its label in a row, its part of the cell key, deterministic CUDA.

A cell serves its forward passes, trains its surrogate (in the attack process) and scores it on
one device: ``cpu`` (the default, on which the committed leaderboard is computed) or ``cuda``.
Results are reproducible on a given device, not across devices, so a cuda cell's key names its
device and a cpu cell's key stays what it was before devices existed. On the CPU, results also
depend on the intra-op thread count, which :func:`intra_op_threads` fixes for a block of work.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Iterator

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS workspace setting that makes its matrix products deterministic (NVIDIA's documented value)."""


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads (float reductions split that many ways); restore the count
    after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def key_part(device: torch.device | str) -> str | None:
    """What a cell key records of the device: None on the CPU (keys unchanged), else its type (``cuda``)."""
    kind = as_device(device).type
    return None if kind == "cpu" else kind


def device_label(device: torch.device | str) -> str:
    """The row's ``device`` column: ``cpu (x86_64)``, ``cuda (NVIDIA H100 80GB HBM3)``."""
    device = as_device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()})"


def make_deterministic(device: torch.device | str) -> None:
    """Make this process's CUDA kernels deterministic (a no-op on the CPU, whose settings stay untouched).

    Call it before the process's first CUDA operation: cuBLAS reads its workspace setting once.
    """
    if as_device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
