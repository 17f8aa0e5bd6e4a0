"""The leaderboard as one static web page, ``index.html``: the same sections as ``README.md``, rendered with Jinja2.

Self-contained: styles and the scripts (table sorting, filters by zoo, block, load and victim) are
inline, figures are the PNG files beside the page, and each table row links to the JSON files of
the cells it summarises (``cells/<key>.json``); the page links ``results.csv`` and ``zoos.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import jinja2
from markupsafe import Markup

from .._version import PROTOCOL_VERSION
from .page_text import inline_html

TEMPLATES = Path(__file__).parents[1] / "templates"


def _inline(text: str) -> Markup:
    """Escape ``text`` and render its Markdown escapes, code spans (`x`) and emphasis (*x*)."""
    return inline_html(text)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


FACETS = ("zoo", "block", "load", "victim")
"""What the page's filters select by."""


def _plain(text: str) -> str:
    return str(text).replace("`", "").strip()


def row_facets(section) -> list[dict[str, str]]:
    """Per table row, its own values of the filter facets (from its ``zoo``, ``block``, ``load``, ``victim``
    columns)."""
    if section.table is None:
        return []
    columns = {facet: section.table.headers.index(facet) for facet in FACETS if facet in section.table.headers}
    return [{facet: _plain(row[i]) for facet, i in columns.items()} for row in section.table.rows]


def facet_values(sections: Sequence) -> dict[str, list[str]]:
    """Every value each filter facet takes on the page (sections' facets and rows' columns), in page order."""
    found: dict[str, dict[str, None]] = {facet: {} for facet in FACETS}
    for section in sections:
        for facet, value in getattr(section, "facets", {}).items():
            found[facet].setdefault(_plain(value))
        for row in row_facets(section):
            for facet, value in row.items():
                if value not in ("", "—"):
                    found[facet].setdefault(value)
    return {facet: list(values) for facet, values in found.items() if len(values) > 1}


def anchors(sections: Sequence) -> list[str]:
    """A unique id per section: its title as an anchor, numbered from the second use on."""
    seen: dict[str, int] = {}
    out = []
    for section in sections:
        base = _anchor(section.title) or "section"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def render_html(sections: Sequence, provenance: dict[str, str]) -> str:
    """The page: a headline box, contents, filters, every section's paragraphs, sortable table (rows linking to
    their cells, scrolling inside their box under sticky headers) and figures with captions."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["inline"] = _inline
    environment.filters["anchor"] = _anchor
    title = sections[0].title.replace("`", "") if sections else "psml-bench leaderboard"
    return environment.get_template("leaderboard.html.j2").render(
        title=title, sections=sections, provenance=provenance, protocol=PROTOCOL_VERSION,
        anchors=anchors(sections), facets=facet_values(sections), row_facets=[row_facets(s) for s in sections])
