"""Sanity flags on the leaderboard: defenses that answer no probabilities, surrogates that saw test data."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..common import metrics as scoring
from ..contract.registries import DEFENSES
from ..serving.frontend import Frontend
from ..contract.spec import Spec

if TYPE_CHECKING:
    from .grid import Cell, GridConfig
    from ..zoo.model_zoo import Zoo


PROBABILITY_TOLERANCE = 1e-3
CEILING_Z = 3.0
CEILING_SHIFT = 0.02
UNSEEN_SAMPLES = 2000


def are_probability_vectors(outputs: Any, num_classes: int) -> bool:
    """Rows of finite, non-negative numbers summing to 1 (within 1e-3), one column per class."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2 or outputs.shape[1] != num_classes:
        return False
    outputs = outputs.double()
    return bool(torch.isfinite(outputs).all() and (outputs >= -PROBABILITY_TOLERANCE).all()
                and ((outputs.sum(dim=1) - 1).abs() <= PROBABILITY_TOLERANCE).all())


def defense_flags(zoo: Zoo, grid: GridConfig, cell: Cell, probe_size: int = 64, calls: int = 2) -> list[str]:
    """Probe the cell's defense on a fresh front end with ``calls`` identical calls: the first two
    answer probability vectors; determinism as claimed (every call answered like the first).

    The probe has its own generator (``[seed, 5]``), so it changes none of the cell's numbers.
    """
    defense = DEFENSES.get(cell.defense.name)(**cell.defense.kwargs)
    frontend = Frontend(zoo, defense=defense, rng=np.random.default_rng([cell.seed, 5]), policy=grid.policy)
    inputs = zoo.splits["benign_x"][:probe_size]
    spec = Spec(sum(frontend.spec_range.accuracy) / 2, sum(frontend.spec_range.latency_ms) / 2)
    answers, answered = [], []
    for _ in range(calls):
        answers.append(frontend.query(inputs, spec, purpose="probe"))
        answered.append(~frontend.last_refused)
    flags = []
    # a refused row (NaN) is a refusal, not a malformed answer: a stateful defense may refuse a client that
    # repeats itself (query-hash refuses the second call); the first call must be answered
    if not answered[0].all() or not all(are_probability_vectors(a[ok], zoo.num_classes)
                                        for a, ok in zip(answers[:2], answered[:2])):
        refused = int((~answered[0]).sum())
        flags.append("defense outputs are not probability vectors" + (
            f" ({refused} NaN rows in the first call were refused requests: the probe is one client sending the "
            f"same {len(inputs)} inputs in each of {calls} identical calls, and it must answer the first)"
            if refused else ""))
    differ = next((i for i, a in enumerate(answers) if not torch.equal(a, answers[0])), None)
    if defense.deterministic and differ is not None:
        flags.append("defense claims deterministic = True but answered identical calls differently"
                     + (f" (call {differ + 1} of {calls} differed from the first)" if calls > 2 else ""))
    return flags


def agreement_ceiling(unseen_agreement: float, n_unseen: int, n_test: int) -> float:
    """The most test-split fidelity an honest surrogate is expected to reach.

    An honest surrogate never saw the test inputs, so it agrees with the victim on them about as
    often as on other inputs it never saw from the same source (the ``benign`` split, never given
    to attacks): the ceiling is that agreement plus ``CEILING_Z`` standard errors of the difference
    of two proportions plus ``CEILING_SHIFT`` for the shift between the two splits.
    """
    p = min(max(unseen_agreement, 0.01), 0.99)
    return unseen_agreement + CEILING_Z * math.sqrt(p * (1 - p) * (1 / n_unseen + 1 / n_test)) + CEILING_SHIFT


def surrogate_flags(zoo: Zoo, victim_id: str, surrogate: torch.nn.Module, fidelity: float,
                    device: torch.device | str = "cpu",
                    victim_labels: dict[tuple[str, str, str], np.ndarray] | None = None) -> list[str]:
    """Flag a surrogate that agrees with the victim on the test split more than the ceiling allows
    (its predictions computed on ``device``; the victim's are the CPU's, kept in ``victim_labels``, a run
    context's memo, when given)."""
    labels = victim_labels if victim_labels is not None else {}
    unseen = zoo.splits["benign_x"][:UNSEEN_SAMPLES]
    weights = next((m.get("weights_sha256", "") for m in zoo.card["models"] if m["id"] == victim_id), "")
    key = (str(zoo.directory), victim_id, weights)
    if key not in labels:
        with torch.no_grad():
            victim = zoo.model(victim_id)
            labels[key] = torch.cat([victim(unseen[i:i + 512]).argmax(1)
                                     for i in range(0, len(unseen), 512)]).numpy()
    agreement = scoring.fidelity(scoring.predict_labels(surrogate, unseen, zoo.num_classes, device=device),
                                 labels[key])
    ceiling = agreement_ceiling(agreement, len(unseen), len(zoo.splits["test_x"]))
    if fidelity > ceiling:
        return [f"fidelity {fidelity:.3f} above the agreement ceiling {ceiling:.3f} (agreement {agreement:.3f} on "
                "unseen benign inputs): the surrogate may have seen test data"]
    return []
