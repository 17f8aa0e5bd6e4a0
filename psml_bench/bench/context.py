"""The run context: the one owner of what a run holds in a process (its registered submissions).

The runner creates one :class:`RunContext` per run and passes it down to the cells it runs in its
own process; each worker process of an executor holds one for the cells it runs. Library callers
that pass none (``run_cell``, ``execute``) get :func:`default_context`, the process's own.
"""

from __future__ import annotations

from pathlib import Path

from ..plugins.manifests import Loaded
from ..plugins.registration import load_submissions


class RunContext:
    """What a run holds in one process, created by the runner (or a worker) and passed down.

    ``submissions``: read and registered on first need, once per context (loading a grid registers
    nothing; the cells of a run need the registered stand-ins to build their plugins).

    Args:
        submissions_dirs: where the submissions are (default: the submissions directories, read then).
    """

    def __init__(self, submissions_dirs: list[Path] | None = None):
        self.submissions_dirs = submissions_dirs
        self._submissions: list[Loaded] | None = None

    def submissions(self) -> list[Loaded]:
        """Every submission, read and (the valid ones) registered on the first call of this context."""
        if self._submissions is None:
            self._submissions = load_submissions(self.submissions_dirs)
        return self._submissions


_DEFAULT: list[RunContext] = []


def default_context() -> RunContext:
    """This process's context, for callers that pass none: created on first use and kept for the process
    (a run creates its own, so its state starts fresh)."""
    if not _DEFAULT:
        _DEFAULT.append(RunContext())
    return _DEFAULT[0]
