"""Shared fixtures: the tiny zoo, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from psml_bench.zoo.build import open_zoo


@pytest.fixture(scope="session")
def cache_dir(request) -> Path:
    """Zoo cache for tests: $PSML_BENCH_TEST_CACHE, else pytest's persistent cache directory."""
    explicit = os.environ.get("PSML_BENCH_TEST_CACHE")
    return Path(explicit) if explicit else Path(request.config.cache.mkdir("psml-bench-zoos"))


@pytest.fixture(scope="session")
def tiny_zoo(cache_dir):
    return open_zoo("fmnist-tiny", cache_dir, progress=False)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
