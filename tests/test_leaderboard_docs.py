"""The docs' measured tables agree with the committed leaderboard (scripts/leaderboard_docs.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("leaderboard_docs", ROOT / "scripts" / "leaderboard_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_match_the_committed_results():
    script = _script()
    frame = script._results()
    for page in script.PAGES:
        text = page.read_text()
        assert script.render(text, frame) == text, f"{page.name} is out of date: run scripts/leaderboard_docs.py"
    assert "<!-- leaderboard: stateful-detection -->" in (ROOT / "docs" / "defenses.md").read_text()
    defenses, protocol = ((ROOT / "docs" / page).read_text() for page in ("defenses.md", "protocol.md"))
    for name in ("deployable-detection", "deployable-ownership", "deployable-costs", "threat-data", "threat-aware",
                 "threat-sybil"):
        assert f"<!-- leaderboard: {name} -->" in defenses, name
    assert "<!-- leaderboard: routing -->" in protocol and "<!-- leaderboard: routing-defenses -->" in protocol


def test_a_number_that_differs_from_the_results_fails_the_check():
    script = _script()
    frame = script._results()
    text = (ROOT / "docs" / "defenses.md").read_text()
    start = text.index("<!-- leaderboard: stateful-costs -->")
    # the section's first measured mean, one unit of its last decimal off (whatever the committed results are)
    match = re.compile(r"(\d\.\d{3}) ± ").search(text, start)
    wrong = f"{float(match.group(1)) + (0.001 if float(match.group(1)) < 0.5 else -0.001):.3f}"
    drifted = text[:match.start(1)] + wrong + text[match.end(1):]
    assert drifted != text and script.render(drifted, frame) == text
