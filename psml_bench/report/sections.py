"""The leaderboard page's parts: sections of paragraphs, a table, links and figures, and their Markdown.

``README.md`` is :func:`markdown_of` the sections; :mod:`psml_bench.report.webpage` renders the same
sections as ``index.html``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from tabulate import tabulate


@dataclass
class Table:
    """A table of text cells; ``cells`` holds, per row, the keys of the cells it summarises (for links)."""

    headers: list[str]
    rows: list[list[str]]
    cells: list[list[str]] = field(default_factory=list)


@dataclass
class Section:
    """A titled part of the page: paragraphs, then a table or figures."""

    level: int
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    figures: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    kind: str = ""
    """``headline`` for the box at the top of the page; ``""`` for any other section."""
    captions: dict[str, str] = field(default_factory=dict)
    """Per figure, what it shows (its file name when missing)."""
    facets: dict[str, str] = field(default_factory=dict)
    """What the page's filters match the section by (``zoo``, ``block``, ``victim``); rows also match by their
    own ``zoo``, ``block``, ``load`` and ``victim`` columns."""
    links: list[tuple[str, str]] = field(default_factory=list)
    """Links the page itself makes, (text, relative address), after the table: never from a plugin's text."""


def markdown_table(table: Table) -> str:
    return tabulate(table.rows, headers=table.headers, tablefmt="github", disable_numparse=True)


def markdown_of(sections: Sequence[Section]) -> str:
    """Sections as Markdown."""
    lines: list[str] = []
    for section in sections:
        lines += ["#" * section.level + " " + section.title, ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.bullets:
            lines += [f"- {bullet}" for bullet in section.bullets] + [""]
        if section.table is not None:
            lines += [markdown_table(section.table), ""]
        if section.links:
            lines += [f"- [{text}]({href})" for text, href in section.links] + [""]
        for name in section.figures:
            lines += [f"![{name}]({name})", "", f"*{section.captions.get(name, name)}*", ""]
    return "\n".join(lines)
