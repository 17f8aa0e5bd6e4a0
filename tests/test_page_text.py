"""Text from a plugin cannot change the leaderboard's pages: README.md, index.html, results.csv."""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path

import pytest
from markupsafe import Markup, escape

from psml_bench.report.leaderboard import render_markdown, write_leaderboard
from psml_bench.report.results import results_frame
from psml_bench.report.page_text import csv_text, inline_html, markdown_code, markdown_text, plot_text
from psml_bench.runner import MAX_ERROR_CHARS
from psml_bench.contract.errors import sanitise

from test_leaderboard import CardOnlyZoo, rows, toy_grid

LEADERBOARD = Path(__file__).resolve().parents[1] / "leaderboard"
HOSTILE = ("x | y | z ![pic](https://evil.example/p.png) [click](javascript:alert(1)) <img src=x onerror=alert(1)> "
           "`code` *em* _em_ ~~gone~~ &amp; www.evil.example \\| \\ end")


def _old_inline(text: str) -> Markup:
    """index.html's inline renderer before plugin text was escaped (pinned: the committed pages must not change)."""
    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", html))


def _table_cells(line: str) -> list[str]:
    """A GitHub table row's cells: split at every '|' not escaped by a backslash."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _hostile_rows():
    error = sanitise("=cmd|' /C calc'!A0\n" + HOSTILE + "\x1b[31m" + "y" * 5000, MAX_ERROR_CHARS)
    return [replace(row, error=error) if row.status == "failed" else row for row in rows()]


def test_a_hostile_error_is_literal_in_the_markdown_table(tmp_path):
    page = render_markdown(results_frame(_hostile_rows()), CardOnlyZoo(), toy_grid())
    lines = page.splitlines()
    header = lines.index("## Failed cells")
    table = [line for line in lines[header + 2:] if line.startswith("|")]
    assert len(_table_cells(table[0])) == len(_table_cells(table[2])) == 6  # no cell split by a '|'
    row = table[2]
    for live in (r"\]\(", r"<img", r"<a ", r"`code`", r"\*em\*", r"_em_", r"~~", r"&amp;", r"://", r"www\."):
        assert not re.search(r"(?<!\\)" + live, row), live  # each only escaped
    assert "\\[click\\]" in row and "\\<img" in row and "\\`code\\`" in row and "\\*em\\*" in row
    assert "\\_em\\_" in row and "\\~\\~gone" in row and "\\&amp;" in row and "https:\\//evil" in row
    assert "www\\.evil" in row and "\n" not in row and "\x1b" not in row and len(row) < 2 * MAX_ERROR_CHARS


def test_the_html_page_shows_the_hostile_text_as_written(tmp_path):
    write_leaderboard(_hostile_rows(), CardOnlyZoo(), toy_grid(), tmp_path, figures=False)
    html = (tmp_path / "index.html").read_text()
    assert "<img src=x" not in html and "<a href=\"javascript" not in html
    assert "<code>code</code>" not in html and "<em>em</em>" not in html
    assert "x | y | z ![pic](https://evil.example/p.png) [click](javascript:alert(1)) &lt;img src=x" in html
    with open(tmp_path / "results.csv", newline="") as file:
        errors = [r["error"] for r in csv.DictReader(file) if r["error"]]
    assert errors == ["'" + sanitise("=cmd|' /C calc'!A0\n" + HOSTILE + "\x1b[31m" + "y" * 5000, MAX_ERROR_CHARS)]
    assert len(errors[0]) <= MAX_ERROR_CHARS + 1 and "\x1b" not in errors[0] and "\n" not in errors[0]


@pytest.mark.parametrize("text", [HOSTILE, "a`b``c", "`x`", "a|b", "keep_argmax=True", "*", "\\", "www.x http://y"])
def test_escaped_text_renders_back_to_itself(text):
    assert str(inline_html(markdown_text(text))) == str(escape(text))
    code = markdown_code(text)
    assert str(inline_html(code)) == f"<code>{escape(text)}</code>"


@pytest.mark.parametrize(("value", "expected"), [
    ("=1+1", "'=1+1"), ("+x", "'+x"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("psml", "psml"), (0.5, 0.5)])
def test_csv_fields_that_read_as_formulas_are_quoted(value, expected):
    assert csv_text(value) == expected


def test_a_dollar_in_a_legend_label_is_not_mathtext():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1], label=plot_text("evil$\\frac{$"))
    axis.legend()
    figure.canvas.draw()  # a raw "$\\frac{$" would fail to parse here
    plt.close(figure)
    assert plot_text("plain(x=1)") == "plain(x=1)"


def test_the_committed_leaderboard_needs_no_escape():
    """What the escaping changes on the committed pages: every label it escapes, every line its HTML renderer reads."""
    with open(LEADERBOARD / "results.csv", newline="") as file:
        committed = list(csv.DictReader(file))
    for row in committed:
        for column in ("attack", "defense", "error", "flags", "surrogate_recipe", "victim", "zoo"):
            value = row.get(column, "")
            assert markdown_text(value) == value and csv_text(value) == value and plot_text(value) == value
            assert markdown_code(value) == f"`{value}`"
    for line in (LEADERBOARD / "README.md").read_text().splitlines():
        pieces = _table_cells(line) if line.startswith("|") else [line.lstrip("#").strip()]
        for piece in pieces:
            assert str(inline_html(piece)) == str(_old_inline(piece)), piece
