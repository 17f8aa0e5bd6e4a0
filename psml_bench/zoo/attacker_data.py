"""Where the attacker's pool comes from: the zoo's attacker split, or a natural out-of-distribution source.

A grid's ``attacker_data`` names the source (docs/protocol.md, section 5.1). ``in-distribution`` is
the zoo's ``attacker`` split, as before the parameter existed. The other sources are natural images
shipped inside a Python package, never downloaded; each is turned into a pool of the zoo's input
shape, floats in [0, 1] (the zoo's models normalise their inputs themselves, as they do the split's):

- ``digits``: scikit-learn's bundled copy of the UCI optical recognition of handwritten digits test
  set (``sklearn.datasets.load_digits``): 1,797 images of 8 x 8 pixels with 17 grey levels (0-16), ink
  high, scanned from forms filled in by 43 people (E. Alpaydin and C. Kaynak, 1998; UCI's licence
  CC BY 4.0; scikit-learn is BSD-3-Clause). Each image is divided by 16 and resized bilinearly to the
  zoo's height and width, its grey level repeated over the zoo's channels. The pool has 1,797 inputs
  whatever the zoo, so a cell's budget may not exceed it.
- ``photos``: random square crops of ten natural photographs bundled in scikit-image's wheel
  (``skimage.data``; each image's licence is in its function's docstring: public domain, CC0 or
  no known copyright restrictions for all ten; scikit-image is BSD-3-Clause). A crop's photo is
  drawn uniformly among :data:`PHOTOS`, its side uniformly between 1/8 and 1/2 of the photo's
  shorter side, its position uniformly; it is resized to the zoo's height and width by averaging a
  4 x 4 grid of bilinear samples per output pixel (``torchvision.ops.roi_align``), in the photo's
  luminance (``0.2125 R + 0.7154 G + 0.0721 B``) for a one-channel zoo, in RGB for a three-channel
  one. The pool has as many crops as the zoo's attacker split, drawn with
  ``numpy.random.default_rng(0)``: the same pool for every cell of a zoo.

Benign clients keep drawing from the in-distribution split whatever the attacker's source.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..contract.errors import ConfigError
from .model_zoo import Zoo

IN_DISTRIBUTION = "in-distribution"
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field", "brick", "grass",
          "gravel")
"""The bundled ``skimage.data`` photographs the ``photos`` source crops: every one is in the wheel and, by its
function's docstring, public domain, CC0 or without known copyright restrictions."""
PHOTO_SEED = 0
CROP_SAMPLES = 4
DIGIT_LEVELS = 16.0


@dataclass(frozen=True)
class PoolSource:
    """An out-of-distribution pool source: the package it needs and how it makes a pool."""

    name: str
    package: str
    """The importable module it needs."""
    install: str
    """The command that installs that module."""
    size: int | None
    """Inputs in its pool (None: as many as the zoo's attacker split)."""
    make: Callable[[tuple[int, ...], int], torch.Tensor]
    """``(input_shape, attacker split size) -> pool`` of shape ``(N, *input_shape)`` in [0, 1]."""


def _digits(input_shape: tuple[int, ...], split_size: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / DIGIT_LEVELS).unsqueeze(1)
    channels, height, width = input_shape
    resized = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return resized.clamp(0.0, 1.0).expand(-1, channels, -1, -1).contiguous()


def _photo(name: str, channels: int) -> torch.Tensor:
    """One bundled photograph as a ``(channels, H, W)`` float tensor in [0, 1]."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    if channels == 1:
        image = (image @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32))[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _photos(input_shape: tuple[int, ...], split_size: int) -> torch.Tensor:
    from torchvision.ops import roi_align

    channels, height, width = input_shape
    rng = np.random.default_rng(PHOTO_SEED)
    which = rng.integers(len(PHOTOS), size=split_size)
    pool = torch.empty(split_size, channels, height, width)
    for index, name in enumerate(PHOTOS):
        rows = np.flatnonzero(which == index)
        if not len(rows):
            continue
        photo = _photo(name, channels)
        short = min(photo.shape[1:])
        side = rng.uniform(short / 8, short / 2, size=len(rows))
        left = rng.uniform(0, photo.shape[2] - side)
        top = rng.uniform(0, photo.shape[1] - side)
        boxes = torch.from_numpy(np.stack([np.zeros(len(rows)), left, top, left + side, top + side], axis=1)).float()
        crops = roi_align(photo.unsqueeze(0), boxes, output_size=(height, width), spatial_scale=1.0,
                          sampling_ratio=CROP_SAMPLES, aligned=True)
        pool[torch.from_numpy(rows)] = crops.clamp(0.0, 1.0)
    return pool


SOURCES: dict[str, PoolSource] = {
    "digits": PoolSource("digits", "sklearn", "pip install scikit-learn", 1797, _digits),
    "photos": PoolSource("photos", "skimage", "pip install scikit-image", None, _photos),
}


def check_attacker_data(name: object) -> PoolSource | None:
    """The source ``name`` names (None for ``in-distribution``).

    Raises:
        ConfigError: an unknown source (with the known ones), or one whose package is not installed.
    """
    if name == IN_DISTRIBUTION:
        return None
    if not isinstance(name, str) or name not in SOURCES:
        known = [IN_DISTRIBUTION, *SOURCES]
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown attacker_data {name!r}{hint}; available: {', '.join(known)}")
    source = SOURCES[name]
    if importlib.util.find_spec(source.package) is None:
        raise ConfigError(f"attacker_data '{name}' needs the Python package '{source.package}', which is not "
                          f"installed: {source.install}")
    return source


def attacker_pool(zoo: Zoo, name: str) -> torch.Tensor:
    """The attacker's pool for a cell on ``zoo`` whose ``attacker_data`` is ``name``."""
    source = check_attacker_data(name)
    split = zoo.splits["attacker_x"]
    if source is None:
        return split
    return source.make(tuple(zoo.input_shape), len(split))
