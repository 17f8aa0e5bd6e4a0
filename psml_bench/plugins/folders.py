"""Submission folders: where they are found, what they may hold (code under a size cap), their content hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MANIFEST = "manifest.json"
SUBMISSIONS_ENV = "PSML_BENCH_SUBMISSIONS"
FOLDER_CAP_BYTES = 2**20
"""Most bytes a submission folder may hold (``__pycache__`` aside): code and its text, not data."""
CODE_SUFFIXES = (".py", ".toml", ".md", ".txt")
"""The files a submission folder may carry besides its manifest; anything else counts as data."""


def submissions_dirs() -> list[Path]:
    """``$PSML_BENCH_SUBMISSIONS`` (directories separated by ``os.pathsep``), else the checkout's
    ``submissions/`` if it exists."""
    explicit = os.environ.get(SUBMISSIONS_ENV)
    if explicit:
        return [Path(p) for p in explicit.split(os.pathsep) if p]
    checkout = Path(__file__).resolve().parents[2] / "submissions"
    return [checkout] if checkout.is_dir() else []


def submission_folders(directories: list[Path] | None = None) -> list[Path]:
    """Every submission folder (a subfolder not starting with ``.`` or ``_``) of ``directories``
    (default :func:`submissions_dirs`)."""
    folders = []
    for directory in directories if directories is not None else submissions_dirs():
        if directory.is_dir():
            folders += sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    return folders


def folder_problems(folder: Path) -> list[str]:
    """The submission folder's size above :data:`FOLDER_CAP_BYTES` and its data files (any file but
    the manifest with a suffix outside :data:`CODE_SUFFIXES`, or a symbolic link), one line each."""
    files = sorted(f for f in folder.rglob("*") if "__pycache__" not in f.relative_to(folder).parts
                   and (f.is_symlink() or f.is_file()))
    data = [str(f.relative_to(folder)) for f in files
            if f.is_symlink() or (f.suffix not in CODE_SUFFIXES and f != folder / MANIFEST)]
    problems = []
    if data:
        problems.append(f"{folder}: data files are not accepted (a submission carries only {MANIFEST} and "
                        f"{', '.join(CODE_SUFFIXES)} files, no symbolic links): {', '.join(data)}")
    sizes = {str(f.relative_to(folder)): f.stat().st_size for f in files if not f.is_symlink()}
    if sum(sizes.values()) > FOLDER_CAP_BYTES:
        largest = sorted(sizes, key=sizes.get, reverse=True)[:5]
        problems.append(f"{folder}: the folder holds {sum(sizes.values()) / 2**20:.1f} MiB, above the "
                        f"{FOLDER_CAP_BYTES // 2**20} MiB cap; largest: "
                        + ", ".join(f"{name} ({sizes[name] / 2**20:.2f} MiB)" for name in largest))
    return problems


def folder_hash(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file of a submission folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
