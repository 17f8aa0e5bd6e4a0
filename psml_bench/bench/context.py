"""The run context: the one owner of what a run holds in a process (submissions, opened zoos, pool answers, memos).

The runner creates one :class:`RunContext` per run and passes it down to the cells it runs in its
own process; each worker process of an executor holds one for the cells it runs. Library callers
that pass none (``run_cell``, ``execute``, ``score_surrogate``, ``surrogate_flags``) get
:func:`default_context`, the process's own. Nothing else in the bench layer keeps per-run state at
module level; what stays process-wide elsewhere is a pure memo or a process resource (each says so
where it is defined: the surrogate trainer's memory, the attack sandbox, the pool answers of a
:class:`~psml_bench.serving.service.SimulatedService` built without an owner).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..plugins.manifests import Loaded
from ..plugins.registration import load_submissions
from ..serving.service import PoolAnswersCache

if TYPE_CHECKING:
    import numpy as np

    from ..zoo.model_zoo import Zoo

SCORE_MEMO_SIZE = 4096
"""Most surrogate scores a context keeps (a few hundred bytes each)."""


class RunContext:
    """What a run holds in one process, created by the runner (or a worker) and passed down.

    Attributes:
        zoos: the zoos this process opened for the run's cells, by (directory, profile), with their identity
            (:func:`~psml_bench.bench.cell.execute` checks it against the driver's).
        scores: surrogate metrics and sanity flags by (zoo identity, victim, device, architecture and
            weights hash): a memo of a pure function, at most :data:`SCORE_MEMO_SIZE` entries, oldest out
            first (:func:`~psml_bench.bench.cell.score_surrogate`).
        victim_labels: the victim's labels on the unseen benign inputs by (zoo, victim, victim weights hash)
            (:func:`~psml_bench.bench.sanity.surrogate_flags`).
        pool_answers: every zoo model's answers on the attacker's pool, opened once per zoo and device kind for the
            services of this context's cells (:func:`~psml_bench.bench.cell.run_cell`); a memo of a pure function.

    The submissions are read and registered on first need, once per context (loading a grid registers
    nothing; the cells of a run need the registered stand-ins to build their plugins).

    Args:
        submissions_dirs: where the submissions are (default: the submissions directories, read then).
        training_cache: the directory whose ``surrogates/`` keeps the cells' surrogate trainings on disk
            (default: each zoo's own directory; benchmarks that time a cold cache give an empty one).
    """

    def __init__(self, submissions_dirs: list[Path] | None = None, training_cache: Path | None = None):
        self.submissions_dirs = submissions_dirs
        self.training_cache = training_cache
        self._submissions: list[Loaded] | None = None
        self.zoos: dict[tuple[str, str | None], tuple[Zoo, str]] = {}
        self.scores: dict[tuple[str, ...], tuple[dict[str, float], list[str]]] = {}
        self.victim_labels: dict[tuple[str, str, str], np.ndarray] = {}
        self.pool_answers = PoolAnswersCache()

    def remember_score(self, key: tuple[str, ...], value: Any) -> None:
        """Keep a surrogate's score under ``key``, dropping the oldest beyond :data:`SCORE_MEMO_SIZE`."""
        if key not in self.scores and len(self.scores) >= SCORE_MEMO_SIZE:
            self.scores.pop(next(iter(self.scores)))
        self.scores[key] = value

    def training_cache_of(self, zoo: Zoo) -> Path:
        """Where the surrogate trainings of ``zoo``'s cells are kept on disk (in ``surrogates/`` there)."""
        return self.training_cache if self.training_cache is not None else zoo.directory

    def submissions(self) -> list[Loaded]:
        """Every submission, read and (the valid ones) registered on the first call of this context."""
        if self._submissions is None:
            self._submissions = load_submissions(self.submissions_dirs)
        return self._submissions


_DEFAULT: list[RunContext] = []


def default_context() -> RunContext:
    """This process's context, for callers that pass none: created on first use and kept for the process.

    A run creates its own, so its state starts fresh. The default context's memos are keyed by content
    (zoo identity, weights hashes), so reusing it never changes a number; its submissions are read once,
    so a caller who edits a submission folder mid-process should pass a fresh :class:`RunContext`.
    """
    if not _DEFAULT:
        _DEFAULT.append(RunContext())
    return _DEFAULT[0]
