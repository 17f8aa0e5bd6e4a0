"""Registering valid submissions in the plugin registries: the stand-ins that a run (or a command) uses.

Reading a submission registers nothing (:mod:`psml_bench.plugins.manifests`); whatever runs plugins
registers the valid ones here, once: a run through its :class:`~psml_bench.bench.context.RunContext`,
``psml-bench list``, ``serve`` and ``attack`` directly. A submitted defense's stand-in is a
:class:`~psml_bench.isolation.jailed_defense.SubmittedDefense`, whose hooks run in the sandbox.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..contract.errors import ManifestError, PsmlError
from ..isolation.jailed_defense import SubmittedDefense
from .manifests import KIND_REGISTRIES, Loaded, Manifest, declared_class, registration_errors, scan_submissions

log = logging.getLogger(__name__)


def stand_in(manifest: Manifest) -> type:
    """The class registered for a submission (:func:`~psml_bench.plugins.manifests.declared_class`; a defense's
    subclasses :class:`SubmittedDefense`)."""
    return declared_class(manifest, defense_base=SubmittedDefense)


def register(manifest: Manifest) -> None:
    """Register a valid submission in the attack, defense or strategy registry.

    Raises:
        ManifestError: its name is taken by a submission in another folder or by a built-in.
    """
    errors = registration_errors(manifest)
    if errors:
        raise ManifestError(errors)
    KIND_REGISTRIES[manifest.kind].add(manifest.name, stand_in(manifest), source=manifest.source)


def register_submissions(loaded: list[Loaded]) -> list[Loaded]:
    """Register every valid submission of ``loaded``; never raises. One that cannot be registered now (its
    name taken since it was read) is logged as a warning and returned as invalid."""
    results = []
    for result in loaded:
        if result.ok:
            try:
                register(result.manifest)
            except ManifestError as exc:
                result = replace(result, manifest=None, errors=tuple(exc.errors))
            except PsmlError as exc:
                result = replace(result, manifest=None, errors=(str(exc),))
            for error in result.errors:
                log.warning("submission %s skipped: %s", result.folder.name, error)
        results.append(result)
    return results


def load_submissions(directories: list[Path] | None = None) -> list[Loaded]:
    """Read and register every submission of ``directories`` (default: the submissions directories); never
    raises. Invalid submissions are logged as warnings and left out. Each call reads the folders again: a
    run keeps the result in its :class:`~psml_bench.bench.context.RunContext`."""
    return register_submissions(scan_submissions(directories))
