"""Hugging Face zoos (cifar10, imagenette): loading local copies in the Hub's format, preprocessing,
pretrained weights, GPU-scale warnings and profile choice, on tiny datasets written here.

The datasets written here have the same features and split names as the Hub datasets:
``uoft-cs/cifar10`` (``img`` Image, ``label`` ClassLabel; ``train``/``test``) and the parquet export
of ``frgfm/imagenette`` (``image``, ``label``; ``train``/``validation`` under ``160px/``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from psml_bench import ConfigError, DataError
from psml_bench.zoo.data import ImageConfig, SplitConfig, load_dataset, make_splits
from psml_bench.zoo.model_zoo import Zoo
from psml_bench.zoo.build import build_zoo
from psml_bench.zoo.config import load_zoo_config, zoo_directory
from psml_bench.zoo.profiles import measured_profile_path, resolve_profile
from psml_bench.cli import main

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENETTE_CLASSES = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                      "garbage truck", "gas pump", "golf ball", "parachute"]


@pytest.fixture
def offline(monkeypatch):
    """The real libraries in offline mode, as on a machine without network (fails fast, no retries)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _images(rng: np.random.Generator, n: int, sizes: list[tuple[int, int]], mode: str = "RGB"):
    from PIL import Image

    images = []
    for i in range(n):
        width, height = sizes[i % len(sizes)]
        channels = 3 if mode == "RGB" else 1
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        images.append(Image.fromarray(pixels if channels == 3 else pixels[..., 0]))  # RGB or L by shape
    return images


def _split(rng, n, image_column, class_names, sizes, mode="RGB"):
    import datasets

    features = datasets.Features({image_column: datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    return datasets.Dataset.from_dict(
        {image_column: _images(rng, n, sizes, mode), "label": [i % len(class_names) for i in range(n)]},
        features=features)


def write_cifar_like(root: Path, n_train: int = 120, n_test: int = 40) -> Path:
    """CIFAR-10 as the Hub stores it: plain_text/{train,test}-00000-of-00001.parquet, columns img/label."""
    rng = np.random.default_rng(0)
    (root / "plain_text").mkdir(parents=True, exist_ok=True)
    _split(rng, n_train, "img", CIFAR_CLASSES, [(32, 32)]).to_parquet(
        str(root / "plain_text" / "train-00000-of-00001.parquet"))
    _split(rng, n_test, "img", CIFAR_CLASSES, [(32, 32)]).to_parquet(
        str(root / "plain_text" / "test-00000-of-00001.parquet"))
    return root


def write_imagenette_like(root: Path, n_train: int = 60, n_val: int = 30) -> Path:
    """Imagenette's parquet export: 160px/{train,validation}/0000.parquet, images of varying size
    (some greyscale, as in ImageNet), columns image/label."""
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("validation", n_val)):
        (root / "160px" / split).mkdir(parents=True, exist_ok=True)
        part = _split(rng, n, "image", IMAGENETTE_CLASSES, [(40, 30), (30, 44), (36, 36)])
        if split == "train":
            import datasets

            grey = _split(rng, 4, "image", IMAGENETTE_CLASSES, [(32, 40)], mode="L")
            part = datasets.concatenate_datasets([part, grey])
        part.to_parquet(str(root / "160px" / split / "0000.parquet"))
    return root


def test_shipped_hf_configs_and_fmnist_hashes():
    cifar, imagenette = load_zoo_config("cifar10"), load_zoo_config("imagenette")
    assert cifar.dataset.hub_id == "uoft-cs/cifar10" and cifar.dataset.image_column == "img"
    assert cifar.image.input_shape() == (3, 32, 32) and cifar.build.gpu_scale
    assert imagenette.dataset.test_split == "validation" and imagenette.image.input_shape() == (3, 128, 128)
    assert any(m.pretrained for m in cifar.models) and any(not m.pretrained for m in cifar.models)
    # the fmnist zoos' config hashes (their cache directories, portable CPU builds) must not move
    assert load_zoo_config("fmnist").directory_name == "fmnist-92a2bb4e26e2"
    assert load_zoo_config("fmnist-compact").directory_name == "fmnist-compact-7788b0937b0d"
    assert load_zoo_config("fmnist-tiny").directory_name == "fmnist-tiny-6f70fcc08d2b"


def test_cifar_parquet_directory_loads_with_hub_names_mapped(tmp_path):
    import datasets

    root = write_cifar_like(tmp_path / "cifar")
    dataset, source = load_dataset(load_zoo_config("cifar10").dataset, str(root))
    assert source == str(root) and isinstance(dataset, datasets.DatasetDict)
    assert sorted(dataset) == ["test", "train"]
    assert dataset["train"].column_names == ["image", "label"] and dataset["train"].num_rows == 120
    assert dataset["train"].features["label"].names == CIFAR_CLASSES


def test_environment_variable_save_to_disk_and_split_files(tmp_path, monkeypatch):
    config = load_zoo_config("cifar10").dataset
    root = write_cifar_like(tmp_path / "cifar")
    monkeypatch.setenv("PSML_BENCH_CIFAR10_DATA", str(root))
    dataset, source = load_dataset(config)
    assert source == str(root) and dataset["test"].num_rows == 40

    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": dataset["train"].rename_column("image", "img"),
                          "test": dataset["test"].rename_column("image", "img")}).save_to_disk(str(saved))
    from_disk, _ = load_dataset(config, str(saved))
    assert from_disk["train"].num_rows == 120 and from_disk["train"].column_names == ["image", "label"]

    files = (f"train={root / 'plain_text' / 'train-00000-of-00001.parquet'},"
             f"test={root / 'plain_text' / 'test-00000-of-00001.parquet'}")
    from_files, source = load_dataset(config, files)
    assert source == files and from_files["test"].num_rows == 40


def test_imagenette_export_layout_resize_crop_and_channels(tmp_path):
    config = load_zoo_config("imagenette")
    root = write_imagenette_like(tmp_path / "imagenette")
    dataset, _ = load_dataset(config.dataset, str(root))
    assert dataset["train"].num_rows == 64 and dataset["test"].num_rows == 30  # test <- validation
    image = ImageConfig(channels=3, resize=20, size=16)
    splits = make_splits(dataset, SplitConfig(seed=0, owner=30, attacker=20, benign=14, test=30), image)
    assert splits.owner_x.shape == (30, 3, 16, 16) and splits.test_x.shape == (30, 3, 16, 16)
    assert splits.attacker_x.shape == (20, 3, 16, 16) and splits.benign_x.shape == (14, 3, 16, 16)
    assert splits.class_names == tuple(IMAGENETTE_CLASSES)
    assert 0.0 <= float(splits.owner_x.min()) and float(splits.owner_x.max()) <= 1.0
    again = make_splits(dataset, SplitConfig(seed=0, owner=30, attacker=20, benign=14, test=30), image)
    assert torch.equal(splits.owner_x, again.owner_x) and splits.fingerprint == again.fingerprint
    grey = make_splits(dataset, SplitConfig(seed=0, owner=30, attacker=20, benign=14, test=30),
                       ImageConfig(channels=1, resize=20, size=16))
    assert grey.owner_x.shape == (30, 1, 16, 16)
    with pytest.raises(DataError, match="differ in size"):
        make_splits(dataset, SplitConfig(seed=0, owner=30, attacker=20, benign=14, test=30), ImageConfig(channels=3))
    with pytest.raises(DataError, match="preprocess.resize"):
        make_splits(dataset, SplitConfig(seed=0, owner=30, attacker=20, benign=14, test=30),
                    ImageConfig(channels=3, size=64))


def test_no_data_anywhere_is_one_line_naming_both_ways(tmp_path, monkeypatch, offline):
    monkeypatch.delenv("PSML_BENCH_CIFAR10_DATA", raising=False)
    with pytest.raises(DataError) as error:
        load_dataset(load_zoo_config("cifar10").dataset)
    message = str(error.value)
    assert "\n" not in message
    assert "--data" in message and "PSML_BENCH_CIFAR10_DATA" in message and "uoft-cs/cifar10" in message


def test_zoo_build_without_data_exits_2_with_one_line(tmp_path, monkeypatch, offline, capsys):
    monkeypatch.delenv("PSML_TEST_HF_DATA", raising=False)
    config_path = tmp_path / "hf-tiny.toml"
    config_path.write_text(TINY_HF_ZOO)
    assert main(["--cache", str(tmp_path / "cache"), "-q", "zoo", "build", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--data" in error and "PSML_TEST_HF_DATA" in error
    assert not (tmp_path / "cache" / "zoos" / load_zoo_config(config_path).directory_name).exists()


def test_bad_local_copies_are_clear_errors(tmp_path, monkeypatch):
    config = load_zoo_config("cifar10").dataset
    with pytest.raises(DataError, match=r"local copy .*missing does not exist \(given with --data\)"):
        load_dataset(config, str(tmp_path / "missing"))
    monkeypatch.setenv("PSML_BENCH_CIFAR10_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="named by PSML_BENCH_CIFAR10_DATA"):
        load_dataset(config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet files named after the splits train and test"):
        load_dataset(config, str(tmp_path / "empty"))
    root = write_imagenette_like(tmp_path / "nette")
    with pytest.raises(DataError, match="has no split 'test' .*dataset.test_split"):
        load_dataset(config, str(root))  # imagenette files, cifar10 config: no test split
    with pytest.raises(DataError, match="has no column 'img' .*dataset.image_column"):
        load_dataset(config, f"train={next(root.rglob('train/*.parquet'))},"
                             f"test={next(root.rglob('validation/*.parquet'))}")


TINY_HF_ZOO = """
name = "hf-tiny"
description = "A CIFAR-like zoo for tests."

[dataset]
name = "cifar-like"
format = "hf"
hub_id = "no-such-org/no-such-dataset"
local_dir_env = "PSML_TEST_HF_DATA"
image_column = "img"
num_classes = 10

[splits]
seed = 0
owner = 60
attacker = 30
benign = 10
test = 40

[preprocess]
channels = 3
resize = 16
size = 16
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[service]
accuracy_margin = 0.05
latency_margin = 0.5

[build]
device = "cpu"
gpu_scale = true
expected_gpu_minutes = 1

[[models]]
id = "small"
arch = "test_resnet"
train = { samples = 60, epochs = 1, batch_size = 32, augment = "flip-crop", seed = 0 }

[[models]]
id = "finetuned"
arch = "test_resnet.r160_in1k"
pretrained = true
input_size = 24
train = { samples = 60, epochs = 1, batch_size = 32, augment = "flip", seed = 0 }
"""


def _publish_to_hf_cache(cache: Path, repo: str) -> dict[str, torch.Tensor]:
    """Put weights where the Hugging Face cache keeps a downloaded model.safetensors of ``repo``."""
    import timm
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(123)
        state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / revision / "model.safetensors"))
    return state


def test_tiny_hf_zoo_builds_records_init_and_serves(tmp_path, monkeypatch, offline, caplog):
    import huggingface_hub.constants

    config_path = tmp_path / "hf-tiny.toml"
    config_path.write_text(TINY_HF_ZOO)
    data = write_cifar_like(tmp_path / "data", n_train=110, n_test=50)
    config = load_zoo_config(config_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with caplog.at_level(logging.WARNING):
        directory = build_zoo(config, tmp_path / "cache", progress=False, data=str(data))
    assert "GPU-scale" in caplog.text and "on one GPU it takes about" in caplog.text
    card = json.loads((directory / "card.json").read_text())
    assert card["input_shape"] == [3, 16, 16] and card["num_classes"] == 10
    assert card["dataset"]["source"] == str(data)
    assert card["preprocess"]["channels"] == 3 and card["preprocess"]["resize"] == 16
    small, finetuned = card["models"]
    assert "init" not in small and "input_size" not in small and small["train"]["augment"] == "flip-crop"
    assert finetuned["input_size"] == 24
    # offline and not cached: trained from scratch, and the card says why
    assert finetuned["init"]["pretrained"] is False and "Hub" in finetuned["init"]["reason"]
    assert finetuned["init"]["weights"] == "timm/test_resnet.r160_in1k"
    assert "build" not in card  # built on the CPU
    zoo = Zoo(directory)
    model = zoo.model("finetuned")
    assert model.input_size == 24
    assert zoo.model("small")(zoo.splits["test_x"][:3]).shape == (3, 10)
    assert model(zoo.splits["test_x"][:3]).shape == (3, 10)
    probs = zoo.test_predictions["finetuned"]
    assert torch.allclose(probs[:3], torch.softmax(model(zoo.splits["test_x"][:3]), 1), atol=1e-5)

    # with the published weights in the local Hugging Face cache they are fine-tuned, even offline
    published = _publish_to_hf_cache(tmp_path / "hf-cache", "timm/test_resnet.r160_in1k")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    from psml_bench.zoo.build import PretrainedWeights

    model, init = PretrainedWeights().create(config.models[1], 3, 10, config.mean, config.std)
    assert init == {"pretrained": True, "weights": "timm/test_resnet.r160_in1k", "from": "cache"}
    first_conv = next(k for k in published if k.endswith("weight") and published[k].ndim == 4)
    assert torch.equal(model.net.state_dict()[first_conv], published[first_conv])
    assert model.net.get_classifier().out_features == 10


def test_zoo_show_plans_without_data(tmp_path, capsys):
    assert main(["--cache", str(tmp_path), "zoo", "show", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "cifar10: not built yet" in out and "uoft-cs/cifar10" in out and "3x32x32" in out
    for arch in ("test_resnet", "resnet18.a1_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k"):
        assert arch in out
    assert "no latency profile is committed for zoo cifar10" in out
    assert main(["--cache", str(tmp_path), "zoo", "show", "imagenette"]) == 0
    assert "3x128x128" in capsys.readouterr().out


def test_run_profile_choices_resolve_to_files(tmp_path, capsys):
    fmnist, cifar = load_zoo_config("fmnist-tiny"), load_zoo_config("cifar10")
    assert resolve_profile(fmnist, None, tmp_path) is None
    assert resolve_profile(fmnist, "reference", tmp_path).name == "fmnist-tiny.json"
    assert resolve_profile(fmnist, "cpu", tmp_path).name == "fmnist-tiny.json"  # measured on a CPU
    with pytest.raises(ConfigError, match="zoo profile fmnist-tiny --device cuda"):
        resolve_profile(fmnist, "cuda", tmp_path)
    with pytest.raises(ConfigError, match="no committed reference profile"):
        resolve_profile(cifar, "reference", tmp_path)
    measured = measured_profile_path(cifar, "cuda", tmp_path)
    measured.parent.mkdir(parents=True)
    measured.write_text("{}")
    assert resolve_profile(cifar, "cuda", tmp_path) == measured
    assert measured.name == f"{zoo_directory(cifar, tmp_path).name}-cuda.json"
    with pytest.raises(ConfigError, match="no such latency profile"):
        resolve_profile(cifar, str(tmp_path / "nope.json"), tmp_path)
    # the command line turns the choice into a path before any work, with one clear line
    assert main(["--cache", str(tmp_path), "-q", "run", "--grid", "tiny", "--profile", "cuda",
                 "--out", str(tmp_path / "lb")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "has no cuda latency profile" in error


def test_augmentation_and_mixed_precision_choice():
    from psml_bench.zoo.train import _augment, resolve_amp

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    flipped = _augment(x, "flip", torch.Generator().manual_seed(0))
    for original, out in zip(x, flipped):
        assert torch.equal(out, original) or torch.equal(out, original.flip(2))
    shifted = _augment(x, "flip-crop", torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal(shifted, _augment(x, "flip-crop", torch.Generator().manual_seed(0)))  # seeded
    assert not torch.equal(shifted, x)
    assert resolve_amp("auto", torch.device("cpu")) == "none" and resolve_amp("bf16", torch.device("cpu")) == "none"
    if torch.cuda.is_available():
        assert resolve_amp("auto", torch.device("cuda")) in ("bf16", "fp16")
