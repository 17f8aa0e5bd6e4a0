"""``attacker_data``: the out-of-distribution pools, the grid parameter, its errors and its cell keys."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from psml_bench import ConfigError
from psml_bench.bench.cell import cell_key, row_identity, run_cell
from psml_bench.bench.grid import load_grid
from psml_bench.zoo import attacker_data
from psml_bench.zoo.attacker_data import IN_DISTRIBUTION, SOURCES, attacker_pool, check_attacker_data

from helpers import tiny_grid

def grid_file(tmp_path: Path, top: str = "", block: str = "", budget: int = 120) -> Path:
    return tiny_grid(tmp_path / "ood.toml", budget=budget, defense="none", top=top, block=block)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_sources_make_pools_of_the_zoo_shape_in_the_unit_box(shape):
    digits = SOURCES["digits"].make(shape, 50)
    assert digits.shape == (1797, *shape) and float(digits.min()) >= 0 and float(digits.max()) <= 1
    assert float(digits.max()) > 0.9  # ink reaches the top of the range, as 16 / 16
    photos = SOURCES["photos"].make(shape, 300)
    assert photos.shape == (300, *shape) and float(photos.min()) >= 0 and float(photos.max()) <= 1
    assert torch.equal(photos, SOURCES["photos"].make(shape, 300))  # one fixed pool, whatever the cell
    assert float(photos.flatten(1).std(dim=1).mean()) > 0.02  # crops of photographs, not flat patches


def test_in_distribution_is_the_attacker_split_and_ood_differs(tiny_zoo):
    assert attacker_pool(tiny_zoo, IN_DISTRIBUTION) is tiny_zoo.splits["attacker_x"]
    photos = attacker_pool(tiny_zoo, "photos")
    assert photos.shape == tiny_zoo.splits["attacker_x"].shape
    assert not torch.equal(photos, tiny_zoo.splits["attacker_x"])


def test_unknown_source_and_missing_package_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"field 'blocks.0.attacker_data': unknown attacker_data 'digit' "
                                          r"\(did you mean 'digits'\?\); available: in-distribution, digits, photos"):
        load_grid(grid_file(tmp_path, block='attacker_data = ["in-distribution", "digit"]'))
    real = importlib.util.find_spec
    monkeypatch.setattr(attacker_data.importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(ConfigError, match=r"field 'attacker_data': attacker_data 'photos' needs the Python package "
                                          r"'skimage', which is not installed: pip install scikit-image"):
        load_grid(grid_file(tmp_path, top='attacker_data = "photos"'))
    with pytest.raises(ConfigError, match="'digits' has 1797 inputs, fewer than the budget 2000"):
        load_grid(grid_file(tmp_path, block='attacker_data = "digits"', budget=2000))
    with pytest.raises(ConfigError):
        check_attacker_data(3)


def test_the_default_leaves_cell_keys_alone_and_a_source_makes_new_cells(tmp_path, tiny_zoo):
    grid = load_grid(grid_file(tmp_path, block='attacker_data = ["in-distribution", "digits"]'))
    cells = grid.cells()
    assert [c.attacker_data for c in cells] == ["in-distribution", "digits"]
    plain = load_grid(grid_file(tmp_path)).cells()
    assert plain == cells[:1]  # the same cell, so the same key, as a grid without the parameter
    keys = {cell_key(tiny_zoo, grid, c) for c in cells}
    assert len(keys) == 2
    assert row_identity(tiny_zoo, cells[1]).attack.endswith(" on digits")
    assert row_identity(tiny_zoo, cells[1]).attacker_data == "digits"
    assert "attacker_data" not in row_identity(tiny_zoo, cells[0]).as_dict()


def test_a_cell_on_digits_runs_and_benign_clients_keep_the_split(tmp_path, tiny_zoo):
    grid = load_grid(grid_file(tmp_path, block='attacker_data = ["in-distribution", "digits"]'))
    rows = [run_cell(tiny_zoo, grid, cell) for cell in grid.cells()]
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    assert rows[1].attacker_data == "digits" and rows[1].queries == 120
    assert rows[0].fidelity != rows[1].fidelity
    # the benign stream is drawn from the in-distribution split either way: same requests, same answers
    assert rows[0].benign_requests == rows[1].benign_requests
    assert rows[0].benign_accuracy_drop == rows[1].benign_accuracy_drop == 0.0


def test_the_threat_models_grid_crosses_attackers_defenses_data_and_identities():
    grid = load_grid("threat-models")
    data, sybil, data_free = grid.blocks
    assert {a.name for a in data.attacks} == {"psml", "knockoff", "psml-aware"} and len(data.defenses) == 6
    assert data.attacker_data == ("in-distribution", "digits", "photos") and grid.seeds == (0, 1, 2)
    assert sybil.attacker_identities == (1, 4, 16)
    assert {a.name for a in sybil.attacks} == {"psml", "knockoff", "psml-aware"}
    # DFME queries no pool: one attacker_data setting per defense, the attacker-data block's defenses
    assert [(a.name, dict(a.params)) for a in data_free.attacks] == [("psml", {"strategy": "dfme"})]
    assert data_free.defenses == data.defenses and data_free.attacker_data == ("in-distribution",)
    assert len(grid.cells()) == 252  # 162 + 108 + 18, less the 36 k = 1 cells the first two blocks share
