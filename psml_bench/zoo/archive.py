"""Zoo archives: one file with a built zoo's card, weights, splits and predictions, every file hashed.

``psml-bench zoo export NAME FILE`` writes a built zoo as an uncompressed tar whose first member,
``psml-zoo.json``, lists every other member with its sha256. ``psml-bench zoo import FILE|URL``
checks, before anything reaches the cache: that the archive holds exactly the listed regular files
(no links, no paths outside it), that each file has its listed hash, that each model's weights
have the hash its zoo card records, that the card belongs to the zoo config of that name here
(same config hash), and, given a lock (a leaderboard's ``zoos.json``: the committed leaderboard's by
default), that every model's weights are the locked ones: an archive of other weights is refused
unless the user asks for it, because no committed cell would be reused with it. A URL is downloaded
with ``torch.hub.download_url_to_file``, which checks the archive's own sha256 (printed by ``export``)
before the file is opened. A team can so publish the zoo
its leaderboard was computed on, and a newcomer skips training.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..common.files import validate
from ..contract.errors import ConfigError, PsmlError
from .config import ZooConfig, load_zoo_config, zoo_directory
from .lock import ZooLock, changed_models, lock_of_zoo, why_differs

ARCHIVE_VERSION = 1
INDEX = "psml-zoo.json"
REQUIRED = ("card.json", "splits.safetensors", "predictions.safetensors")
OPTIONAL = ("pool_predictions.safetensors",)
CHUNK = 1 << 20


@dataclass(frozen=True)
class ZooArchive:
    """What an export wrote or an import installed."""

    zoo: str
    directory: Path
    archive: Path
    sha256: str
    files: dict[str, str]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _members(directory: Path, card: dict[str, Any]) -> list[str]:
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    weights = [f"weights/{model['id']}.safetensors" for model in card["models"]]
    missing += [name for name in weights if not (directory / name).is_file()]
    if missing:
        raise PsmlError(f"{directory} is not a complete built zoo: missing {', '.join(missing)}")
    return [*REQUIRED, *(name for name in OPTIONAL if (directory / name).is_file()), *weights]


def export_zoo(directory: Path, out: Path) -> ZooArchive:
    """Write the built zoo in ``directory`` to the archive ``out``; return what was written."""
    directory = Path(directory)
    try:
        card = json.loads((directory / "card.json").read_text())
    except FileNotFoundError:
        raise PsmlError(f"{directory} holds no built zoo (no card.json); run `psml-bench zoo build`") from None
    names = _members(directory, card)
    files = {name: file_sha256(directory / name) for name in names}
    index = {"archive_version": ARCHIVE_VERSION, "zoo": card["zoo"], "config_hash": card["config_hash"],
             "files": files}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(index, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(INDEX)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
        for name in names:
            info = tar.gettarinfo(str(directory / name), arcname=name)
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = ""
            with open(directory / name, "rb") as handle:
                tar.addfile(info, handle)
    partial.replace(out)
    return ZooArchive(card["zoo"], directory, out, file_sha256(out), files)


def _is_url(source: str) -> bool:
    return source.split("://", 1)[0] in ("http", "https", "file") and "://" in source


def _fetch(source: str, sha256: str | None, into: Path) -> Path:
    """The archive as a local file: ``source`` itself, or downloaded (its sha256 checked) into ``into``."""
    if not _is_url(source):
        path = Path(source)
        if not path.is_file():
            raise PsmlError(f"no zoo archive at {path}")
        if sha256 and file_sha256(path) != sha256.lower():
            raise PsmlError(f"{path} does not have the sha256 {sha256} it was given")
        return path
    if not sha256 or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise ConfigError("a zoo archive from a URL needs --sha256 with the archive's 64-hex-digit sha256 "
                          "(`psml-bench zoo export` prints it)")
    from torch.hub import download_url_to_file

    target = into / "download.tar"
    try:
        download_url_to_file(source, str(target), hash_prefix=sha256.lower(), progress=False)
    except RuntimeError as exc:  # torch.hub's hash mismatch
        raise PsmlError(f"the archive at {source} does not have the sha256 it was given: {exc}") from None
    except OSError as exc:
        raise PsmlError(f"could not download {source}: {exc}") from None
    return target


def _read_index(tar: tarfile.TarFile, source: str) -> dict[str, Any]:
    try:
        member = tar.getmember(INDEX)
        handle = tar.extractfile(member)
        index = json.loads(handle.read()) if handle is not None else None
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError):
        index = None
    if not isinstance(index, dict) or index.get("archive_version") != ARCHIVE_VERSION \
            or not isinstance(index.get("files"), dict) or not isinstance(index.get("zoo"), str):
        raise PsmlError(f"{source} is not a psml-bench zoo archive (no valid {INDEX}, archive version "
                        f"{ARCHIVE_VERSION})")
    return index


def _check_members(tar: tarfile.TarFile, index: dict[str, Any], source: str) -> None:
    listed = set(index["files"])
    allowed = set(REQUIRED) | set(OPTIONAL) | {n for n in listed if n.startswith("weights/")}
    for name in listed:
        parts = Path(name).parts
        if name not in allowed or ".." in parts or Path(name).is_absolute() or len(parts) > 2 \
                or not name.endswith((".json", ".safetensors")):
            raise PsmlError(f"{source}: unexpected member {name!r} in the archive's index")
    present = {}
    for member in tar.getmembers():
        if member.name == INDEX:
            continue
        if not member.isfile():
            raise PsmlError(f"{source}: member {member.name!r} is not a regular file")
        present[member.name] = member
    if set(present) != listed:
        extra, missing = sorted(set(present) - listed), sorted(listed - set(present))
        raise PsmlError(f"{source}: the archive's files differ from its index (extra: {extra or 'none'}, "
                        f"missing: {missing or 'none'})")
    if not set(REQUIRED) <= listed:
        raise PsmlError(f"{source}: the archive lacks {sorted(set(REQUIRED) - listed)}")


def _extract(tar: tarfile.TarFile, index: dict[str, Any], into: Path, source: str) -> None:
    for name, expected in sorted(index["files"].items()):
        handle = tar.extractfile(name)
        path = into / name
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise PsmlError(f"{source}: {name} does not have the sha256 the archive lists (corrupted or altered)")


def _check_card(into: Path, config: ZooConfig, source: str) -> dict[str, Any]:
    card = json.loads((into / "card.json").read_text())
    validate(card, "card", f"{source}:card.json")
    if card["zoo"] != config.name or card["config_hash"] != config.config_hash:
        raise PsmlError(f"{source}: the archive's zoo {card['zoo']} (config hash {card['config_hash'][:12]}) is not "
                        f"the zoo config {config.name} here (config hash {config.config_hash[:12]}); pass the "
                        f"config it was built from with --config")
    for model in card["models"]:
        path = into / "weights" / f"{model['id']}.safetensors"
        if not path.is_file():
            raise PsmlError(f"{source}: no weights for model {model['id']} of the zoo card")
        if file_sha256(path) != model["weights_sha256"]:
            raise PsmlError(f"{source}: weights of model {model['id']} do not have the sha256 its zoo card records")
    return card


def _check_lock(staging: Path, locks: Mapping[str, ZooLock] | None, source: str, lock_source: str) -> None:
    """Refuse an archive whose weights differ from the lock's (a lock without hashes checks nothing)."""
    if not locks:
        return
    card = json.loads((staging / "card.json").read_text())
    lock = lock_of_zoo(locks, card["zoo"])
    if lock is None or not lock.hashed:
        return
    changed = changed_models(card, lock)
    if changed:
        raise PsmlError(f"{source}: zoo {card['zoo']} differs from {lock_source} in {len(changed)} of "
                        f"{len(card['models'])} models ({', '.join(changed)}): {why_differs(card, lock)}; nothing "
                        "installed, since no committed cell would be reused with it (pass --ignore-lock to install "
                        "it anyway)")


def import_zoo(source: str | Path, cache_dir: Path | None = None, *, sha256: str | None = None,
               config: str | Path | None = None, force: bool = False, locks: Mapping[str, ZooLock] | None = None,
               lock_source: str = "the lock") -> ZooArchive:
    """Install a zoo archive (a file or a URL) into the cache after checking every hash.

    Args:
        source: the archive's path, or an ``http(s)://``/``file://`` URL (then ``sha256`` is required).
        sha256: the archive's own sha256 (checked before it is opened).
        config: the zoo config the archive was built from (default: the shipped config of the archive's zoo).
        force: replace a zoo of the same config already in the cache.
        locks: a leaderboard's locks (:func:`~psml_bench.zoo.lock.read_locks`); None checks none. A zoo the
            locks name with weights hashes must have exactly the locked weights.
        lock_source: where ``locks`` came from, for the message.

    Raises:
        PsmlError: a hash, member or card that does not check out, or weights that differ from the lock
            (nothing is installed), or the zoo is already in the cache with other contents and ``force`` is
            not given.
    """
    source = str(source)
    with tempfile.TemporaryDirectory(prefix="psml-zoo-import-") as scratch:
        path = _fetch(source, sha256, Path(scratch))
        try:
            tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise PsmlError(f"{source} is not a readable tar archive ({exc})") from None
        with tar:
            index = _read_index(tar, source)
            zoo_config = load_zoo_config(config or index["zoo"])
            destination = zoo_directory(zoo_config, cache_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _check_members(tar, index, source)
            staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-import-", dir=destination.parent))
            try:
                _extract(tar, index, staging, source)
                _check_card(staging, zoo_config, source)
                _check_lock(staging, locks, source, lock_source)
                if destination.exists():
                    same = (destination / "card.json").is_file() and all(
                        (destination / n).is_file() and file_sha256(destination / n) == h
                        for n, h in index["files"].items())
                    if same:
                        shutil.rmtree(staging)
                        return ZooArchive(zoo_config.name, destination, path, file_sha256(path), index["files"])
                    if not force:
                        raise PsmlError(f"zoo {zoo_config.name} is already in {destination} with other contents; "
                                        f"pass --force to replace it")
                    shutil.rmtree(destination)
                staging.replace(destination)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        return ZooArchive(zoo_config.name, destination, Path(source), file_sha256(path), index["files"])
