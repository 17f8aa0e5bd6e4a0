"""``psml-bench run --device``: cpu cells keep their keys and numbers, other devices get keys of their own,
and a device that is not there is one clear error."""

from __future__ import annotations

import platform

import pytest
import torch

from psml_bench.bench.cell import cell_key, provenance, zoo_identity
from psml_bench.common.device import device_label, key_part
from psml_bench.bench.grid import load_grid
from psml_bench.isolation.sandbox import bwrap_command, gpu_binds
from psml_bench.cli import main


def test_a_cpu_cell_keeps_its_key_and_a_cuda_cell_has_its_own(tiny_zoo):
    grid = load_grid("tiny")
    identity = zoo_identity(tiny_zoo)
    for cell in list(grid.cells())[:3]:
        plain = cell_key(tiny_zoo, grid, cell, identity)
        assert cell_key(tiny_zoo, grid, cell, identity, "cpu") == plain
        assert cell_key(tiny_zoo, grid, cell, identity, torch.device("cpu")) == plain
        on_gpu = cell_key(tiny_zoo, grid, cell, identity, "cuda")
        assert on_gpu != plain
        assert cell_key(tiny_zoo, grid, cell, identity, "cuda:1") == on_gpu  # the index does not round differently
    assert key_part("cpu") is None and key_part("cuda:0") == "cuda"


def test_a_cpu_row_names_the_cpu_as_before():
    assert provenance()["device"] == provenance("cpu")["device"] == f"cpu ({platform.machine()})"
    assert device_label(torch.device("cpu")) == f"cpu ({platform.machine()})"


@pytest.mark.parametrize("device, message", [
    ("tpu", "device 'tpu' is unknown; use cpu, cuda, cuda:N or auto"),
    pytest.param("cuda", "device 'cuda': CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_a_missing_or_unknown_device_is_one_line(tmp_path, capsys, device, message):
    assert main(["run", "--grid", "tiny", "--out", str(tmp_path / "out"), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"psml-bench: error: {message}") and "\n" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_only_a_gpu_sandbox_holds_the_gpus(monkeypatch, tmp_path):
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    binds = gpu_binds(tmp_path)
    devices = sorted(str(tmp_path / n) for n in ("nvidia-uvm", "nvidia0", "nvidiactl"))
    assert binds == [a for d in devices for a in ("--dev-bind", d, d)] + ["--ro-bind-try", "/sys", "/sys"]
    assert gpu_binds(tmp_path / "none") == []
    monkeypatch.setattr("psml_bench.isolation.sandbox.gpu_binds", lambda: binds)
    command = bwrap_command("/usr/bin/python3", ["-c", "pass"], gpu=True)
    assert command.index("--dev-bind") > command.index("--dev")  # after /dev is made, which would hide them
    assert "--dev-bind" not in bwrap_command("/usr/bin/python3", ["-c", "pass"], gpu=False)


def test_ray_refuses_a_gpu_run():
    from psml_bench.contract.errors import ConfigError
    from psml_bench.runner import make_executor

    with pytest.raises(ConfigError, match="ray executor runs cells on the CPU only"):
        make_executor("ray", device="cuda")
