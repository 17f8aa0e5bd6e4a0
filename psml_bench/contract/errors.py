"""Errors that form part of psml-bench's interface.

Every failure a user can cause (a bad config, an unknown plugin, a malformed query, an
exhausted budget) is a :class:`PsmlError`; the CLI prints its message on one line and exits
non-zero.
"""

from __future__ import annotations


class PsmlError(Exception):
    """Base class for every user-facing psml-bench error."""


class ConfigError(PsmlError):
    """A zoo, grid, profile or manifest file is missing or invalid."""


class DataError(PsmlError):
    """A dataset could not be found or loaded."""


class UnknownPluginError(PsmlError, KeyError):
    """A plugin name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidQueryError(PsmlError, ValueError):
    """A query has malformed inputs or a specification outside the advertised range, or goes past what
    an extraction's :class:`~psml_bench.QuerySession` allows."""


class BudgetExhausted(PsmlError):
    """A query would exceed the attacker's query budget; nothing of it was served."""


class ManifestError(ConfigError):
    """A submission's manifest is invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class DefenseError(PsmlError):
    """A defense broke the serving contract (e.g. rerouted a query to a model outside the menu)."""


class AttackFailed(PsmlError):
    """The attack failed in its process; the message is the cell's error."""


class ProtocolError(AttackFailed):
    """The attack process broke the channel's protocol."""


class RecomputeRefused(PsmlError):
    """A run asked to reuse every cell (``--require-cached``) would have to compute some; it computed none."""


class ExecutorError(PsmlError):
    """An executor cannot run a cell (e.g. a worker's zoo differs from the driver's)."""


def sanitise(text: str, limit: int) -> str:
    """``text`` on one line, without control or escape characters, at most ``limit`` characters."""
    cleaned = "".join(c if c.isprintable() else " " for c in str(text)[:limit * 4])
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"
