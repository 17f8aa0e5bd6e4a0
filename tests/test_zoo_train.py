"""Zoo training is reproducible: a fixed thread count, and the same weights serial or in parallel processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from safetensors.torch import save_file

from psml_bench.zoo.model_zoo import ZooModel
from psml_bench.zoo.build import build_zoo
from psml_bench.zoo.config import load_zoo_config
from psml_bench.zoo.train import TrainJob, parallel_workers, reproducible, train_members

TINY = Path(__file__).resolve().parents[1] / "psml_bench" / "configs" / "zoos" / "fmnist-tiny.toml"


def test_reproducible_fixes_threads_and_determinism_then_restores_them():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with reproducible(3):
        assert torch.get_num_threads() == 3 and torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_parallel_workers_follow_cores_over_threads_and_stay_serial_on_a_gpu():
    cpu = torch.device("cpu")
    assert parallel_workers(2, 5, cpu, jobs=4) == 4
    assert parallel_workers(2, 3, cpu, jobs=8) == 3  # never more processes than models
    assert parallel_workers(2, 5, cpu, jobs=0) == 1
    assert parallel_workers(1, 5, torch.device("cuda"), jobs=4) == 1
    assert 1 <= parallel_workers(64, 5, cpu) <= 5


def _jobs(tmp_path: Path) -> list[TrainJob]:
    """Two small fmnist-tiny models on random data, one thread each, from saved initial weights."""
    config = load_zoo_config(TINY)
    generator = torch.Generator().manual_seed(0)
    save_file({"owner_x": torch.rand(256, 1, 28, 28, generator=generator),
               "owner_y": torch.randint(0, 10, (256,), generator=generator)}, str(tmp_path / "splits.safetensors"))
    jobs = []
    for model in config.models[:2]:
        model = replace(model, train=replace(model.train, samples=192, epochs=1))
        with torch.random.fork_rng():
            torch.manual_seed(model.train.seed)
            initial = ZooModel(model.arch, model.kwargs, 1, 10, config.mean, config.std)
        save_file(initial.state_dict(), str(tmp_path / f"{model.id}.init.safetensors"))
        jobs.append(TrainJob(model, 1, 10, config.mean, config.std, str(tmp_path / "splits.safetensors"),
                             str(tmp_path / f"{model.id}.init.safetensors"), str(tmp_path / f"{model.id}.safetensors"),
                             "cpu", "none", 1, False))
    return jobs


def test_models_trained_in_parallel_processes_get_the_serial_weights(tmp_path):
    weights = []
    for workers in (1, 2):
        jobs = _jobs(tmp_path)
        seconds = train_members(jobs, workers, "test", progress=False)
        assert list(seconds) == [job.model.id for job in jobs]
        weights.append([Path(job.weights_path).read_bytes() for job in jobs])
        for job in jobs:
            Path(job.weights_path).unlink()
    assert weights[0] == weights[1]
    assert weights[0][0] != weights[0][1]


@pytest.mark.slow
def test_tiny_zoo_rebuilt_in_parallel_under_another_thread_count_has_the_shared_zoos_weights(tmp_path, tiny_zoo):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's own default no longer matters: the config fixes 2
    try:
        directory = build_zoo(load_zoo_config("fmnist-tiny"), tmp_path, progress=False, jobs=2)
    finally:
        torch.set_num_threads(previous)
    card = json.loads((directory / "card.json").read_text())
    assert card["environment"]["threads"] == 2 and not (directory / "initial").exists()
    assert [m["weights_sha256"] for m in card["models"]] == [m["weights_sha256"] for m in tiny_zoo.card["models"]]
    assert ((directory / "predictions.safetensors").read_bytes()
            == (tiny_zoo.directory / "predictions.safetensors").read_bytes())
    assert torch.get_num_threads() == previous


def test_opening_a_zoo_built_on_other_threads_than_its_config_fixes_warns(tmp_path, tiny_zoo, cache_dir, caplog):
    from psml_bench.zoo.build import open_zoo

    source = Path(load_zoo_config("fmnist-tiny").source)
    changed = tmp_path / "fmnist-tiny.toml"
    changed.write_text(source.read_text().replace("threads = 2", "threads = 1"))
    assert load_zoo_config(changed).config_hash == load_zoo_config("fmnist-tiny").config_hash  # same directory
    with caplog.at_level("WARNING", logger="psml_bench.zoo.build"):
        zoo = open_zoo(changed, cache_dir, build=False, progress=False)
    assert zoo.directory == tiny_zoo.directory
    assert [r.getMessage() for r in caplog.records if "trained on 2 threads, its config now fixes 1" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING", logger="psml_bench.zoo.build"):
        open_zoo("fmnist-tiny", cache_dir, build=False, progress=False)
    assert not caplog.records


GENERIC_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
"""Kernel settings that stand for an older x86-64 CPU (generic torch kernels, SSE4.1 oneDNN, MKL's compatible
branch)."""


def test_portable_training_gives_the_same_weights_under_another_cpus_kernels(tmp_path, monkeypatch):
    from psml_bench.zoo.kernels import PORTABLE_PINS

    def weights(environment):
        jobs = [replace(job, initial_weights="") for job in _jobs(tmp_path)]
        train_members(jobs, 1, "test", progress=False, environment=environment)
        out = [Path(job.weights_path).read_bytes() for job in jobs]
        for job in jobs:
            Path(job.weights_path).unlink()
        return out

    native = weights({})
    portable = weights(dict(PORTABLE_PINS))
    for name, value in GENERIC_KERNELS.items():  # this process's environment, inherited by its children
        monkeypatch.setenv(name, value)
    assert weights({}) != native  # the setting does change the kernels, and the weights
    assert weights(dict(PORTABLE_PINS)) == portable
