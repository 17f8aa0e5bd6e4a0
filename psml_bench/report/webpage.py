"""The leaderboard as one static web page, ``index.html``: the same sections as ``README.md``, rendered with Jinja2.

Self-contained: styles and the table-sorting script are inline, figures are the PNG files beside
the page, and each table row links to the JSON files of the cells it summarises (``cells/<key>.json``).
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


def render_html(sections: Sequence, provenance: dict[str, str]) -> str:
    """The page: every section's paragraphs, sortable table (rows linking to their cells) and figures."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["inline"] = _inline
    environment.filters["anchor"] = _anchor
    title = sections[0].title.replace("`", "") if sections else "psml-bench leaderboard"
    return environment.get_template("leaderboard.html.j2").render(
        title=title, sections=sections, provenance=provenance, protocol=PROTOCOL_VERSION)
