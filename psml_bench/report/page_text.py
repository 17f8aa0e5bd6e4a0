"""Text a plugin can influence, made inert on the leaderboard's pages (README.md, index.html, results.csv).

A failed cell's error, an attack's or defense's label (its name and parameters), a recipe and a
flag can hold any printable text. In Markdown that text is escaped character by character
(:func:`markdown_text`), or put in a code span whose fence is longer than any run of backticks
inside it (:func:`markdown_code`), so that a ``|`` cannot split a table row and a link, image,
raw HTML tag, emphasis or bare URL cannot come alive. :func:`inline_html` renders the same
Markdown subset the pages use (backslash escapes, code spans, ``*emphasis*``) as escaped HTML, so
``index.html`` shows exactly the characters ``README.md`` shows. :func:`csv_text` keeps a
spreadsheet from reading a CSV field as a formula, and :func:`plot_text` keeps matplotlib from
reading a figure's legend label as mathtext. Text without special characters is unchanged.
"""

from __future__ import annotations

import re
import string

from markupsafe import Markup, escape

PUNCTUATION = frozenset(string.punctuation)
"""What a backslash escapes in CommonMark."""
_ALWAYS = frozenset("\\`*[]|~")
"""Characters escaped wherever they stand: code, emphasis, links and images, table cells, strikethrough."""
_LIVE_LINK = re.compile(r"(?i)(://|www\.)")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A CSV field starting with one of these is read as a formula by spreadsheets."""


def markdown_text(text: object) -> str:
    """``text`` as literal Markdown (GitHub's): every character that could format, link or split a table
    row is backslash-escaped; ``_`` only where it could open or close emphasis (not inside a word),
    ``<`` only where it could open raw HTML, ``&`` only where it could start an entity (so that the
    harness's own "0.7 < 0.8" reads as before)."""
    text = str(text)
    out = []
    for i, c in enumerate(text):
        after = text[i + 1] if i + 1 < len(text) else ""
        opens_tag = c == "<" and (after.isalpha() or (after != "" and after in "/!?"))
        opens_entity = c == "&" and (after.isalnum() or after == "#")
        if c in _ALWAYS or opens_tag or opens_entity or (c == "_" and not (i > 0 and text[i - 1].isalnum()
                                                                            and after.isalnum())):
            out.append("\\" + c)
        else:
            out.append(c)
    # a bare URL is linked by GitHub's autolink extension: an escape inside "://" or "www." stops it
    return _LIVE_LINK.sub(lambda m: ":\\//" if m.group(1) == "://" else m.group(1)[:3] + "\\.", "".join(out))


def markdown_code(text: object) -> str:
    """``text`` as one Markdown code span (its content is literal), fenced by more backticks than any run in
    it (for a paragraph: in a table a ``|`` would still split the row, so table cells take :func:`markdown_text`)."""
    text = str(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return fence + padded + fence


def inline_html(text: str) -> Markup:
    """The pages' Markdown subset as HTML, everything else escaped: backslash escapes, code spans
    (`x`, or a longer fence), and emphasis (*x*)."""
    return Markup("".join(_inline(str(text))))


def _inline(text: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in PUNCTUATION:
            out.append(str(escape(text[i + 1])))
            i += 2
        elif c == "`":
            run = len(text[i:]) - len(text[i:].lstrip("`"))
            close = _closing_fence(text, i + run, run)
            if close is None:
                out.append("`" * run)
                i += run
                continue
            code = text[i + run:close]
            if len(code) > 2 and code[0] == " " and code[-1] == " " and code.strip():
                code = code[1:-1]
            out.append(f"<code>{escape(code)}</code>")
            i = close + run
        elif c == "*" and i + 1 < n and text[i + 1] not in "* \t\n":
            close = _unescaped(text, "*", i + 1)
            if close is None:
                out.append("*")
                i += 1
                continue
            out += ["<em>", *_inline(text[i + 1:close]), "</em>"]
            i = close + 1
        else:
            out.append(str(escape(c)))
            i += 1
    return out


def _closing_fence(text: str, start: int, run: int) -> int | None:
    """Where the next run of exactly ``run`` backticks from ``start`` begins."""
    for match in re.finditer(r"`+", text[start:]):
        if len(match.group()) == run:
            return start + match.start()
    return None


def _unescaped(text: str, char: str, start: int) -> int | None:
    """The position of the next ``char`` from ``start`` that is not backslash-escaped nor in a code span."""
    i = start
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 2
        elif text[i] == "`":
            run = len(text[i:]) - len(text[i:].lstrip("`"))
            close = _closing_fence(text, i + run, run)
            i = (close + run) if close is not None else i + run
        elif text[i] == char:
            return i
        else:
            i += 1
    return None


def csv_text(value: object) -> object:
    """A text field a spreadsheet will not evaluate: one starting like a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def plot_text(label: object) -> str:
    """A legend label matplotlib shows as written (a ``$`` would start mathtext, which may fail to parse)."""
    return str(label).replace("$", r"\$")
