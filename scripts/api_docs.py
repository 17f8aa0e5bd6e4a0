"""Generate docs/api.md, the API reference of psml_bench's public surface, from its docstrings (pdoc).

    python scripts/api_docs.py          # rewrite docs/api.md
    python scripts/api_docs.py --check  # exit 1 if docs/api.md is out of date

pdoc reads every name of ``psml_bench.__all__`` (signatures, docstrings, public members) and turns
the Google-style docstrings into Markdown; this script lays them out on one page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterator

import pdoc.doc
import pdoc.docstrings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"
HEADER = """# API reference

The public surface of `psml_bench` (`psml_bench.__all__`): what plugins and scripts may import.
Generated from the docstrings by `python scripts/api_docs.py` (pdoc); do not edit by hand
(`tests/test_api_docs.py` checks that this page is up to date).
"""


def public_members() -> Iterator[pdoc.doc.Doc]:
    """Every name of ``psml_bench.__all__`` as pdoc sees it, in ``__all__`` order (sorted)."""
    import psml_bench

    module = pdoc.doc.Module(psml_bench)
    for name in sorted(psml_bench.__all__, key=str.lower):
        if name in module.members:
            yield module.members[name]


def documented(doc: pdoc.doc.Doc) -> Iterator[pdoc.doc.Doc]:
    """``doc`` and, for a class, its public methods and properties defined in psml_bench."""
    yield doc
    if isinstance(doc, pdoc.doc.Class):
        for member in doc.own_members:
            if not member.name.startswith("_") and isinstance(member, (pdoc.doc.Function, pdoc.doc.Variable)):
                yield member


def _markdown(doc: pdoc.doc.Doc) -> str:
    return pdoc.docstrings.convert(doc.docstring, "google", None).strip() if doc.docstring else ""


def _signature(doc: pdoc.doc.Doc) -> str:
    if isinstance(doc, pdoc.doc.Function):
        return f"{doc.name}{doc.signature_without_self}"
    if isinstance(doc, pdoc.doc.Class):
        init = doc.members.get("__init__")
        bases = ", ".join(b[2] for b in doc.bases)
        head = f"class {doc.name}" + (f"({bases})" if bases else "")
        return head + (f"\n__init__{init.signature_without_self}" if isinstance(init, pdoc.doc.Function)
                       and init.taken_from[0].startswith("psml_bench") else "")
    annotation = doc.annotation_str if isinstance(doc, pdoc.doc.Variable) else ""
    return f"{doc.name}{annotation}"


def _public_names(text: str) -> str:
    """``psml_bench.layer.module.Name`` as ``psml_bench.Name`` for public names; numpy's generator as users write it."""
    import psml_bench

    text = re.sub(r"psml_bench(?:\.[a-z_]+)+\.([A-Za-z_]+)",
                  lambda m: f"psml_bench.{m.group(1)}" if m.group(1) in psml_bench.__all__ else m.group(0), text)
    return text.replace("numpy.random._generator.Generator", "numpy.random.Generator")


def render() -> str:
    """The whole page."""
    parts = [HEADER]
    for doc in public_members():
        kind = type(doc).__name__.lower()
        parts.append(f"## `{doc.name}` ({kind})\n\n```python\n{_signature(doc)}\n```\n\n{_markdown(doc)}\n")
        if isinstance(doc, pdoc.doc.Class):
            for member in list(documented(doc))[1:]:
                text = _markdown(member)
                parts.append(f"### `{doc.name}.{member.name}`\n\n```python\n{_signature(member)}\n```\n"
                             + (f"\n{text}\n" if text else ""))
    return _public_names("\n".join(parts).rstrip() + "\n")


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
