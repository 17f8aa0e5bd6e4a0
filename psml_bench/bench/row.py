"""A cell's result row: one typed value from the cell to its stored file and results.csv, and back.

:class:`CellRow` is what :func:`psml_bench.bench.cell.run_cell` returns, what the runner stores as
``cells/<key>.json`` (:meth:`CellRow.as_dict`, sealed) and reads back (:meth:`CellRow.from_dict`), and what
the report turns into results.csv and the page. A field a row does not have is ``None``: a cell file written
before the field existed lacks it, and so does a row that has no such value by design (``attacker_data`` at
the in-distribution pool, ``attacker_identities`` and ``identities_detected`` for a single attacker, the
provenance until the executor adds it). A ``None`` field is left out of the stored file, so that a file read
and written again is byte for byte the one read. A number that was measured but has no value (a failed
cell's metrics, a latency with nothing answered) is NaN, never ``None`` or ``""``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

VOLATILE_FIELDS = ("wall_s",)
"""Fields that differ between two runs of the same cell (kept in the cell file, not in results.csv)."""


@dataclass(frozen=True)
class CellRow:
    """One cell's result. Counts (``queries``, ``fingerprint_queries``) are ints when counted and NaN in a
    row that failed before counting; every other metric is a float, NaN where it has no value."""

    # which cell (psml_bench.bench.cell.row_identity)
    zoo: str
    victim: str
    attack: str
    defense: str
    budget: int
    seed: int
    status: str
    """``ok`` or ``failed``."""
    victim_model: str | None = None
    attack_access: str | None = None
    load: float | None = None
    benign_clients: int | None = None
    attacker_rate: float | None = None
    latency_visible: bool | None = None
    attacker_data: str | None = None
    """The attacker pool's source; ``None`` at the in-distribution pool."""
    attacker_identities: int | None = None
    """Clients the attacker spreads over; ``None`` for one."""
    error: str | None = None
    # the surrogate
    surrogate_recipe: str | None = None
    """The recipe of the training that produced the returned weights ('' when the worker did not train them)."""
    fidelity: float | None = None
    accuracy: float | None = None
    accuracy_norm: float | None = None
    kl: float | None = None
    l1: float | None = None
    # the attack
    queries: float | None = None
    fingerprint_queries: float | None = None
    victim_hit_rate: float | None = None
    fingerprint_accuracy: float | None = None
    detected: float | None = None
    queries_to_detection: float | None = None
    eval_queries: float | None = None
    attacker_time_s: float | None = None
    attacker_work_s: float | None = None
    identities_detected: float | None = None
    # what the defense cost the benign clients
    goodput: float | None = None
    spec_goodput: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    refused_benign: float | None = None
    dropped_benign: float | None = None
    false_positive_clients: float | None = None
    benign_accuracy_drop: float | None = None
    perturbation: float | None = None
    latency_overhead: float | None = None
    benign_requests: float | None = None
    benign_repeats: float | None = None
    # the ownership test
    watermark_pairs: float | None = None
    watermark_agreement: float | None = None
    ownership_queries: float | None = None
    ownership_claimed: float | None = None
    innocent_claims: float | None = None
    innocent_agreement: float | None = None
    # sanity flags ('; '-joined) and the cell's wall clock
    flags: str | None = None
    wall_s: float | None = None
    # where it was computed (psml_bench.bench.cell.finish_row)
    cell_key: str | None = None
    profile: str | None = None
    grid: str | None = None
    psml_bench: str | None = None
    protocol: str | None = None
    git_commit: str | None = None
    torch: str | None = None
    timm: str | None = None
    device: str | None = None
    threads: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellRow:
        """The row a stored cell file (or a row written as a dict) holds; absent fields are ``None``.

        Raises:
            ValueError: a field this row does not know, or a value of the wrong type (``null`` included).
        """
        unknown = sorted(set(data) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown row field(s) {', '.join(unknown)}")
        for name, value in data.items():
            if not _is_kind(value, KINDS[name]):
                raise ValueError(f"row field {name!r}: {value!r} is not {KINDS[name]}")
        missing = [name for name in REQUIRED if name not in data]
        if missing:
            raise ValueError(f"row lacks the field(s) {', '.join(missing)}")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """The row as a cell file stores it: every field that is not ``None``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def order(self) -> tuple:
        """Its place in the run's order: by cell (zoo, victim, attack, defense, budget, service, seed), then key;
        a field the row lacks sorts after every value."""
        return (self.zoo, self.victim, self.attack, self.defense, self.budget, _last(self.load),
                _last(self.benign_clients), _last(self.attacker_rate), _last(self.latency_visible), self.seed,
                _last(self.cell_key))


def _last(value: Any) -> tuple[bool, Any]:
    return (True, 0) if value is None else (False, value)


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KINDS = {f.name: str(f.type).split(" | ")[0] for f in fields(CellRow)}
"""Each field's type without its ``None``: ``str``, ``int``, ``float`` (an int is one too) or ``bool``."""
REQUIRED = tuple(f.name for f in fields(CellRow) if " | None" not in str(f.type))
"""The fields every row has."""
FIELDS = tuple(KINDS)
"""Every field, in the class's order."""

