"""Submissions: manifests, `psml-bench validate`, grids with submissions, sanity flags."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from psml_bench.bench.grid import load_grid
from psml_bench.runner import make_executor, run_grid
from psml_bench.bench.conformance import validate_submission
from psml_bench.contract.errors import ManifestError
from psml_bench.plugins.manifests import load_manifest
from psml_bench.plugins.folders import SUBMISSIONS_ENV, submission_folders
from psml_bench.bench.sanity import agreement_ceiling, surrogate_flags

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "submissions"

GOOD = {
    "name": "demo", "kind": "defense", "entry": "demo_defense:Demo", "version": "0.1.0", "authors": ["A. Author"],
    "description": "A demo defense that changes nothing.", "license": "MIT",
    "parameters": {"scale": {"type": "number", "default": 0.1}}, "sweep": {"parameter": "scale", "values": [0.1]},
}
DEMO = "from psml_bench import Defense\n\nclass Demo(Defense):\n    strength = 'scale'\n    defaults = {'scale': 0.1}\n"


def write_submission(directory: Path, manifest: dict, files: dict[str, str]) -> Path:
    folder = directory / manifest.get("name", "nameless")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest) if isinstance(manifest, dict) else manifest)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("folder", submission_folders([EXAMPLES]), ids=lambda p: p.name)
def test_every_submission_folder_validates(folder, cache_dir):
    """What CI runs: every folder of submissions/ passes `psml-bench validate`."""
    result = validate_submission(folder, cache_dir=cache_dir)
    assert not result.manifest_errors, result.manifest_errors
    assert result.checks and all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]
    assert result.ok


def test_the_worked_examples_are_one_attack_and_one_defense():
    kinds = sorted(load_manifest(folder).kind for folder in submission_folders([EXAMPLES]))
    assert kinds == ["attack", "defense"]
    for folder in submission_folders([EXAMPLES]):
        for path in folder.rglob("*.py"):
            text = path.read_text()
            assert "psml_bench._" not in text and "from psml_bench." not in text, path


MALFORMED = [
    ("missing field", lambda m: m.pop("kind"), "'kind'", "is required"),
    ("bad kind", lambda m: m.update(kind="attak"), "'kind'", "'attak' is not one of ['attack', 'defense', 'strategy']"),
    ("bad entry", lambda m: m.update(entry="demo_defense.Demo"), "'entry'", "does not match"),
    ("bad version", lambda m: m.update(version="v1"), "'version'", "does not match"),
    ("no authors", lambda m: m.update(authors=[]), "'authors'", "should be non-empty"),
    ("unknown field", lambda m: m.update(homepage="x"), "'homepage'", "is not a manifest field; expected one of"),
    ("bad parameter type", lambda m: m["parameters"]["scale"].update(type="float"), "'parameters.scale.type'",
     "'float' is not one of"),
    ("default of the wrong type", lambda m: m["parameters"]["scale"].update(default="big"),
     "'parameters.scale.default'", "expected a number, got 'big'"),
    ("sweep on an undeclared parameter", lambda m: m["sweep"].update(parameter="noise"), "'sweep.parameter'",
     "expected one of the declared parameters (scale), got 'noise'"),
    ("sweep value of the wrong type", lambda m: m["sweep"].update(values=[0.1, "x"]), "'sweep.values.1'",
     "expected a number"),
    ("sweep on an attack", lambda m: m.update(kind="attack"), "'sweep'", "only a defense declares"),
    ("name is not the folder", lambda m: m.update(name="other"), "'name'", "expected the folder's name"),
    ("missing module", lambda m: m.update(entry="nowhere:Demo"), "'entry'", "found no such file"),
]


@pytest.mark.parametrize("case, change, field, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_manifests_are_rejected_with_one_line_naming_the_field(tmp_path, case, change, field, expected):
    manifest = json.loads(json.dumps(GOOD))
    change(manifest)
    folder = tmp_path / "demo"
    write_submission(tmp_path, {**manifest, "name": manifest.get("name", "demo")} if case != "name is not the folder"
                     else manifest, {"demo_defense.py": DEMO})
    if case == "name is not the folder":
        shutil.move(str(tmp_path / "other"), str(folder))
    with pytest.raises(ManifestError) as error:
        load_manifest(folder)
    assert len(error.value.errors) == 1, error.value.errors
    line = error.value.errors[0]
    assert "\n" not in line and f"field {field}" in line and expected in line, line
    assert line.startswith(str(folder / "manifest.json"))


def test_invalid_json_and_missing_manifest(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="invalid JSON"):
        load_manifest(tmp_path / "a")


def cli(*args, cache_dir, env_extra=None):
    env = {**os.environ, "PSML_BENCH_CACHE": str(cache_dir), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "psml_bench.cli", "-q", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_validate_prints_one_line_per_manifest_error(tmp_path, cache_dir):
    manifest = {**GOOD, "kind": "both", "version": 3}
    folder = write_submission(tmp_path, manifest, {"demo_defense.py": DEMO})
    result = cli("validate", str(folder), cache_dir=cache_dir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert "field 'kind'" in lines[0] and "field 'version'" in lines[1] and "is not valid" in lines[2]


def test_cli_list_shows_where_each_plugin_comes_from(cache_dir):
    result = cli("list", cache_dir=cache_dir)
    assert result.returncode == 0
    lines = {line.split("|")[2].strip(): line for line in result.stdout.splitlines()[2:]}
    assert "built-in" in lines["psml"]
    assert "submission uncertainty-sampling/ v1.0.0" in lines["uncertainty-sampling"]
    assert "submission round-probs/ v1.0.0" in lines["round-probs"]


HOSTILE_ATTACK = '''
import glob
import os

from psml_bench import Attack, Spec


class Hostile(Attack):
    def run(self, target, knowledge, budget, rng):
        mode = {mode!r}
        spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
        if mode == "raises":
            raise RuntimeError("boom")
        if mode == "overruns":
            target.query(knowledge.pool[:budget + 1], spec)
        if mode == "steals":
            weights = glob.glob(os.path.join({cache!r}, "zoos", "*", "weights", "*.safetensors"))
            open(weights[0], "rb").read(10)
            raise RuntimeError("read the weights")
'''

NOT_PROBABILITIES = '''
from psml_bench import Defense


class Doubles(Defense):
    def postprocess(self, probabilities, rng):
        return probabilities * 2
'''

FAKE_DETERMINISM = '''
import torch

from psml_bench import Defense


class Jitter(Defense):
    def postprocess(self, probabilities, rng):
        noisy = probabilities + torch.from_numpy(rng.uniform(0, 0.01, size=probabilities.shape)).float()
        return noisy / noisy.sum(dim=1, keepdim=True)
'''


def _attack_manifest(name: str) -> dict:
    return {"name": name, "kind": "attack", "entry": f"{name.replace('-', '_')}:Hostile", "version": "1",
            "authors": ["Mallory"], "description": "A hostile attack for the tests.", "license": "MIT",
            "parameters": {}, "grids": ["hostile"]}


def _defense_manifest(name: str, entry: str) -> dict:
    return {"name": name, "kind": "defense", "entry": entry, "version": "1", "authors": ["Mallory"],
            "description": "A defense that breaks a sanity check.", "license": "MIT", "parameters": {},
            "grids": ["hostile"]}


def test_grid_with_hostile_and_invalid_submissions_completes(tiny_zoo, cache_dir, tmp_path, monkeypatch, caplog):
    submitted = tmp_path / "submitted"
    for mode in ("raises", "overruns", "steals"):
        name = f"hostile-{mode}"
        write_submission(submitted, _attack_manifest(name),
                         {f"{name.replace('-', '_')}.py": HOSTILE_ATTACK.format(mode=mode, cache=str(cache_dir))})
    write_submission(submitted, _defense_manifest("doubles", "doubles_defense:Doubles"),
                     {"doubles_defense.py": NOT_PROBABILITIES})
    write_submission(submitted, _defense_manifest("jitter", "jitter_defense:Jitter"),
                     {"jitter_defense.py": FAKE_DETERMINISM})
    write_submission(submitted, {**_attack_manifest("broken"), "kind": "spy"}, {"broken.py": ""})
    monkeypatch.setenv(SUBMISSIONS_ENV, os.pathsep.join([str(submitted), str(EXAMPLES)]))
    grid_path = tmp_path / "grid.toml"
    grid_path.write_text(
        'name = "hostile"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [40]\nseeds = [0]\n'
        'benign_queries = 60\n'
        '[[attacks]]\nname = "naive"\nparams = { min_steps = 10, epochs = 1 }\n'
        '[[attacks]]\nname = "uncertainty-sampling"\nparams = { min_steps = 10, epochs = 1 }\n'
        '[[defenses]]\nname = "none"\n[[defenses]]\nname = "round-probs"\nsweep = { decimals = [1] }\n')
    grid = load_grid(grid_path)
    assert "broken" in caplog.text and "field 'kind'" in caplog.text
    attacks = [a.name for a in grid.attacks]
    defenses = [d.name for d in grid.defenses]
    assert attacks == ["naive", "uncertainty-sampling", "hostile-overruns", "hostile-raises", "hostile-steals"]
    assert defenses == ["none", "round-probs", "doubles", "jitter"]
    out = tmp_path / "lb"
    summary = run_grid(grid, out, cache_dir=cache_dir, executor=make_executor("local", jobs=2, timeout_s=300),
                       progress=False)
    assert len(summary.rows) == 20
    by = {(r.attack, r.defense): r for r in summary.rows}
    for defense in ("none", "round-probs(decimals=1)", "doubles", "jitter"):
        assert by[("hostile-raises", defense)].error == "the attack raised RuntimeError: boom"
        assert by[("hostile-overruns", defense)].error.startswith(
            "budget overrun: query of 41 inputs exceeds the remaining budget of 40")
        assert by[("hostile-overruns", defense)].queries == 0
        steals = by[("hostile-steals", defense)].error
        assert steals.startswith(("the attack raised PermissionError", "the attack raised IndexError")), steals
        for attack in ("naive(epochs=1,min_steps=10)", "uncertainty-sampling(epochs=1,min_steps=10)"):
            assert by[(attack, defense)].status == "ok", by[(attack, defense)].error
    assert by[("naive(epochs=1,min_steps=10)", "none")].flags == ""
    assert by[("naive(epochs=1,min_steps=10)", "round-probs(decimals=1)")].flags == ""
    assert by[("naive(epochs=1,min_steps=10)", "doubles")].flags == "defense outputs are not probability vectors"
    assert by[("naive(epochs=1,min_steps=10)", "jitter")].flags == (
        "defense claims deterministic = True but answered identical calls differently")
    page = (out / "README.md").read_text()
    assert "## Potentially unreliable" in page and "uncertainty-sampling" in page and "round-probs" in page
    with open(out / "results.csv") as handle:
        assert "flags" in next(csv.reader(handle))


class _Cheat(torch.nn.Module):
    """Knows the victim's answers on the test inputs (as a leaked test set would) and guesses elsewhere."""

    def __init__(self, test_x: torch.Tensor, victim_labels: torch.Tensor, num_classes: int):
        super().__init__()
        self.keys = {hash(x.numpy().tobytes()): int(y) for x, y in zip(test_x, victim_labels)}
        self.num_classes = num_classes

    def forward(self, x):
        labels = [self.keys.get(hash(row.numpy().tobytes()), 0) for row in x]
        return torch.nn.functional.one_hot(torch.tensor(labels), self.num_classes).float()


def test_agreement_ceiling_flags_a_surrogate_that_saw_test_data(tiny_zoo):
    victim_id = tiny_zoo.role("rank:1")
    victim_labels = tiny_zoo.test_predictions[victim_id].argmax(1)
    cheat = _Cheat(tiny_zoo.splits["test_x"], victim_labels, tiny_zoo.num_classes)
    flags = surrogate_flags(tiny_zoo, victim_id, cheat, fidelity=1.0)
    assert len(flags) == 1 and "above the agreement ceiling" in flags[0]
    honest = tiny_zoo.model(victim_id)  # the victim agrees with itself everywhere
    assert surrogate_flags(tiny_zoo, victim_id, honest, fidelity=1.0) == []
    assert agreement_ceiling(0.9, 2000, 10000) == pytest.approx(0.9 + 3 * np.sqrt(0.09 * (1 / 2000 + 1 / 10000)) + 0.02)


def test_decorated_plugins_outside_the_builtins_are_labelled_by_module(tmp_path, monkeypatch):
    from psml_bench import ATTACKS

    (tmp_path / "labelled_attack.py").write_text(
        "from psml_bench import Attack, register_attack\n\n"
        "@register_attack('labelled')\n"
        "class Labelled(Attack):\n"
        "    def run(self, target, knowledge, budget, rng):\n"
        "        raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ATTACKS.get("labelled_attack:Labelled")
    assert ATTACKS.entry("labelled").source == "module labelled_attack"
    assert ATTACKS.entry("psml").source == "built-in"


def test_a_grid_naming_a_submission_says_its_sweep_is_not_used(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(SUBMISSIONS_ENV, str(EXAMPLES))
    grid_path = tmp_path / "grid.toml"
    grid_path.write_text(
        'name = "default"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [40]\nseeds = [0]\n'
        '[[attacks]]\nname = "naive"\n[[defenses]]\nname = "round-probs"\nparams = { decimals = 3 }\n')
    with caplog.at_level("WARNING"):
        grid = load_grid(grid_path)
    assert "names submission 'round-probs' itself, so its manifest's sweep is not used" in caplog.text
    assert [d.kwargs for d in grid.defenses if d.name == "round-probs"] == [{"decimals": 3}]

