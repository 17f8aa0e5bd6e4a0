"""The lock: the weights and accuracies a leaderboard was computed with, per zoo, and a built zoo checked against it.

Every run writes the lock into its leaderboard directory, in ``zoos.json``
(:mod:`psml_bench.report.zoo_summary`): per zoo its config hash and the build environment its card
records (kernels, CPU model, kernel capability, torch build, threads), and per model the sha256 of
its weights and its test accuracy. The committed ``leaderboard/zoos.json`` is therefore the lock of
the committed leaderboard: ``psml-bench zoo build`` says per model whether a build matches it, and
``psml-bench run`` says, before computing, why a zoo differs from the lock in its output directory
(:mod:`psml_bench.bench.preflight`). A ``zoos.json`` written before the lock existed has no hashes;
it still renders, and checking against it says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..contract.errors import ConfigError

LOCK_FILE = "zoos.json"
"""The file of a leaderboard directory that holds each zoo's summary and lock."""

ENVIRONMENT_FIELDS = {"kernels": "kernels", "cpu": "CPU", "training_capability": "training kernel capability",
                      "cpu_capability": "CPU kernel capability", "torch_build": "torch build", "torch": "torch",
                      "threads": "threads", "device": "device"}
"""The fields of a card's build environment that can explain other weights, in the order they are told."""

UNSTABLE_FIELDS = ("built_at",)
"""Build-environment fields left out of the lock: they change with every rebuild, whatever the weights."""


def checkout_lock() -> Path:
    """The lock of the committed leaderboard beside this installation: ``<checkout>/leaderboard/zoos.json``."""
    return Path(__file__).resolve().parents[2] / "leaderboard" / LOCK_FILE


@dataclass(frozen=True)
class ModelLock:
    """One model as a lock records it."""

    id: str
    weights_sha256: str | None
    accuracy: float | None


@dataclass(frozen=True)
class ZooLock:
    """One zoo as a lock records it: its config hash, its recorded build environment and its models."""

    zoo: str
    config_hash: str | None
    environment: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[ModelLock, ...] = ()

    @classmethod
    def of_card(cls, card: Mapping[str, Any]) -> "ZooLock":
        """The lock of a zoo card (or of a zoo summary's card, which keeps the same fields)."""
        environment = {k: v for k, v in card.get("environment", {}).items() if k not in UNSTABLE_FIELDS}
        if "build" in card:  # a GPU build: its device and precision, not the CPU's kernels
            environment["build"] = card["build"]
        return cls(str(card.get("zoo", "")), card.get("config_hash"), environment,
                   tuple(ModelLock(m["id"], m.get("weights_sha256"), m.get("accuracy")) for m in card["models"]))

    @property
    def hashed(self) -> bool:
        """Whether the lock records weights hashes (a ``zoos.json`` written before the lock has none)."""
        return any(m.weights_sha256 for m in self.models)

    def model(self, model_id: str) -> ModelLock | None:
        return next((m for m in self.models if m.id == model_id), None)


def lock_fields(card: Mapping[str, Any]) -> dict[str, Any]:
    """What ``zoos.json`` keeps of a card for the lock, at the zoo's level (models keep ``weights_sha256``)."""
    lock = ZooLock.of_card(card)
    fields: dict[str, Any] = {}
    if lock.config_hash:
        fields["config_hash"] = lock.config_hash
    if lock.environment:
        fields["build_environment"] = dict(lock.environment)
    return fields


def card_of_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The card-like fields of one zoo of ``zoos.json`` that a lock reads (missing in one written before it)."""
    card: dict[str, Any] = {"zoo": data.get("name", ""), "models": [
        {k: m[k] for k in ("id", "arch", "params", "macs", "accuracy", "weights_sha256") if k in m}
        for m in data.get("models", [])]}
    if "config_hash" in data:
        card["config_hash"] = data["config_hash"]
    environment = dict(data.get("build_environment", {}))
    build = environment.pop("build", None)
    if environment:
        card["environment"] = environment
    if build is not None:
        card["build"] = build
    return card


def read_locks(path: Path) -> dict[str, ZooLock]:
    """The locks of a ``zoos.json``, by the name its grid gives each zoo.

    Raises:
        ConfigError: the file is missing, unreadable or not a leaderboard's zoo summaries.
    """
    try:
        data = json.loads(Path(path).read_text())
        return {spec: ZooLock.of_card(card_of_summary(summary)) for spec, summary in data.items()}
    except FileNotFoundError:
        raise ConfigError(f"lock {path} does not exist") from None
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ConfigError(f"lock {path} is not a leaderboard's zoos.json ({type(exc).__name__}: {exc})") from None


def lock_of_zoo(locks: Mapping[str, ZooLock], zoo: str) -> ZooLock | None:
    """The lock of the zoo named ``zoo`` (by the grid's name for it, else by the card's name), or None."""
    return locks.get(zoo) or next((lock for lock in locks.values() if lock.zoo == zoo), None)


def changed_models(card: Mapping[str, Any], lock: ZooLock) -> list[str]:
    """The models of ``card`` whose weights (or zoo config) differ from ``lock``'s; assumes ``lock.hashed``."""
    if lock.config_hash and lock.config_hash != card.get("config_hash"):
        return [m["id"] for m in card["models"]]
    return [m["id"] for m in card["models"]
            if (locked := lock.model(m["id"])) is None or locked.weights_sha256 != m.get("weights_sha256")]


def why_differs(card: Mapping[str, Any], lock: ZooLock) -> str:
    """Why a zoo's weights differ from its lock: its config, else the recorded build environments, in one clause."""
    if lock.config_hash and lock.config_hash != card.get("config_hash"):
        return (f"its zoo config changed (config hash {str(card.get('config_hash'))[:12]}, the lock's "
                f"{lock.config_hash[:12]})")
    here = ZooLock.of_card(card).environment
    differ = [key for key in (*ENVIRONMENT_FIELDS, "build") if lock.environment.get(key) != here.get(key)]
    if not differ:
        recorded = _environment_text(here, [key for key in ENVIRONMENT_FIELDS if key in here])
        return (f"the recorded build environments agree ({recorded}), so the training code or an unrecorded "
                "library changed")
    return (f"the lock's zoo was built with {_environment_text(lock.environment, differ)}; this one with "
            f"{_environment_text(here, differ)}")


def match_lines(card: Mapping[str, Any], locks: Mapping[str, ZooLock] | None, source: str) -> list[str]:
    """``zoo build``'s report: per model, "matches the committed leaderboard: yes/no" against ``locks``.

    ``locks`` is None when no lock was found at ``source``; then one line says so.
    """
    name = card["zoo"]
    if locks is None:
        return [f"matches the committed leaderboard: unknown (no lock at {source}: run from a checkout, or pass "
                "--lock PATH to a leaderboard's zoos.json)"]
    lock = lock_of_zoo(locks, name)
    if lock is None:
        return [f"matches the committed leaderboard: unknown (zoo {name} is not in the lock {source}, which holds "
                f"{', '.join(sorted({entry.zoo for entry in locks.values()})) or 'no zoo'})"]
    if not lock.hashed:
        return [f"matches the committed leaderboard: unknown ({source} records no weights hashes: it was written "
                "before the lock; a run of its grid writes them)"]
    changed = set(changed_models(card, lock))
    lines = [f"against the lock {source}:"]
    for model in card["models"]:
        locked = lock.model(model["id"])
        if model["id"] not in changed:
            lines.append(f"  {model['id']}: matches the committed leaderboard: yes")
        elif locked is None:
            lines.append(f"  {model['id']}: matches the committed leaderboard: no (not in the lock)")
        else:
            lines.append(f"  {model['id']}: matches the committed leaderboard: no (weights "
                         f"{str(model.get('weights_sha256'))[:12]}, accuracy {model.get('accuracy')}; the lock's "
                         f"{str(locked.weights_sha256)[:12]}, accuracy {locked.accuracy})")
    if changed:
        lines.append(f"why: {why_differs(card, lock)}; the committed cells are not reused with this zoo")
    return lines


def _shown(value: Any) -> str:
    if value is None:
        return "unrecorded"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} {v}" for k, v in value.items()) + "}"
    return str(value)


def _environment_text(environment: Mapping[str, Any], keys: list[str]) -> str:
    labels = {**ENVIRONMENT_FIELDS, "build": "GPU build"}
    return ", ".join(f"{labels[key]} {_shown(environment.get(key))}" for key in keys)
