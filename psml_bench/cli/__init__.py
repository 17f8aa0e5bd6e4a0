"""The ``psml-bench`` command line."""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from ..contract.errors import PsmlError
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``psml-bench`` with ``argv`` (default: the process's arguments); return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("datasets", "huggingface_hub", "urllib3", "filelock", "fsspec"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except PsmlError as exc:
        print(f"psml-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psml-bench: interrupted; finished cells are kept", file=sys.stderr)
        return 130
