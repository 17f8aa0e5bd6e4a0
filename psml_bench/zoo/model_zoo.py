"""The opened zoo: a built zoo's card, weights and splits, its menu and its Pareto frontier.

A :class:`Zoo` reads what :func:`psml_bench.zoo.build.build_zoo` wrote into
``<cache>/zoos/<name>-<hash>/`` and routes on one latency profile; it never trains. The
serving system needs only this module.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..common.files import content_hash, validate
from ..contract.errors import ConfigError, PsmlError
from .profiling import load_profile, reference_profile_path, routing_latencies

log = logging.getLogger(__name__)


class ZooModel(torch.nn.Module):
    """A timm network behind the zoo's input normalisation: raw [0, 1] inputs in, logits out."""

    def __init__(self, arch: str, kwargs: dict[str, Any], in_chans: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], input_size: int | None = None, *,
                 pretrained: bool = False, pretrained_file: str | None = None):
        """Create the network.

        Args:
            arch: timm architecture (optionally with a pretrained tag, ``resnet18.a1_in1k``).
            kwargs: keyword arguments for ``timm.create_model``.
            in_chans: input channels.
            num_classes: output classes.
            mean: per-channel mean of the input normalisation.
            std: per-channel std of the input normalisation.
            input_size: resize inputs to this square side first (bilinear), if given.
            pretrained: start from timm's published weights (downloaded by timm if needed).
            pretrained_file: with ``pretrained``, a local copy of those weights to load instead.
        """
        super().__init__()
        import timm

        overlay = {"file": pretrained_file} if pretrained and pretrained_file else None
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, in_chans):
                raise ConfigError(f"the zoo's preprocess.{name} has {len(values)} values for {in_chans}-channel "
                                  f"inputs (give 1 or {in_chans})")
        try:
            self.net = timm.create_model(arch, pretrained=pretrained, pretrained_cfg_overlay=overlay,
                                         in_chans=in_chans, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as exc:  # timm's way to reject an option
            raise ConfigError(f"timm architecture '{arch}' rejects the zoo config's model options "
                              f"{dict(kwargs)!r} (models.kwargs): {type(exc).__name__}: {exc}") from None
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < min(x.shape[-2:]))
        return self.net((x - self.mean) / self.std)


def pareto_frontier(accuracies: Sequence[float], latencies: Sequence[float]) -> list[int]:
    """Indices of models not dominated in (higher accuracy, lower latency), fastest first.

    A model is dominated when another is at least as accurate and at least as fast, and strictly
    better in one of the two.
    """
    frontier = []
    for i, (acc_i, lat_i) in enumerate(zip(accuracies, latencies)):
        dominated = any(
            acc_j >= acc_i and lat_j <= lat_i and (acc_j > acc_i or lat_j < lat_i)
            for j, (acc_j, lat_j) in enumerate(zip(accuracies, latencies)) if j != i)
        if not dominated:
            frontier.append(i)
    return sorted(frontier, key=lambda i: (latencies[i], accuracies[i]))


def service_ranges(accuracies: Sequence[float], latencies: Sequence[float], accuracy_margin: float,
                   latency_margin: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The spec ranges the owner advertises: the menu's span widened by the config's margins."""
    def down(x: float) -> float:  # to 2 decimals, ignoring float noise such as 0.96000000001
        return math.floor(round(x * 100, 6)) / 100

    def up(x: float) -> float:
        return math.ceil(round(x * 100, 6)) / 100

    acc_low = max(0.0, down(min(accuracies) - accuracy_margin))
    acc_high = min(1.0, up(max(accuracies) + accuracy_margin))
    lat_low, lat_high = down(min(latencies) / (1 + latency_margin)), up(max(latencies) * (1 + latency_margin))
    return (acc_low, acc_high), (max(lat_low, 0.01), lat_high)


def reference_profile(name: str | None) -> Path | None:
    """The committed reference profile ``name``, or None (with a warning) if there is none."""
    if not name:
        return None
    path = reference_profile_path(name)
    if path.is_file():
        return path
    log.warning("reference profile %s is missing; routing on the latencies measured at build time", path)
    return None


def mean_disagreement(predictions: Mapping[str, torch.Tensor], model_ids: Sequence[str]) -> float | None:
    """Mean over every pair of ``model_ids`` of the fraction of inputs on which the two models' argmax differ.

    ``predictions`` holds each model's outputs (probabilities or logits) on the same inputs; None
    when fewer than two models are named (no pair).
    """
    labels = [predictions[m].argmax(1) for m in model_ids]
    pairs = list(itertools.combinations(labels, 2))
    if not pairs:
        return None
    return sum(float((a != b).float().mean()) for a, b in pairs) / len(pairs)


def disagreement(predictions: Mapping[str, torch.Tensor], model_ids: Sequence[str],
                 frontier: Sequence[str]) -> dict[str, float | None]:
    """A zoo's mean pairwise disagreement over all its models' pairs and over its frontier models' pairs
    (rounded to 6 decimals, as a zoo card stores it)."""
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 6)

    return {"all_models": rounded(mean_disagreement(predictions, model_ids)),
            "frontier": rounded(mean_disagreement(predictions, frontier))}


@dataclass(frozen=True)
class MenuEntry:
    """What the serving system knows of one model: its accuracy and routing latency."""

    id: str
    accuracy: float
    latency_ms: float


class Zoo:
    """A built zoo opened for serving and scoring, routed on one latency profile."""

    def __init__(self, directory: Path, profile_path: Path | None = None):
        self.directory = Path(directory)
        card_path = self.directory / "card.json"
        try:
            self.card: dict[str, Any] = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise PsmlError(f"{self.directory} holds no built zoo (no card.json); run `psml-bench zoo build`") from None
        validate(self.card, "card", str(card_path))
        ids = [m["id"] for m in self.card["models"]]
        service = self.card["service"]
        if profile_path is None:
            profile_path = reference_profile(service["reference_profile"])
        self.profile_path: Path | None = Path(profile_path) if profile_path is not None else None
        if profile_path is None:
            self.profile_name = "measured"
            latencies = {m["id"]: m["latency"]["p50_ms"] for m in self.card["models"]}
        else:
            self.profile_name = Path(profile_path).name
            latencies = routing_latencies(load_profile(Path(profile_path)), ids, str(profile_path))
        self.menu: tuple[MenuEntry, ...] = tuple(
            MenuEntry(m["id"], m["accuracy"], latencies[m["id"]]) for m in self.card["models"])
        accuracies = [e.accuracy for e in self.menu]
        routing = [e.latency_ms for e in self.menu]
        self.frontier: tuple[str, ...] = tuple(self.menu[i].id for i in pareto_frontier(accuracies, routing))
        # the advertised ranges follow the menu the service routes on
        self.accuracy_range, self.latency_range_ms = service_ranges(
            accuracies, routing, service["accuracy_margin"], service["latency_margin"])
        self._models: dict[tuple[str, str], ZooModel] = {}

    @property
    def name(self) -> str:
        return self.card["zoo"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.card["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])

    @property
    def card_hash(self) -> str:
        """Content hash of the card: changes whenever any weight, accuracy or split changes."""
        return content_hash(self.card)

    def role(self, role: str) -> str:
        """Resolve a victim role ``rank:k`` to a model id: the k-th most accurate frontier model."""
        ranked = sorted(self.frontier, key=lambda i: -self.entry(i).accuracy)
        try:
            kind, value = role.split(":")
            rank = int(value)
            if kind != "rank" or not 1 <= rank <= len(ranked):
                raise ValueError
        except ValueError:
            raise ConfigError(f"victim role '{role}' is invalid: expected rank:k with 1 <= k <= "
                              f"{len(ranked)} (the zoo's frontier has {len(ranked)} models)") from None
        return ranked[rank - 1]

    def entry(self, model_id: str) -> MenuEntry:
        return next(e for e in self.menu if e.id == model_id)

    def model(self, model_id: str, device: torch.device | str = "cpu") -> ZooModel:
        """The model with trained weights on ``device``, loaded once per device and kept."""
        key = (model_id, str(device))
        if key not in self._models:
            spec = next(m for m in self.card["models"] if m["id"] == model_id)
            model = ZooModel(spec["arch"], spec["kwargs"], self.input_shape[0], self.num_classes,
                             self.card["preprocess"]["mean"], self.card["preprocess"]["std"], spec.get("input_size"))
            model.load_state_dict(load_file(str(self.directory / "weights" / f"{model_id}.safetensors")))
            self._models[key] = model.eval().to(device)
        return self._models[key]

    @cached_property
    def splits(self) -> dict[str, torch.Tensor]:
        """owner_x/owner_y/attacker_x/attacker_y/benign_x/test_x/test_y tensors."""
        return load_file(str(self.directory / "splits.safetensors"))

    @cached_property
    def test_predictions(self) -> dict[str, torch.Tensor]:
        """Each model's softmax outputs on the test split."""
        return load_file(str(self.directory / "predictions.safetensors"))

    @cached_property
    def disagreement(self) -> dict[str, float | None]:
        """Mean pairwise disagreement on the test split: ``all_models`` (every pair of models) and ``frontier``
        (every pair of frontier models; None with fewer than two).

        From the card when it records them for the frontier this zoo routes on; otherwise (a zoo built
        before the card had them, or another profile's frontier) computed from the stored predictions.
        """
        stored = self.card.get("disagreement")
        if stored is not None and list(self.card["frontier"]) == list(self.frontier):
            return dict(stored)
        return disagreement(self.test_predictions, [m["id"] for m in self.card["models"]], self.frontier)
