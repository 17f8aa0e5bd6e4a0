"""The package version."""

__version__ = "0.1.0"

PROTOCOL_VERSION = 4
"""The benchmark protocol's version (docs/protocol.md): part of every cell key."""
