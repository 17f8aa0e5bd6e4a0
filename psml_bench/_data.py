"""Datasets: Fashion-MNIST from local IDX files (or the Hugging Face Hub) and the fixed splits.

The zoo config names the dataset; this module turns it into a Hugging Face
``datasets.DatasetDict`` (``train``/``test`` with ``image`` and ``label`` columns) and cuts the
seeded, disjoint benchmark splits from it:

- ``owner``: trains the zoo (from ``train``),
- ``attacker``: the unlabeled pool handed to attacks (from ``train``, disjoint from ``owner``),
- ``benign``: inputs of the benign workload (from ``train``, disjoint from both),
- ``test``: scoring only (from ``test``).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._errors import DataError

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetConfig:
    """Where a zoo's dataset comes from (the ``[dataset]`` table of a zoo config)."""

    name: str
    hub_id: str
    local_dir: str
    local_dir_env: str


@dataclass(frozen=True)
class SplitConfig:
    """Sizes and seed of the benchmark splits (the ``[splits]`` table of a zoo config)."""

    seed: int
    owner: int
    attacker: int
    benign: int
    test: int


@dataclass(frozen=True)
class Splits:
    """The four benchmark splits as float tensors in [0, 1], shape (N, C, H, W)."""

    owner_x: torch.Tensor
    owner_y: torch.Tensor
    attacker_x: torch.Tensor
    benign_x: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: str
    class_names: tuple[str, ...]

    def summary(self) -> dict[str, int | str]:
        """Sizes and the index fingerprint, as recorded in the zoo card."""
        return {
            "owner": len(self.owner_y), "attacker": len(self.attacker_x),
            "benign": len(self.benign_x), "test": len(self.test_y),
            "indices_sha256": self.fingerprint,
        }


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({array.size} values, header says {dims})")
    return array.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(directory: Path):
    """Load IDX files (Fashion-MNIST layout) from ``directory`` into a ``datasets.DatasetDict``."""
    import datasets

    features = datasets.Features({
        "image": datasets.Array2D(shape=(28, 28), dtype="uint8"),
        "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
    })
    splits = {}
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        images_path, labels_path = _find_idx(directory, images_stem), _find_idx(directory, labels_stem)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(f"{directory} has no {images_stem}[.gz] / {labels_stem}[.gz]")
        images, labels = _read_idx(images_path), _read_idx(labels_path)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels in split {split}")
        splits[split] = datasets.Dataset.from_dict(
            {"image": images, "label": labels.astype(np.int64)}, features=features)
    return datasets.DatasetDict(splits)


def load_dataset(config: DatasetConfig):
    """Load a zoo's dataset: local files first, then the Hugging Face Hub.

    Returns:
        ``(dataset_dict, source)``, source naming the directory or Hub id it came from.

    Raises:
        DataError: neither source is available; the message names both ways to supply it.
    """
    env_dir = os.environ.get(config.local_dir_env)
    directory = Path(env_dir or config.local_dir)
    try:
        dataset = load_idx_dataset(directory)
        log.info("loaded %s from %s", config.name, directory)
        return dataset, str(directory)
    except FileNotFoundError as local_error:
        local_reason = str(local_error)
    try:
        import datasets

        log.info("%s not found locally (%s); trying the Hugging Face Hub (%s)",
                 config.name, local_reason, config.hub_id)
        return datasets.load_dataset(config.hub_id), f"hf://{config.hub_id}"
    except Exception as hub_error:  # noqa: BLE001 - any Hub failure means "not available"
        hub_reason = f"{type(hub_error).__name__}: {str(hub_error).splitlines()[0] if str(hub_error) else ''}"
    raise DataError(
        f"dataset {config.name} is not available: no IDX files in {directory} ({local_reason}) and the "
        f"Hugging Face Hub id '{config.hub_id}' could not be loaded ({hub_reason}). Install the Debian "
        f"package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or point "
        f"{config.local_dir_env} at a directory with the IDX files, or go online for the Hub.")


def _to_arrays(split) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 from a Dataset with image/label columns."""
    columns = split.with_format("numpy")[:]
    images = columns["image"]
    if images.dtype == object:  # images of varying size, or PIL images
        images = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    return np.asarray(images, dtype=np.uint8), np.asarray(columns["label"], dtype=np.int64)


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0)
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()


def make_splits(dataset, config: SplitConfig) -> Splits:
    """Cut the seeded, disjoint owner/attacker/benign/test splits from a ``DatasetDict``."""
    train_x, train_y = _to_arrays(dataset["train"])
    test_x, test_y = _to_arrays(dataset["test"])
    needed = config.owner + config.attacker + config.benign
    if needed > len(train_y):
        raise DataError(f"splits need {needed} training images but the dataset has {len(train_y)}")
    if config.test > len(test_y):
        raise DataError(f"split test needs {config.test} images but the dataset has {len(test_y)}")
    rng = np.random.default_rng(config.seed)
    train_order = rng.permutation(len(train_y))
    test_order = np.sort(rng.permutation(len(test_y))[: config.test])
    owner = np.sort(train_order[: config.owner])
    attacker = np.sort(train_order[config.owner: config.owner + config.attacker])
    benign = np.sort(train_order[config.owner + config.attacker: needed])
    digest = hashlib.sha256()
    for part in (owner, attacker, benign, test_order):
        digest.update(part.astype(np.int64).tobytes())
    return Splits(
        owner_x=_as_tensor(train_x[owner]), owner_y=torch.from_numpy(train_y[owner]),
        attacker_x=_as_tensor(train_x[attacker]), benign_x=_as_tensor(train_x[benign]),
        test_x=_as_tensor(test_x[test_order]), test_y=torch.from_numpy(test_y[test_order]),
        fingerprint=digest.hexdigest(),
        class_names=tuple(dataset["train"].features["label"].names),
    )
