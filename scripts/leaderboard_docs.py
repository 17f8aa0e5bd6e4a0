"""Generate the measured tables of the docs from the committed leaderboard (leaderboard/results.csv) and the
committed shipped grids beside it (leaderboard/NAME/results.csv).

    python scripts/leaderboard_docs.py          # rewrite the tables in place
    python scripts/leaderboard_docs.py --check  # exit 1 if a table differs from the committed results

Each generated table sits between ``<!-- leaderboard: NAME -->`` and ``<!-- /leaderboard -->`` in a
page of docs/; everything outside the markers is written by hand and quotes no measured number of
the default grid without pointing to the leaderboard. ``tests/test_leaderboard_docs.py`` fails when
a table no longer matches the committed results.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGES = (ROOT / "docs" / "defenses.md", ROOT / "docs" / "protocol.md")
BLOCK = re.compile(r"(<!-- leaderboard: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /leaderboard -->)", re.S)
STATEFUL = ("prada", "adaptive-misinformation", "prediction-poisoning")


@functools.lru_cache(maxsize=None)
def _read(grid: str) -> pd.DataFrame:
    folder = ROOT / "leaderboard" / grid if grid else ROOT / "leaderboard"
    from psml_bench.report.results import read_results

    return read_results(folder / "results.csv")


def _results(grid: str = "") -> pd.DataFrame:
    """The committed results of ``grid`` (the default grid's leaderboard when empty), a fresh copy."""
    return _read(grid).copy()


def _estimate(cells: pd.DataFrame, metric: str) -> str:
    """The metric over the cells' seeds, formatted as on the page (:func:`psml_bench.report.ranking.estimate`)."""
    from psml_bench.report.ranking import estimate

    return estimate(cells, metric).format()


def _keep(columns: list[str], rows: list[list[str]], wanted: tuple[str, ...]) -> str:
    index = [columns.index(c) for c in wanted]
    return _table(list(wanted), [[row[i] for i in index] for row in rows])


def _protection(grid: str, zoo: str | None = None) -> pd.DataFrame:
    """A grid's protection table (every block view, the leaderboard's own computation), on one zoo if named
    (``""``: the default grid)."""
    from psml_bench.bench.grid import load_grid
    from psml_bench.report.ranking import describe_grid, protection_table

    config = load_grid(grid or "default")
    views, settings = describe_grid(config)
    frame = _results(grid)
    frame = frame[frame["zoo"] == zoo] if zoo else frame
    return protection_table(frame, views, settings, config.max_accuracy_drop, config.max_false_positives)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def stateful_costs(frame: pd.DataFrame) -> str:
    """Per stateful defense setting on the default zoo: goodput ratio, benign accuracy drop, false-positive clients."""
    zoo = frame["zoo"].iloc[0]
    rows = []
    part = frame[(frame["zoo"] == zoo) & frame["latency_visible"].astype(str).eq("True")]
    for defense, cells in part.groupby("defense", sort=True):
        if not defense.startswith(STATEFUL) and defense != "none":
            continue
        rows.append([f"`{defense}`"] + [_estimate(cells, m)
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


def deployable_detection(frame: pd.DataFrame) -> str:
    """query-hash's detections in the shipped grid ``deployable-defenses``."""
    from psml_bench.report.detection import DETECTION_COLUMNS, detection_rows

    rows, _ = detection_rows(_results("deployable-defenses"))
    rows = [row for row in rows if row[2].startswith("query-hash")]
    return _keep(DETECTION_COLUMNS, rows, ("defense", "attack", "detection rate",
                                           "queries to detection (median, range)", "false-positive clients"))


def deployable_ownership(frame: pd.DataFrame) -> str:
    """api-watermark's ownership test in the shipped grid ``deployable-defenses``."""
    from psml_bench.report.ownership_report import OWNERSHIP_COLUMNS, ownership_rows

    rows, _ = ownership_rows(_results("deployable-defenses"))
    return _keep(OWNERSHIP_COLUMNS, rows, ("defense", "attack", "pairs kept", "claimed",
                                           "queries to claim (median, range)", "surrogate agreement",
                                           "innocent claims", "benign acc. drop"))


def deployable_costs(frame: pd.DataFrame) -> str:
    """Per defense setting of ``deployable-defenses``: what benign users and the attacker pay, and the protection."""
    results = _results("deployable-defenses")
    protection = _protection("deployable-defenses").set_index("defense")
    rows = []
    for defense, cells in results.groupby("defense", sort=True):
        found = protection.loc[defense] if defense in protection.index else None
        rows.append([f"`{defense}`"] + [_estimate(cells, m) for m in
                                         ("goodput", "goodput_ratio", "latency_overhead", "attacker_time_s",
                                          "attacker_work_s")]
                    + [found["protection_estimate"].format() if found is not None else "—",
                       f"`{found['strongest_attack']}`" if found is not None else "—"])
    return ("Zoo `fmnist`, victim `rank:2`, budget 1000, load 0.5 (mean over the five attacks per seed, 95% "
            "t-interval over seeds 0-2; protection as on the page: the best undefended attack's fidelity minus "
            "the strongest attack's against the setting, paired by seed):\n\n"
            + _table(["setting", "goodput", "goodput ratio", "latency overhead", "attacker time (s)",
                      "attacker work (s)", "protection", "strongest attack"], rows))


def _cells(results: pd.DataFrame, attack: str, defense: str) -> pd.DataFrame:
    return results[(results["attack"] == attack) & (results["defense"] == defense)]


def threat_data(frame: pd.DataFrame) -> str:
    """Per attacker data source of the ``threat-models`` grid: each defense's protection, the strongest attack."""
    table = _protection("threat-models")
    table = table[table["block"].str.startswith("attacker-data") & (table["defense"] != "none")]
    rows = [[str(row["block"]).split("(")[1].split(",")[0], f"`{row['defense']}`", row["protection_estimate"].format(),
             f"`{row['strongest_attack']}`", row["fidelity_estimate"].format(), row["ineligible"] or "yes"]
            for _, row in table.iterrows()]
    return _table(["attacker data", "defense", "protection", "strongest attack", "its fidelity", "eligible"], rows)


def threat_aware(frame: pd.DataFrame) -> str:
    """In-distribution attackers of ``threat-models`` against each defense: fidelity, and psml-aware - psml paired."""
    from psml_bench.report.intervals import paired_difference
    from psml_bench.report.ranking import ok_values

    results = _results("threat-models")
    attacks = ("psml", "psml-aware", "knockoff(sampling=adaptive)", "psml(strategy=dfme)")
    rows = []
    for defense in sorted(set(results["defense"])):
        cells = {a: _cells(results, a, defense) for a in attacks}
        by = {a: ok_values(cells[a], "fidelity") for a in attacks}
        rows.append([f"`{defense}`"] + [_estimate(cells[a], "fidelity") for a in attacks]
                    + [paired_difference(by["psml-aware"], by["psml"]).format(),
                       paired_difference(by["knockoff(sampling=adaptive)"], by["psml"]).format()])
    return _table(["defense", *(f"`{a}`" for a in attacks), "psml-aware - psml", "knockoff - psml"], rows)


def threat_sybil(frame: pd.DataFrame) -> str:
    """PRADA against a Sybil attacker in ``threat-models``: detection and fidelity per identity count."""
    from psml_bench.report.detection import DETECTION_COLUMNS, detection_rows

    results = _results("threat-models")
    rows, _ = detection_rows(results[results["defense"].str.startswith("prada")])
    index = {name: DETECTION_COLUMNS.index(name) for name in DETECTION_COLUMNS}
    out = []
    for row in rows:
        attack = row[index["attack"]]
        out.append([f"`{attack}`", row[index["detection rate"]], row[index["queries to detection (median, range)"]],
                    _estimate(_cells(results, attack, "none"), "fidelity"),
                    _estimate(_cells(results, attack, row[index["defense"]]), "fidelity")])
    return ("`prada(delta=0.95)`, zoo `fmnist`, victim `rank:2`, budget 1000, load 0.5, seeds 0-2 (false-positive "
            "benign clients as in the detection table above):\n\n"
            + _table(["attacker", "detection rate", "queries to detection (median, range)", "fidelity undefended",
                      "fidelity under prada"], out))


def routing(frame: pd.DataFrame) -> str:
    """The ``routing`` and ``routing-infaas`` grids side by side, cell for cell."""
    slo, blind = _results("routing"), _results("routing-infaas")
    rows = []
    for (attack, load), cells in slo.groupby(["attack", "load"], sort=True):
        other = blind[(blind["attack"] == attack) & (blind["load"] == load)]
        rows.append([f"`{attack}`", f"{load:g}"] + [_estimate(part, m) for m in
                                                   ("victim_hit_rate", "fingerprint_accuracy", "fidelity", "goodput")
                                                   for part in (cells, other)])
    header = ["attack", "load"] + [f"{m} ({p})" for m in ("victim hit rate", "fingerprint acc.", "fidelity",
                                                         "goodput") for p in ("infaas-slo", "infaas")]
    return ("Zoo `fmnist`, victim `rank:2`, budget 1000, soft labels, latencies shown, seeds 0-2 (mean ± half-width "
            "of the 95% t-interval; `load` is a fraction of each router's own capacity at the SLO):\n\n"
            + _table(header, rows))


def routing_defenses(frame: pd.DataFrame) -> str:
    """The spec-defenses block on fmnist under infaas-slo (the default grid) and infaas (spec-defenses-infaas)."""
    slo = _protection("", "fmnist")
    slo = slo[(slo["block"] == "spec-defenses") & (slo["load"] == 0.5)].set_index("defense")
    blind = _protection("spec-defenses-infaas").set_index("defense")
    rows = []
    for defense in blind.index:
        if defense not in slo.index:
            continue
        a, b = slo.loc[defense], blind.loc[defense]
        rows.append([f"`{defense}`", a["protection_estimate"].format(), b["protection_estimate"].format(),
                     a["fidelity_estimate"].format(), b["fidelity_estimate"].format(),
                     a["goodput_ratio_estimate"].format(), b["goodput_ratio_estimate"].format()])
    return ("Zoo `fmnist`, victim `rank:2`, budget 1000, psml and psml-adaptive, 8 benign clients at load 0.5 of each "
            "router's capacity, seeds 0-2 (strongest attack's fidelity; protection and goodput ratio paired with "
            "the same router's undefended cells):\n\n"
            + _table(["defense", "protection (infaas-slo)", "protection (infaas)", "strongest fidelity (infaas-slo)",
                      "strongest fidelity (infaas)", "goodput ratio (infaas-slo)", "goodput ratio (infaas)"], rows))


def _comparison_text(what: str) -> str:
    """``psml - naive`` as `` `psml` - `naive` ``, ``protection of X`` as ``protection of `X` ``."""
    if what.startswith("protection of "):
        return f"protection of `{what.removeprefix('protection of ')}`"
    return " - ".join(f"`{label}`" for label in what.split(" - "))


def headline_sequential(frame: pd.DataFrame) -> str:
    """Each headline comparison of the shipped grid ``headline-sequential``: its paired estimate on the default
    grid's declared seeds and after the sequential seeds, how many seeds it ran, and whether it is resolved."""
    from psml_bench.bench.grid import load_grid
    from psml_bench.report.intervals import t_interval
    from psml_bench.report.sequential_seeds import grid_decisions

    grid = load_grid("headline-sequential")
    decided = grid_decisions(_results("headline-sequential"), grid)
    rows = []
    for view, comparison, decision in decided:
        declared = [comparison.differences[s] for s in view.seeds if s in comparison.differences]
        rows.append([f"`{comparison.zoo}`", f"`{view.name}`", str(comparison.budget), f"{comparison.load:g}",
                     _comparison_text(comparison.what), t_interval(declared).format(), decision.estimate.format(),
                     str(len(comparison.differences)), decision.status])
    resolved, total = sum(decision.resolved for _, _, decision in decided), len(decided)
    rule = next(view.sequential for view, _, _ in decided)
    return (f"Victim `rank:2`; `load`: the benign load as a fraction of the capacity at the SLO; paired differences "
            f"of fidelity (mean ± half-width of the 95% t-interval over seeds); resolved at a half-width <= "
            f"{rule.target_half_width:g}, at most {rule.seed_cap} seeds. {resolved} of {total} headline comparisons "
            "resolved:\n\n" + _table(["zoo", "block", "budget", "load", "comparison", "declared seeds",
                                      "after sequential seeds", "seeds", "status"], rows))


GENERATORS = {"stateful-costs": stateful_costs, "stateful-detection": stateful_detection,
              "deployable-detection": deployable_detection, "deployable-ownership": deployable_ownership,
              "deployable-costs": deployable_costs, "threat-data": threat_data, "threat-aware": threat_aware,
              "threat-sybil": threat_sybil, "routing": routing,
              "routing-defenses": routing_defenses, "headline-sequential": headline_sequential}


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
