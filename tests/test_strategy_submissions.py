"""A strategy submission (``kind = "strategy"``): registered as a stand-in, usable as an attack's
``strategy``, its code sent to the attack process; validate runs it in the built-in naive attack and
rejects a broken one with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from psml_bench import STRATEGIES
from psml_bench.bench.cell import attack_locator
from psml_bench.bench.conformance import attack_conformance, validate_submission
from psml_bench.bench.grid import PluginSpec, resolve
from psml_bench.isolation.attack_process import STRATEGY_PACKAGE, plugin_sources
from psml_bench.plugins.manifests import grid_entries, load_manifest
from psml_bench.plugins.registration import register
from psml_bench.plugins.folders import folder_hash

from test_submissions import cli

EXAMPLE = Path(__file__).parent / "fixtures" / "strategies" / "contrast-pool"
VALID = "session.query_pool(torch.sort(chosen).values)"


def _broken(tmp_path: Path, name: str, line: str) -> Path:
    """A copy of the example under ``name`` whose last line (the queries it sends) is ``line``."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = (folder / "manifest.json").read_text().replace('"contrast-pool"', f'"{name}"')
    (folder / "manifest.json").write_text(manifest)
    code = folder / "contrast_pool.py"
    code.write_text(code.read_text().replace(VALID, line))
    return folder


def test_a_strategy_submission_is_a_stand_in_that_an_attack_carries_to_its_process():
    manifest = load_manifest(EXAMPLE)
    assert manifest.kind == "strategy"
    register(manifest)
    entry = STRATEGIES.entry("contrast-pool")
    assert entry.source == "submission contrast-pool/ v0.1.0" and entry.plugin.defaults == {"candidate_factor": 2}
    attack = resolve("attack", PluginSpec("naive", (("strategy", "contrast-pool"),)))
    assert attack.identity["strategy"] == {"version": "0.1.0", "source_sha256": folder_hash(EXAMPLE.resolve())}
    locator = attack_locator(attack)
    assert locator.strategy.submission == str(EXAMPLE.resolve()) and locator.strategy.entry == manifest.entry
    assert plugin_sources(locator)[f"{STRATEGY_PACKAGE}.contrast_pool"] == (EXAMPLE / "contrast_pool.py").read_text()
    assert attack_locator(resolve("attack", PluginSpec("naive", ()))).strategy is None  # built-in: nothing sent
    with pytest.raises(Exception, match="runs only in the isolated attack process"):
        entry.plugin().collect(None, None, None, None)


def test_a_strategy_submission_joins_no_grid_as_a_row(monkeypatch):
    monkeypatch.setenv("PSML_BENCH_SUBMISSIONS", str(EXAMPLE.parent))
    assert grid_entries("default", [EXAMPLE.parent]) == ([], [])


def test_a_valid_strategy_submission_validates_and_runs_in_a_tiny_zoo_cell(cache_dir, tiny_zoo):
    result = validate_submission(EXAMPLE, cache_dir=cache_dir, run=False)
    assert result.ok and [c.name for c in result.checks] == ["registers"]
    checks = {c.name: c
              for c in attack_conformance(tiny_zoo, "naive", ["rank:1"], params={"strategy": "contrast-pool"})}
    assert all(c.ok for c in checks.values()), checks
    assert "rank:1: same seed gives the same queries and the same surrogate" in checks
    # the naive attack spends its whole budget through the strategy
    assert checks["rank:1: stays within its budget (200 queries)"].detail.startswith("200 queries")


@pytest.mark.slow
def test_validate_runs_a_strategy_submission_on_every_victim_role(cache_dir):
    result = validate_submission(EXAMPLE, cache_dir=cache_dir)
    assert result.ok, (result.manifest_errors, result.checks)
    assert sum(c.name.endswith("same seed gives the same queries and the same surrogate") for c in result.checks) == 3


def test_cli_list_shows_a_strategy_submission(cache_dir):
    listed = cli("list", cache_dir=cache_dir, env_extra={"PSML_BENCH_SUBMISSIONS": str(EXAMPLE.parent)})
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "contrast-pool" in line)
    assert "| strategy" in row and "submission contrast-pool/ v0.1.0" in row and "candidate_factor=2" in row


@pytest.mark.parametrize("name, line, expected", [
    ("wrong-shape", "session.query(knowledge.pool[chosen][:, :, :5])",
     "InvalidQueryError: inputs must have shape (N, 1, 28, 28)"),
    ("over-budget", "session.query_pool(session.unqueried()[:session.remaining + 1])",
     "InvalidQueryError: 201 queries exceed the 200 left"),
    ("global-rng",
     "session.query_pool(torch.sort(unqueried[np.random.choice(len(unqueried), k, replace=False)]).values)",
     "global random state"),
], ids=["wrong-shape", "over-budget", "global-rng"])
def test_a_broken_strategy_submission_is_rejected_with_a_clear_message(tmp_path, tiny_zoo, name, line, expected):
    register(load_manifest(_broken(tmp_path, name, line)))
    checks = attack_conformance(tiny_zoo, "naive", ["rank:1"], params={"strategy": name})
    failed = [c for c in checks if not c.ok]
    assert len(failed) == 1, checks
    assert expected in failed[0].detail, failed[0].detail
