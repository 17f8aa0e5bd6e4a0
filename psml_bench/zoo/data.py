"""Datasets: local files or the Hugging Face Hub, per-zoo image preprocessing, and the fixed splits.

The zoo config names the dataset; this module turns it into a Hugging Face
``datasets.DatasetDict`` (``train``/``test`` with ``image`` and ``label`` columns) and cuts the
seeded, disjoint benchmark splits from it:

- ``owner``: trains the zoo (from ``train``),
- ``attacker``: the unlabeled pool handed to attacks (from ``train``, disjoint from ``owner``),
- ``benign``: inputs of the benign workload (from ``train``, disjoint from both),
- ``test``: scoring only (from ``test``).

Two dataset formats exist. ``idx``: Fashion-MNIST's IDX files in a local directory, else the
Hub. ``hf``: any image-classification dataset of the Hub (``uoft-cs/cifar10``,
``frgfm/imagenette``), read from a local copy (a directory of parquet files as the Hub stores
them, a ``save_to_disk`` directory, or ``SPLIT=FILE.parquet`` pairs) given on the command line or
in an environment variable, else from the Hub by id. Columns and split names are renamed to
``image``/``label`` and ``train``/``test`` as the config says, so the rest of psml-bench never
sees the dataset's own names. Resizing, cropping and colour channels are config
(:class:`ImageConfig`), applied once when the splits are cut.
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

from ..contract.errors import DataError

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
    """Where a zoo's dataset comes from (the ``[dataset]`` table of a zoo config).

    Attributes:
        name: the dataset's name, for messages and the zoo card.
        hub_id: Hugging Face Hub id, tried when no local copy is found.
        local_dir: default local directory ("" for none).
        local_dir_env: environment variable that can name the local copy.
        format: ``idx`` (Fashion-MNIST IDX files) or ``hf`` (a Hugging Face ``datasets`` dataset).
        hub_config: the Hub dataset's configuration (subset) name, if it has several.
        hub_revision: the Hub branch or commit (``refs/convert/parquet`` for the parquet export).
        hub_data_dir: the folder of the Hub repository (or of a local copy) that holds this subset.
        image_column: the dataset's image column.
        label_column: the dataset's label column (a ``ClassLabel`` or integers).
        train_split: the dataset's split that owner, attacker and benign are cut from.
        test_split: the dataset's split that test is cut from.
        num_classes: number of classes, declared so a zoo can be planned and profiled without data.
    """

    name: str
    hub_id: str
    local_dir: str
    local_dir_env: str
    format: str = "idx"
    hub_config: str | None = None
    hub_revision: str | None = None
    hub_data_dir: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"
    num_classes: int | None = None


@dataclass(frozen=True)
class ImageConfig:
    """Per-zoo image preprocessing (the ``[preprocess]`` table, beyond mean and std).

    All fields unset keeps the images as the dataset stores them (Fashion-MNIST's 28x28 arrays).

    Attributes:
        channels: 1 (greyscale) or 3 (RGB); images are converted to it.
        resize: resize so that the shorter side has this many pixels (keeping the aspect ratio).
        size: centre-crop to a square of this side; required when images differ in size.
        interpolation: ``bilinear`` or ``bicubic`` (antialiased, PIL).
    """

    channels: int | None = None
    resize: int | None = None
    size: int | None = None
    interpolation: str = "bicubic"

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.channels, self.resize, self.size))

    def input_shape(self) -> tuple[int, int, int] | None:
        """The (C, H, W) every preprocessed image has, when the config fixes it."""
        if self.channels is None or self.size is None:
            return None
        return (self.channels, self.size, self.size)


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
    """The four benchmark splits as float tensors in [0, 1], shape (N, C, H, W), and their labels.

    ``attacker_y`` never reaches an attack: the harness uses it to score the benign clients, who
    draw their inputs from the attacker's pool split (protocol section 4).
    """

    owner_x: torch.Tensor
    owner_y: torch.Tensor
    attacker_x: torch.Tensor
    attacker_y: torch.Tensor
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


def _load_idx(config: DatasetConfig, local: str | None):
    env_dir = os.environ.get(config.local_dir_env)
    directory = Path(local or env_dir or config.local_dir)
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
        hub_reason = _first_line(hub_error)
    raise DataError(
        f"dataset {config.name} is not available: no IDX files in {directory} ({local_reason}) and the "
        f"Hugging Face Hub id '{config.hub_id}' could not be loaded ({hub_reason}). Install the Debian "
        f"package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or point "
        f"{config.local_dir_env} at a directory with the IDX files, or go online for the Hub.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _split_of(path: Path, root: Path, splits: tuple[str, ...]) -> str | None:
    """The split a parquet file belongs to, by the Hub's naming: ``train-0000-of-0001.parquet``
    or a ``train/`` folder (the parquet export), relative to ``root``."""
    parts = path.relative_to(root).parts
    for split in splits:
        if any(part == split for part in parts[:-1]):
            return split
        name = parts[-1]
        if name == f"{split}.parquet" or name.startswith((f"{split}-", f"{split}_", f"{split}.")):
            return split
    return None


def _parquet_files(location: str, config: DatasetConfig) -> dict[str, list[str]]:
    """Parquet files per split from ``SPLIT=FILE[,SPLIT=FILE...]`` or a directory (searched recursively)."""
    splits = (config.train_split, config.test_split)
    if "=" in location:
        files: dict[str, list[str]] = {}
        for item in location.split(","):
            split, _, file = item.partition("=")
            if not Path(file).is_file():
                raise DataError(f"dataset {config.name}: data file {file} (split {split}) does not exist")
            files.setdefault(split.strip(), []).append(file)
        return files
    root = Path(location)
    if config.hub_data_dir and (root / config.hub_data_dir).is_dir():
        root = root / config.hub_data_dir
    files = {}
    for path in sorted(root.rglob("*.parquet")):
        split = _split_of(path, root, splits)
        if split is not None:
            files.setdefault(split, []).append(str(path))
    return files


def _load_local_hf(location: str, config: DatasetConfig):
    """Read a local copy: a ``save_to_disk`` directory, a folder of parquet files or SPLIT=FILE pairs."""
    import datasets

    path = Path(location)
    if "=" not in location:
        if not path.exists():
            raise DataError(f"dataset {config.name}: the local copy {location} does not exist")
        if path.is_file():
            raise DataError(f"dataset {config.name}: {location} is one file; give a directory or "
                            f"{config.train_split}=FILE.parquet,{config.test_split}=FILE.parquet")
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
    files = _parquet_files(location, config)
    if not files:
        raise DataError(f"dataset {config.name}: {location} holds no parquet files named after the splits "
                        f"{config.train_split} and {config.test_split} and no save_to_disk dataset")
    return datasets.load_dataset("parquet", data_files=files)


def _load_hf(config: DatasetConfig, local: str | None):
    import datasets

    env_value = os.environ.get(config.local_dir_env)
    if local:
        location, origin = local, "given with --data"
    elif env_value:
        location, origin = env_value, f"named by {config.local_dir_env}"
    elif config.local_dir and Path(config.local_dir).exists():
        location, origin = config.local_dir, "the config's dataset.local_dir"
    else:
        location, origin = None, ""
    if location:
        try:
            dataset = _load_local_hf(location, config)
        except DataError as error:
            raise DataError(f"{error} ({origin})") from None
        source = str(location)
    else:
        try:
            log.info("%s: no local copy given; loading %s from the Hugging Face Hub", config.name, config.hub_id)
            dataset = datasets.load_dataset(config.hub_id, name=config.hub_config, revision=config.hub_revision,
                                            data_dir=config.hub_data_dir)
        except Exception as hub_error:  # noqa: BLE001 - any Hub failure means "not available"
            raise DataError(
                f"dataset {config.name} is not available: no local copy was given and the Hugging Face Hub "
                f"id '{config.hub_id}' could not be loaded ({_first_line(hub_error)}); pass --data DIR (a "
                f"folder of the dataset's parquet files or a save_to_disk directory) or set "
                f"{config.local_dir_env}=DIR, or go online to download it from the Hub.") from None
        source = f"hf://{config.hub_id}" + (f"@{config.hub_revision}" if config.hub_revision else "") + (
            f"/{config.hub_data_dir}" if config.hub_data_dir else "")
    return _normalise(dataset, config, source), source


def _normalise(dataset, config: DatasetConfig, source: str):
    """Keep the train and test splits and the image and label columns, under psml-bench's names."""
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        raise DataError(f"dataset {config.name} from {source} has no named splits")
    wanted = (("train", config.train_split), ("test", config.test_split))
    for ours, theirs in wanted:
        if theirs not in dataset:
            raise DataError(f"dataset {config.name} from {source} has no split '{theirs}' "
                            f"(it has {', '.join(sorted(dataset))}); set dataset.{ours}_split in the zoo config")
    parts = {}
    for ours, theirs in wanted:
        split = dataset[theirs]
        for field_name, column in (("image_column", config.image_column), ("label_column", config.label_column)):
            if column not in split.column_names:
                raise DataError(f"dataset {config.name} from {source}: split '{theirs}' has no column "
                                f"'{column}' (it has {', '.join(split.column_names)}); set "
                                f"dataset.{field_name} in the zoo config")
        split = split.select_columns([config.image_column, config.label_column])
        if config.image_column != "image":
            split = split.rename_column(config.image_column, "image")
        if config.label_column != "label":
            split = split.rename_column(config.label_column, "label")
        parts[ours] = split
    return datasets.DatasetDict(parts)


def load_dataset(config: DatasetConfig, local: str | None = None):
    """Load a zoo's dataset: a local copy first, then the Hugging Face Hub.

    Args:
        config: the zoo config's dataset table.
        local: a local copy given on the command line; overrides ``config.local_dir_env`` and
            ``config.local_dir``. A directory, or (``hf`` format) ``SPLIT=FILE.parquet`` pairs
            separated by commas.

    Returns:
        ``(dataset_dict, source)``, source naming the directory or Hub id it came from.

    Raises:
        DataError: neither source is available; the message names both ways to supply it.
    """
    if config.format == "hf":
        return _load_hf(config, local)
    return _load_idx(config, local)


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


def prepare_image(image, config: ImageConfig) -> np.ndarray:
    """One image (PIL or array) as uint8 (H, W) or (H, W, C) after the zoo's preprocessing."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if config.channels is not None:
        image = image.convert("L" if config.channels == 1 else "RGB")
    resample = Image.Resampling.BICUBIC if config.interpolation == "bicubic" else Image.Resampling.BILINEAR
    if config.resize is not None:
        width, height = image.size
        scale = config.resize / min(width, height)
        image = image.resize((max(config.resize, round(width * scale)), max(config.resize, round(height * scale))),
                             resample=resample)
    if config.size is not None:
        width, height = image.size
        if min(width, height) < config.size:
            raise DataError(f"an image of {width}x{height} pixels is smaller than preprocess.size = "
                            f"{config.size}; set preprocess.resize >= {config.size} in the zoo config")
        left, top = (width - config.size) // 2, (height - config.size) // 2
        image = image.crop((left, top, left + config.size, top + config.size))
    return np.asarray(image, dtype=np.uint8)


def _to_prepared_arrays(split, indices: np.ndarray, config: ImageConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess only the rows ``indices`` of a Dataset with image/label columns."""
    subset = split.select(indices.tolist())
    images = []
    for batch in subset.iter(batch_size=512):
        images.extend(prepare_image(image, config) for image in batch["image"])
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataError(f"images differ in size after preprocessing ({', '.join(map(str, sorted(shapes)))}); "
                        "set preprocess.size in the zoo config")
    labels = np.asarray(list(subset["label"]), dtype=np.int64)
    return np.stack(images) if images else np.zeros((0, 1, 1), np.uint8), labels


def class_names(split) -> tuple[str, ...]:
    """Class names of a Dataset's ``label`` column (a ``ClassLabel``), else the label values."""
    feature = split.features["label"]
    if hasattr(feature, "names"):
        return tuple(feature.names)
    return tuple(str(i) for i in range(int(max(list(split["label"]))) + 1))


def make_splits(dataset, config: SplitConfig, image: ImageConfig | None = None) -> Splits:
    """Cut the seeded, disjoint owner/attacker/benign/test splits from a ``DatasetDict``.

    Args:
        dataset: ``train``/``test`` splits with ``image`` and ``label`` columns.
        config: split sizes and seed.
        image: the zoo's preprocessing; unset (or all fields unset) keeps images as stored.
    """
    train, test = dataset["train"], dataset["test"]
    n_train, n_test = train.num_rows, test.num_rows
    needed = config.owner + config.attacker + config.benign
    if needed > n_train:
        raise DataError(f"splits need {needed} training images but the dataset has {n_train}")
    if config.test > n_test:
        raise DataError(f"split test needs {config.test} images but the dataset has {n_test}")
    rng = np.random.default_rng(config.seed)
    train_order = rng.permutation(n_train)
    test_order = np.sort(rng.permutation(n_test)[: config.test])
    owner = np.sort(train_order[: config.owner])
    attacker = np.sort(train_order[config.owner: config.owner + config.attacker])
    benign = np.sort(train_order[config.owner + config.attacker: needed])
    digest = hashlib.sha256()
    for part in (owner, attacker, benign, test_order):
        digest.update(part.astype(np.int64).tobytes())
    if image is not None and image.active:
        used = np.sort(np.concatenate([owner, attacker, benign]))
        used_x, used_y = _to_prepared_arrays(train, used, image)
        position = {int(index): row for row, index in enumerate(used)}
        train_x, train_y = used_x, used_y
        owner_rows, attacker_rows, benign_rows = (np.array([position[int(i)] for i in part], dtype=np.int64)
                                                  for part in (owner, attacker, benign))
        test_x, test_y = _to_prepared_arrays(test, test_order, image)
        test_rows = np.arange(len(test_order))
    else:
        train_x, train_y = _to_arrays(train)
        test_x, test_y = _to_arrays(test)
        owner_rows, attacker_rows, benign_rows, test_rows = owner, attacker, benign, test_order
    return Splits(
        owner_x=_as_tensor(train_x[owner_rows]), owner_y=torch.from_numpy(train_y[owner_rows]),
        attacker_x=_as_tensor(train_x[attacker_rows]), attacker_y=torch.from_numpy(train_y[attacker_rows]),
        benign_x=_as_tensor(train_x[benign_rows]),
        test_x=_as_tensor(test_x[test_rows]), test_y=torch.from_numpy(test_y[test_rows]),
        fingerprint=digest.hexdigest(),
        class_names=class_names(train),
    )
