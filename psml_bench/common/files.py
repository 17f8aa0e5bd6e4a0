"""Loading TOML/JSON config files, validated by the JSON Schemas shipped in ``schemas/``."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from ..contract.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_PACKAGE_CONFIGS = resources.files("psml_bench") / "configs"


@lru_cache(maxsize=None)  # a pure memo: the shipped schema files do not change while the process runs
def schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema ``schemas/<name>.schema.json``."""
    text = (resources.files("psml_bench") / "schemas" / f"{name}.schema.json").read_text()
    return json.loads(text)


def validate(data: Any, schema_name: str, source: str) -> None:
    """Validate ``data`` against a shipped schema; raise :class:`ConfigError` naming the field."""
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{source}: field '{field}': {error.message}")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into :class:`ConfigError`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def resolve_config(kind: str, name_or_path: str | Path) -> Path:
    """Find a shipped config by name (``configs/<kind>/<name>.toml``) or take a path as given."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: no such {kind[:-1]} config file")
        return candidate
    shipped = _PACKAGE_CONFIGS / kind / f"{name_or_path}.toml"
    if shipped.is_file():
        return Path(str(shipped))
    available = ", ".join(sorted(shipped_configs(kind)))
    raise ConfigError(f"unknown {kind[:-1]} '{name_or_path}'; available: {available} (or pass a .toml path)")


def shipped_configs(kind: str) -> list[str]:
    """Names of the configs of one kind (``zoos`` or ``grids``) shipped with the package."""
    return sorted(p.name[: -len(".toml")] for p in (_PACKAGE_CONFIGS / kind).iterdir() if p.name.endswith(".toml"))


def content_hash(data: Any) -> str:
    """Stable sha256 of JSON-serialisable data (sorted keys)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) to ``path`` via a synced temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if isinstance(text, bytes) else "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
