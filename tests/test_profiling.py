"""Latency profiling: the per-batch fit, device checks, profile documents, and the CLI.

The CUDA timing path needs a GPU; its test is skipped where there is none. Everything that
decides what is measured and written (batch sizes, precision, the fit, the schema, the file the
run routes on) is tested on the CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from psml_bench import ConfigError
from psml_bench.common.files import validate
from psml_bench.zoo.profiling import (dump_profile, environment, fit_batch_latency, frontier_separation, load_profile,
    profile_model, reference_profile_path, resolve_device)
from psml_bench.zoo.config import load_zoo_config
from psml_bench.zoo.profiles import measured_profile_path, profile_zoo, resolve_profile
from psml_bench.cli import main

NO_CUDA = not torch.cuda.is_available()

TINY_UNTRAINED_ZOO = """
name = "prof-tiny"
[dataset]
name = "none"
format = "hf"
hub_id = "no-such-org/no-such-dataset"
local_dir_env = "PSML_TEST_NO_DATA"
num_classes = 5
[splits]
seed = 0
owner = 10
attacker = 10
benign = 10
test = 10
[preprocess]
channels = 3
size = 16
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[service]
accuracy_margin = 0.05
latency_margin = 0.5
[[models]]
id = "a"
arch = "test_resnet"
train = { samples = 10, epochs = 1 }
[[models]]
id = "b"
arch = "test_efficientnet"
input_size = 24
train = { samples = 10, epochs = 1 }
"""


def test_fit_recovers_a_line_and_scores_noise():
    fit = fit_batch_latency([1, 2, 4, 8, 16], [0.5 + 0.25 * b for b in (1, 2, 4, 8, 16)])
    assert fit.slope_ms == pytest.approx(0.25) and fit.intercept_ms == pytest.approx(0.5) and fit.r2 == 1.0
    assert fit.predict(32) == pytest.approx(8.5)
    noisy = fit_batch_latency([1, 2, 4, 8], [1.0, 1.4, 1.9, 3.8])
    assert 0 < noisy.r2 < 1 and noisy.slope_ms > 0
    assert fit_batch_latency([1, 2], [2.0, 2.0]).as_dict() == {"slope_ms": 0.0, "intercept_ms": 2.0, "r2": 1.0}
    with pytest.raises(ValueError, match="two or more distinct batch sizes"):
        fit_batch_latency([4, 4], [1.0, 2.0])


def test_frontier_separation_compares_the_gap_with_the_larger_spread():
    profile = {"models": {"slow": {"p50_ms": 9.0, "p90_ms": 9.5}, "fast": {"p50_ms": 2.0, "p90_ms": 2.5},
                          "mid": {"p50_ms": 4.0, "p90_ms": 6.5}, "off": {"p50_ms": 3.0, "p90_ms": 3.1}}}
    pairs = frontier_separation(profile, ["slow", "mid", "fast"])  # "off" is not on the frontier
    assert [(p.faster, p.slower) for p in pairs] == [("fast", "mid"), ("mid", "slow")]
    assert [(p.gap_ms, p.spread_ms) for p in pairs] == [(2.0, 2.5), (5.0, 2.5)]
    assert [p.separated for p in pairs] == [False, True]  # 2.0 ms apart, but mid's own p90 is 2.5 ms above its p50


def test_device_checks():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    with pytest.raises(ConfigError, match="device 'tpu'"):
        resolve_device("tpu")
    if NO_CUDA:
        with pytest.raises(ConfigError, match="CUDA is not available on this machine.*use --device cpu"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")
    assert set(environment()) == {"device", "torch", "threads"}  # the CPU record is unchanged


def test_profile_model_on_cpu_keeps_raw_numbers_and_fit():
    import timm

    model = timm.create_model("test_resnet", num_classes=4, in_chans=1).eval()

    def make_input(b):
        return torch.rand((b, 1, 12, 12), generator=torch.Generator().manual_seed(b))

    entry = profile_model(model, make_input, torch.device("cpu"), batch_sizes=[4, 1, 2], warmup=1, repeats=5)
    assert sorted(entry["batches"], key=int) == ["1", "2", "4"]
    assert all(len(b["samples_ms"]) == 5 for b in entry["batches"].values())
    assert entry["p50_ms"] == entry["batches"]["1"]["p50_ms"] == pytest.approx(
        float(np.percentile(entry["batches"]["1"]["samples_ms"], 50)), abs=1e-3)
    assert set(entry["fit"]) == {"slope_ms", "intercept_ms", "r2"}
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left alone
    with pytest.raises(ConfigError, match="must include 1"):
        profile_model(model, make_input, torch.device("cpu"), batch_sizes=[2, 4], warmup=0, repeats=1)
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        profile_model(model, make_input, torch.device("cpu"), precision="fp16", warmup=0, repeats=1)
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        profile_model(model, make_input, torch.device("cpu"), precision="fp8", warmup=0, repeats=1)


def test_untrained_profile_needs_no_data_and_routes_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PSML_TEST_NO_DATA", raising=False)
    config_path = tmp_path / "prof-tiny.toml"
    config_path.write_text(TINY_UNTRAINED_ZOO)
    profile = profile_zoo(config_path, tmp_path, device="cpu", batch_sizes=[1, 2, 4], warmup=1, repeats=4,
                          untrained=True, progress=False)
    validate(profile, "profile", "test")
    assert profile["weights"] == "untrained" and profile["precision"] == "fp32"
    assert profile["batch_sizes"] == [1, 2, 4] and set(profile["models"]) == {"a", "b"}
    assert profile["device"].startswith("cpu") and profile["provenance"]["config"] == "prof-tiny"
    assert json.loads(dump_profile(profile)) == profile

    assert main(["--cache", str(tmp_path), "-q", "zoo", "profile", str(config_path), "--untrained",
                 "--batch-sizes", "1,8", "--warmup", "1", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    written = measured_profile_path(load_zoo_config(config_path), "cpu", tmp_path)
    assert str(written) in out and "fit slope ms/input" in out
    assert load_profile(written)["models"]["b"]["batches"]["8"]["p50_ms"] > 0
    assert resolve_profile(load_zoo_config(config_path), "cpu", tmp_path) == written

    # --out elsewhere, with no profile of this kind committed or cached, routes a run on the file itself
    elsewhere, fresh_cache = tmp_path / "elsewhere.json", tmp_path / "fresh"
    assert main(["--cache", str(fresh_cache), "-q", "zoo", "profile", str(config_path), "--untrained",
                 "--batch-sizes", "1", "--warmup", "1", "--repeats", "3", "--threads", "1",
                 "--out", str(elsewhere)]) == 0
    assert f"--profile {elsewhere}" in capsys.readouterr().out
    assert load_profile(elsewhere)["threads"] == 1


def test_untrained_profile_needs_a_declared_shape(tmp_path):
    with pytest.raises(ConfigError, match="preprocess.channels, preprocess.size and dataset.num_classes"):
        profile_zoo("fmnist-tiny", tmp_path, untrained=True, progress=False)


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on machines without CUDA")
def test_cli_cuda_profile_without_cuda_is_one_line(tmp_path, capsys):
    assert main(["--cache", str(tmp_path), "zoo", "profile", "cifar10", "--device", "cuda", "--untrained"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "CUDA is not available" in error


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_profile_is_synchronised_and_complete(tmp_path, precision):
    config_path = tmp_path / "prof-tiny.toml"
    config_path.write_text(TINY_UNTRAINED_ZOO)
    profile = profile_zoo(config_path, tmp_path, device="cuda", precision=precision, batch_sizes=[1, 2, 4, 64],
                          warmup=3, repeats=10, untrained=True, progress=False)
    validate(profile, "profile", "test")
    assert profile["device"].startswith("cuda (") and profile["cuda"] and profile["driver"]
    assert profile["precision"] == precision
    for entry in profile["models"].values():
        assert all(b["p50_ms"] > 0 for b in entry["batches"].values())


def test_a_cell_key_follows_the_profiles_batch_fits(tiny_zoo, tmp_path):
    """Editing only a batch fit (the routing p50s unchanged) changes the service, so it changes every cell key."""
    from psml_bench.bench.cell import cell_key
    from psml_bench.bench.grid import load_grid
    from psml_bench.zoo.model_zoo import Zoo

    grid = load_grid("tiny")
    cell = next(iter(grid.cells()))
    profile = json.loads(tiny_zoo.profile_path.read_text())
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    before = Zoo(tiny_zoo.directory, profile_path=path)
    key = cell_key(before, grid, cell)
    assert key == cell_key(tiny_zoo, grid, cell)  # the same profile, wherever it lies
    # the tiny zoo routes on batch-1 times; its batch fits come from its committed CPU profile, and a
    # fit in the routing profile takes their place
    fits = load_profile(reference_profile_path("fmnist-tiny-cpu.json"))["models"]
    model_id, entry = next(iter(profile["models"].items()))
    entry["fit"] = {**fits[model_id]["fit"], "slope_ms": 2 * fits[model_id]["fit"]["slope_ms"]}
    path.write_text(json.dumps(profile))
    after = Zoo(tiny_zoo.directory, profile_path=path)
    assert [e.latency_ms for e in after.menu] == [e.latency_ms for e in before.menu]
    assert cell_key(after, grid, cell) != key
