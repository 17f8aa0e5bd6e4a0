"""The CPU kernels a zoo build trains with: portable pins for its training processes, and the card's build environment.

Torch, oneDNN and MKL pick their kernels by the CPU's instruction set (and MKL by its vendor), and
the kernels round differently: the same training on one thread gives other weights on an AVX-512
CPU than on an AVX2 one. A ``portable`` build trains every model in a child process started with
:data:`PORTABLE_PINS`, which caps each library at AVX2 kernels; they are read once, when a library
first loads, so they cannot be set in a process that has imported torch.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from contextlib import contextmanager
from typing import Iterator

import torch

log = logging.getLogger(__name__)

KERNEL_MODES = ("portable", "native")
"""``portable``: AVX2 kernels in child processes, the same weights on any x86-64 CPU with AVX2;
``native``: the best kernels of the building CPU, in the building process or its workers."""

PORTABLE_PINS: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
"""Environment of a portable build's training processes: torch's own vectorised kernels, oneDNN's
convolutions and MKL's matrix products, each capped at AVX2 (MKL's conditional numerical
reproducibility branch, the same code on Intel and AMD)."""

PORTABLE_CAPABILITY = "AVX2"
"""Torch's CPU capability in a portable build's training processes (lower on a CPU without AVX2)."""


def training_environment(mode: str, device: torch.device) -> dict[str, str] | None:
    """The environment a build's training processes start with; None: train where it suits (native, or a GPU)."""
    return dict(PORTABLE_PINS) if mode == "portable" and device.type == "cpu" else None


@contextmanager
def child_environment(pins: dict[str, str]) -> Iterator[None]:
    """Set ``pins`` in ``os.environ`` for the processes started in the block; restore it after.

    This process's own libraries are already loaded (or wait in the block), so they keep their kernels.
    """
    previous = {name: os.environ.get(name) for name in pins}
    os.environ.update(pins)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def capability() -> str:
    """Torch's CPU kernel capability in this process: ``AVX512``, ``AVX2``, ``DEFAULT``."""
    return str(torch.backends.cpu.get_cpu_capability())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_build() -> str:
    """Torch's version, commit and CPU libraries: ``2.14.1 (5c48869) MKL 2024.2 oneDNN v3.12.0``."""
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version (\S+?)(-Product)?\s", config)
    onednn = re.search(r"MKL-DNN (v[\d.]+)", config)
    parts = [torch.__version__, f"({(torch.version.git_version or 'unknown')[:7]})"]
    parts += [f"MKL {mkl.group(1)}"] if mkl else []
    parts += [f"oneDNN {onednn.group(1)}"] if onednn else []
    return " ".join(parts)


def build_environment(mode: str, training_capability: str | None) -> dict[str, object]:
    """What a card records of where its weights were trained: the mode, the pins, the CPU and torch's build."""
    return {"kernels": mode, "kernel_pins": dict(PORTABLE_PINS) if mode == "portable" else {},
            "cpu": cpu_model(), "cpu_capability": capability(),
            "training_capability": training_capability or capability(), "torch_build": torch_build()}


def check_portable(mode: str, training_capability: str) -> None:
    """Warn when a portable build's training processes did not get AVX2 kernels (a CPU without AVX2)."""
    if mode == "portable" and training_capability != PORTABLE_CAPABILITY:
        log.warning("this CPU gave the portable build %s kernels, not %s: its weights differ from those "
                    "built on CPUs with AVX2", training_capability, PORTABLE_CAPABILITY)
