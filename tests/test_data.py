"""Dataset loading from local IDX files, the clear error when data is missing, and the splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from psml_bench import DataError
from psml_bench.zoo.data import DatasetConfig, SplitConfig, load_dataset, make_splits


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def make_fake_fmnist(directory: Path, n_train: int = 300, n_test: int = 100, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(directory / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(directory / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


def config(local_dir: Path, env: str = "PSML_TEST_FMNIST_DIR") -> DatasetConfig:
    return DatasetConfig(name="fashion-mnist", hub_id="no-such-org/no-such-dataset", local_dir=str(local_dir),
                         local_dir_env=env)


@pytest.mark.parametrize("compress", [True, False])
def test_local_idx_files_load_into_hf_datasets(tmp_path, compress):
    import datasets

    make_fake_fmnist(tmp_path, compress=compress)
    dataset, source = load_dataset(config(tmp_path))
    assert isinstance(dataset, datasets.DatasetDict)
    assert source == str(tmp_path)
    assert dataset["train"].num_rows == 300 and dataset["test"].num_rows == 100
    assert dataset["train"].features["label"].names[0] == "T-shirt/top"
    assert np.asarray(dataset["train"][0]["image"]).shape == (28, 28)


def test_environment_variable_names_the_directory(tmp_path, monkeypatch):
    make_fake_fmnist(tmp_path / "elsewhere")
    monkeypatch.setenv("PSML_TEST_FMNIST_DIR", str(tmp_path / "elsewhere"))
    dataset, source = load_dataset(config(tmp_path / "missing"))
    assert source == str(tmp_path / "elsewhere") and dataset["test"].num_rows == 100


def test_missing_data_error_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("PSML_TEST_FMNIST_DIR", raising=False)
    with pytest.raises(DataError) as error:
        load_dataset(config(tmp_path / "missing"))
    message = str(error.value)
    assert "dataset-fashion-mnist" in message and "PSML_TEST_FMNIST_DIR" in message
    assert "no-such-org/no-such-dataset" in message and "\n" not in message


def test_truncated_file_is_a_clear_error(tmp_path):
    make_fake_fmnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(config(tmp_path))


def test_splits_are_disjoint_seeded_and_sized(tmp_path):
    make_fake_fmnist(tmp_path)
    dataset, _ = load_dataset(config(tmp_path))
    sizes = SplitConfig(seed=3, owner=100, attacker=80, benign=20, test=50)
    splits = make_splits(dataset, sizes)
    again = make_splits(dataset, sizes)
    other = make_splits(dataset, SplitConfig(seed=4, owner=100, attacker=80, benign=20, test=50))
    assert splits.fingerprint == again.fingerprint != other.fingerprint
    assert splits.owner_x.shape == (100, 1, 28, 28) and splits.test_y.shape == (50,)
    assert float(splits.owner_x.max()) <= 1.0 and float(splits.owner_x.min()) >= 0.0

    def rows(x):
        return {bytes(row) for row in (x.numpy() * 255).round().astype(np.uint8).reshape(len(x), -1)}

    owner, attacker, benign = rows(splits.owner_x), rows(splits.attacker_x), rows(splits.benign_x)
    assert not (owner & attacker) and not (owner & benign) and not (attacker & benign)


def test_splits_larger_than_the_data_are_an_error(tmp_path):
    make_fake_fmnist(tmp_path)
    dataset, _ = load_dataset(config(tmp_path))
    with pytest.raises(DataError, match="need 400"):
        make_splits(dataset, SplitConfig(seed=0, owner=300, attacker=80, benign=20, test=10))
