"""Generate the measured tables of the docs from the committed leaderboard (leaderboard/results.csv).

    python scripts/leaderboard_docs.py          # rewrite the tables in place
    python scripts/leaderboard_docs.py --check  # exit 1 if a table differs from the committed results

Each generated table sits between ``<!-- leaderboard: NAME -->`` and ``<!-- /leaderboard -->`` in a
page of docs/; everything outside the markers is written by hand and quotes no measured number of
the default grid without pointing to the leaderboard. ``tests/test_leaderboard_docs.py`` fails when
a table no longer matches the committed results.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGES = (ROOT / "docs" / "defenses.md", ROOT / "docs" / "protocol.md")
BLOCK = re.compile(r"(<!-- leaderboard: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /leaderboard -->)", re.S)
STATEFUL = ("prada", "adaptive-misinformation", "prediction-poisoning")


def _results() -> pd.DataFrame:
    return pd.read_csv(ROOT / "leaderboard" / "results.csv", keep_default_na=False, na_values=["", "nan", "NaN"])


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def stateful_costs(frame: pd.DataFrame) -> str:
    """Per stateful defense setting on the default zoo: goodput ratio, benign accuracy drop, false-positive clients."""
    from psml_bench.report.intervals import t_interval
    from psml_bench.report.ranking import ok_values

    zoo = frame["zoo"].iloc[0]
    rows = []
    part = frame[(frame["zoo"] == zoo) & frame["latency_visible"].astype(str).eq("True")]
    for defense, cells in part.groupby("defense", sort=True):
        if not defense.startswith(STATEFUL) and defense != "none":
            continue
        rows.append([f"`{defense}`"] + [t_interval(ok_values(cells, m).values()).format()
                                        for m in ("goodput", "goodput_ratio", "benign_accuracy_drop",
                                                  "false_positive_clients")])
    return (f"Zoo `{zoo}`, block `stateful-defenses` (mean over attacks per seed, 95% t-interval over seeds):\n\n"
            + _table(["setting", "goodput", "goodput ratio", "benign accuracy drop", "false-positive clients"], rows))


def stateful_detection(frame: pd.DataFrame) -> str:
    """The leaderboard's detection table on the default zoo."""
    from psml_bench.report.detection import DETECTION_COLUMNS, detection_rows

    zoo = frame["zoo"].iloc[0]
    rows, _ = detection_rows(frame[frame["zoo"] == zoo])
    keep = [DETECTION_COLUMNS.index(c) for c in ("defense", "attack", "detection rate",
                                                   "queries to detection (median, range)", "false-positive clients")]
    return _table([DETECTION_COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in rows])


GENERATORS = {"stateful-costs": stateful_costs, "stateful-detection": stateful_detection}


def render(text: str, frame: pd.DataFrame) -> str:
    return BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group("name")](frame) + m.group(4), text)


def main(argv: list[str]) -> int:
    frame = _results()
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = render(text, frame)
        if new != text:
            stale.append(page)
            if "--check" not in argv:
                page.write_text(new)
    if "--check" in argv and stale:
        print("out of date with leaderboard/results.csv: " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
