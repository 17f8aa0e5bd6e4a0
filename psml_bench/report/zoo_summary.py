"""A zoo's summary: the parts of its card the leaderboard reads, and its lock, kept as ``zoos.json`` beside the cells.

:func:`psml_bench.report.leaderboard.write_leaderboard` writes it from the opened zoos, so the page can
be rendered again later (:mod:`psml_bench.render`) where the zoo weights are not built. It also
carries the lock (:mod:`psml_bench.zoo.lock`): each zoo's config hash and recorded build environment,
and each model's weights sha256 beside its accuracy. A ``zoos.json`` written before the lock has none
of them and still renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..common.files import write_atomic
from ..contract.errors import ConfigError
from ..zoo.lock import LOCK_FILE, card_of_summary, lock_fields
from ..zoo.model_zoo import MenuEntry

ZOO_SUMMARIES = LOCK_FILE
MODEL_FIELDS = ("id", "arch", "params", "macs", "accuracy", "weights_sha256")
"""What a summary keeps of each model of the card (the last two are the lock's; older cards may lack them)."""


@dataclass(frozen=True)
class ZooSummary:
    """What the leaderboard reads of a built zoo, without its weights (duck-types
    :class:`psml_bench.zoo.model_zoo.Zoo`)."""

    name: str
    profile_name: str
    accuracy_range: tuple[float, float]
    latency_range_ms: tuple[float, float]
    frontier: tuple[str, ...]
    disagreement: dict[str, float | None] | None
    menu: tuple[MenuEntry, ...]
    card: dict[str, Any]

    def entry(self, model_id: str) -> MenuEntry:
        return next(e for e in self.menu if e.id == model_id)

    @classmethod
    def of(cls, zoo: Any) -> "ZooSummary":
        """The summary of an opened zoo (or of another summary)."""
        card = zoo.card
        kept = {"zoo": card.get("zoo", zoo.name), **{k: card[k] for k in ("config_hash", "environment", "build")
                                                      if k in card},
                "models": [{k: m[k] for k in MODEL_FIELDS if k in m} for m in card["models"]]}
        return cls(zoo.name, zoo.profile_name, tuple(zoo.accuracy_range), tuple(zoo.latency_range_ms),
                   tuple(zoo.frontier), dict(zoo.disagreement) if getattr(zoo, "disagreement", None) else None,
                   tuple(zoo.menu), kept)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "profile_name": self.profile_name, "accuracy_range": list(self.accuracy_range),
                "latency_range_ms": list(self.latency_range_ms), "frontier": list(self.frontier),
                "disagreement": self.disagreement, **lock_fields(self.card),
                "models": [self._model_json(model) for model in self.card["models"]]}

    def _model_json(self, model: Mapping[str, Any]) -> dict[str, Any]:
        entry = self.entry(model["id"])
        data = {**{k: model[k] for k in ("id", "arch", "params", "macs")}, "accuracy": entry.accuracy,
                "latency_ms": entry.latency_ms}
        return {**data, "weights_sha256": model["weights_sha256"]} if model.get("weights_sha256") else data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ZooSummary":
        models = data["models"]
        return cls(data["name"], data["profile_name"], tuple(data["accuracy_range"]), tuple(data["latency_range_ms"]),
                   tuple(data["frontier"]), data.get("disagreement"),
                   tuple(MenuEntry(m["id"], float(m["accuracy"]), float(m["latency_ms"])) for m in models),
                   card_of_summary(data))


def write_zoo_summaries(zoos: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``zoos.json``: each opened zoo's summary by the name the grid gives it (main zoo first)."""
    data = {spec: ZooSummary.of(zoo).to_json() for spec, zoo in zoos.items()}
    write_atomic(out_dir / ZOO_SUMMARIES, json.dumps(data, indent=1) + "\n")


def read_zoo_summaries(out_dir: Path) -> dict[str, ZooSummary]:
    """The zoo summaries a leaderboard directory holds, by the grid's name for each zoo."""
    path = out_dir / ZOO_SUMMARIES
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: this leaderboard was written before zoo summaries were kept; "
                          "rerun the grid (cached cells are reused) to write it") from None
    return {spec: ZooSummary.from_json(summary) for spec, summary in data.items()}
