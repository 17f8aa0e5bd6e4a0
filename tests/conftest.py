"""Shared fixtures: the tiny zoo (built once per test session), torch on one thread, a seeded generator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from psml_bench.zoo.build import open_zoo


@pytest.fixture(scope="session")
def cache_dir(request) -> Path:
    """Zoo cache for tests: $PSML_BENCH_TEST_CACHE, else pytest's persistent cache directory."""
    explicit = os.environ.get("PSML_BENCH_TEST_CACHE")
    return Path(explicit) if explicit else Path(request.config.cache.mkdir("psml-bench-zoos"))


@pytest.fixture(scope="session")
def tiny_zoo(cache_dir):
    return open_zoo("fmnist-tiny", cache_dir, progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests, as in a cell (two threads on a shared machine only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
