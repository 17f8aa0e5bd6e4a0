"""`psml-bench validate` cannot be fooled: the folder at PATH is what is tested, names are unique,
every problem is reported at once, manifests and classes agree, and conformance catches global RNG use."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from psml_bench import ATTACKS, DEFENSES, Allowed, ConfigError, Defense, Spec
from psml_bench.bench.conformance import attack_conformance, defense_conformance, validate_submission
from psml_bench.isolation.attack_process import sandbox_available
from psml_bench.contract.errors import DefenseError, ManifestError
from psml_bench.bench.grid import load_grid
from psml_bench.plugins.manifests import load_manifest
from psml_bench.plugins.registration import load_submissions, register
from psml_bench.plugins.folders import SUBMISSIONS_ENV
from psml_bench.serving.frontend import Frontend

from test_submissions import EXAMPLES, GOOD, DEMO, cli, write_submission

ATTACK_MANIFEST = {"kind": "attack", "version": "1", "authors": ["A. Author"], "license": "MIT",
                   "description": "An attack written for the tests.", "parameters": {}, "grids": ["nowhere"]}


def _copy_example(tmp_path: Path, name: str = "uncertainty-sampling") -> Path:
    copy = tmp_path / name
    shutil.copytree(EXAMPLES / "uncertainty-sampling", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_wrong_class_copy_under_a_clashing_name_is_rejected_naming_both_folders(tmp_path, cache_dir):
    copy = _copy_example(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "entry": "uncertainty_sampling:Wrong"}))
    result = validate_submission(copy, cache_dir=cache_dir)
    assert not result.ok and not result.checks
    errors = "\n".join(result.manifest_errors)
    assert "defines no class 'Wrong'" in errors
    assert str(copy / "manifest.json") in errors and str(EXAMPLES / "uncertainty-sampling") in errors
    assert "must be unique" in errors


def test_a_name_taken_by_a_builtin_is_an_error_naming_its_file(tmp_path, cache_dir):
    folder = write_submission(tmp_path, {**ATTACK_MANIFEST, "name": "psml", "entry": "mine:Mine"},
                              {"mine.py": "from psml_bench import Attack\n\nclass Mine(Attack):\n    pass\n"})
    result = validate_submission(folder, cache_dir=cache_dir, run=False)
    assert len(result.manifest_errors) == 1
    assert "built-in attack" in result.manifest_errors[0] and "attacks/psml.py" in result.manifest_errors[0]


SHORTCUT = '''
from psml_bench import Attack


class Shortcut(Attack):
    def run(self, target, knowledge, budget, rng):
        return {returns}
'''


def test_validate_runs_the_code_of_the_folder_at_path(tmp_path, cache_dir):
    """A copy under a free name runs its own code: a tuple return fails every victim role."""
    folder = write_submission(tmp_path, {**ATTACK_MANIFEST, "name": "shortcut", "entry": "shortcut:Shortcut"},
                              {"shortcut.py": SHORTCUT.format(returns="(None, None)")})
    result = validate_submission(folder, cache_dir=cache_dir)
    assert [c.name for c in result.checks] == ["registers", "the manifest's parameters are class Shortcut's",
                                               "rank:1: runs in the isolated attack process and returns a Surrogate"]
    assert not result.checks[2].ok and "attack returned tuple" in result.checks[2].detail


def test_modules_of_the_same_name_in_two_submissions_do_not_collide(tmp_path):
    directory = tmp_path / "subs"
    for name, scale in (("first-defense", 0.1), ("second-defense", 0.2)):
        text = DEMO.replace("0.1", str(scale))
        write_submission(directory, {**GOOD, "name": name, "entry": "defense:Demo", "grids": ["nowhere"],
                                     "parameters": {"scale": {"type": "number", "default": scale}},
                                     "sweep": {"parameter": "scale", "values": [scale]}},
                         {"defense.py": text, "json.py": ""})  # a module named like the standard library too
    loaded = load_submissions([directory])
    assert [r.ok for r in loaded] == [True, True], [r.errors for r in loaded]
    assert DEFENSES.get("first-defense").defaults == {"scale": 0.1}
    assert DEFENSES.get("second-defense").defaults == {"scale": 0.2}


def test_a_manifest_with_three_mistakes_reports_three_problems_in_one_run(tmp_path, cache_dir):
    manifest = {**GOOD, "version": "v1", "entry": "demo_defense:Missing",
                "parameters": {"scale": {"type": "number", "default": "big"}}}
    folder = write_submission(tmp_path, manifest, {"demo_defense.py": DEMO})
    with pytest.raises(ManifestError) as error:
        load_manifest(folder)
    fields = [line.split("field ")[1].split(":")[0] for line in error.value.errors]
    assert fields == ["'version'", "'parameters.scale.default'", "'entry'"], error.value.errors
    assert "demo_defense.py defines no class 'Missing'; classes there: Demo" in error.value.errors[2]
    result = cli("validate", str(folder), cache_dir=cache_dir)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 4, result.stderr  # three problems, then "is not valid"


def test_manifest_rules_become_the_plugins_allowed_values(tmp_path, monkeypatch):
    params = {"rate": {"type": "number", "default": 0.5, "minimum": 0, "maximum": 1},
              "mode": {"type": "string", "default": "a", "choices": ["a", "b"]}}
    folder = write_submission(tmp_path, {**ATTACK_MANIFEST, "name": "ruled", "entry": "ruled:Ruled",
                                         "parameters": params, "grids": ["ruled"]},
                              {"ruled.py": "from psml_bench import Attack\n\nclass Ruled(Attack):\n    pass\n"})
    register(load_manifest(folder))
    cls = ATTACKS.get("ruled")
    assert cls.allowed["rate"] == Allowed(minimum=0, maximum=1) and cls.allowed["mode"] == Allowed(choices=("a", "b"))
    with pytest.raises(ConfigError, match=r"parameter 'rate' must be in \[0, 1\], got 2"):
        cls(rate=2)
    with pytest.raises(ConfigError, match="parameter 'mode' must be 'a' or 'b'"):
        cls(mode="c")
    grid = tmp_path / "ruled.toml"
    grid.write_text('name = "ruled"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [40]\nseeds = [0]\n'
                    '[[attacks]]\nname = "ruled"\nparams = { rate = 1.5 }\n[[defenses]]\nname = "none"\n')
    with pytest.raises(ConfigError, match=r"attacks.0': attack 'ruled' parameter 'rate' must be in \[0, 1\]"):
        load_grid(grid)
    bad = {**params, "rate": {**params["rate"], "default": 2}, "mode": {**params["mode"], "choices": ["a", 1]}}
    (folder / "manifest.json").write_text(json.dumps({**json.loads((folder / "manifest.json").read_text()),
                                                      "parameters": bad}))
    with pytest.raises(ManifestError) as error:
        load_manifest(folder)
    assert len(error.value.errors) == 2
    assert "'parameters.rate.default': 2 is not allowed; the parameter must be in [0, 1]" in error.value.errors[0]
    assert "'parameters.mode.choices.1': expected a string" in error.value.errors[1]


@pytest.mark.skipif(not sandbox_available(), reason="a submitted defense runs in the sandbox")
def test_a_defense_that_disagrees_with_its_manifest_is_an_error_not_overwritten(tmp_path):
    code = ("from psml_bench import Defense\n\nclass Demo(Defense):\n    version = '2.0'\n    strength = 'scale'\n"
            "    defaults = {'scale': 0.2, 'extra': 1}\n")
    manifest = {**GOOD, "name": "disagrees", "version": "1.0", "entry": "disagrees_defense:Demo",
                "parameters": {"scale": {"type": "number", "default": 0.1},
                               "phantom": {"type": "integer", "default": 3}}}
    folder = write_submission(tmp_path, manifest, {"disagrees_defense.py": code})
    register(load_manifest(folder))  # the harness imports nothing: the class is read in its defense process
    cls = DEFENSES.get("disagrees")
    assert cls.defaults == {"scale": 0.1, "phantom": 3} and cls.version == "1.0"  # the manifest's, not overwritten
    checks = defense_conformance(None, "disagrees", [])
    assert len(checks) == 1 and not checks[0].ok and checks[0].name == "instantiates with its defaults"
    text = checks[0].detail
    assert text.startswith(f"defense 'disagrees' raised ConfigError: {folder}/manifest.json "
                           "disagrees with class Demo: ")
    assert "parameter(s) extra are not declared" in text and "phantom declared but not in the class's defaults" in text
    assert "'parameters.scale.default': the class's default is 0.2, the manifest's 0.1" in text
    assert "the class sets version '2.0', the manifest '1.0'" in text
    assert text.endswith("`psml-bench validate --write-parameters` rewrites the manifest's parameters from the class")


def test_an_attack_that_disagrees_with_its_manifest_fails_in_its_process(tmp_path, tiny_zoo):
    code = "from psml_bench import Attack\n\nclass Mine(Attack):\n    defaults = {'depth': 3}\n"
    folder = write_submission(tmp_path, {**ATTACK_MANIFEST, "name": "mismatch", "entry": "mine:Mine",
                                         "parameters": {"width": {"type": "integer", "default": 3}}},
                              {"mine.py": code})
    register(load_manifest(folder))
    checks = attack_conformance(tiny_zoo, "mismatch", ["rank:1"])
    assert len(checks) == 1 and not checks[0].ok
    assert "manifest.json disagrees with class Mine" in checks[0].detail
    assert "depth are not declared" in checks[0].detail and "width declared but not" in checks[0].detail


FINGERPRINTING = '''
import numpy as np

from psml_bench import Attack, Spec, SurrogateConfig, extract


class Probe(Attack):
    """Sweeps the accuracy floor with one probe input to find the victim's region, then extracts."""

    defaults = {{"min_steps": 20, "epochs": 1}}

    def run(self, target, knowledge, budget, rng):
        (a_lo, a_hi), (_, l_hi) = knowledge.spec_range.accuracy, knowledge.spec_range.latency_ms
        probe = knowledge.pool[int({chooser}(len(knowledge.pool)))].unsqueeze(0)
        levels = np.linspace(a_lo, a_hi, 12)
        answers = [target.query(probe, Spec(float(a), l_hi), purpose="fingerprint")[0] for a in levels]
        changes = [i for i in range(1, len(levels)) if (answers[i] - answers[i - 1]).abs().max() > 1e-4]
        k = min(knowledge.rank, len(changes) + 1)
        bounds = [a_lo] + [levels[i] for i in changes] + [a_hi]
        lo, hi = bounds[-k - 1], bounds[-k]
        config = SurrogateConfig(min_steps=self.params["min_steps"], epochs=self.params["epochs"])
        return extract(target, knowledge, Spec((lo + hi) / 2, l_hi), target.remaining_budget, rng, config)
'''


@pytest.mark.parametrize("chooser, deterministic", [("np.random.randint", False), ("rng.integers", True)],
                         ids=["global-rng", "seeded-rng"])
def test_conformance_catches_a_fingerprinting_attack_that_uses_global_random_state(tmp_path, tiny_zoo, chooser,
                                                                                   deterministic):
    """The planted bug: the probe input is drawn from numpy's global generator, not from ``rng``."""
    name = f"probe-{'seeded' if deterministic else 'global'}"
    folder = write_submission(tmp_path, {**ATTACK_MANIFEST, "name": name, "entry": "probe:Probe",
                                         "parameters": {"min_steps": {"type": "integer", "default": 20},
                                                        "epochs": {"type": "integer", "default": 1}}},
                              {"probe.py": FINGERPRINTING.format(chooser=chooser)})
    register(load_manifest(folder))
    checks = {c.name: c for c in attack_conformance(tiny_zoo, name, ["rank:2"])}
    assert checks["rank:2: runs in the isolated attack process and returns a Surrogate"].ok
    assert "12 to fingerprint" in checks["rank:2: stays within its budget (200 queries)"].detail
    same = checks["rank:2: same seed gives the same queries and the same surrogate"]
    assert same.ok == deterministic, same
    if not deterministic:
        assert same.detail.startswith("the two runs sent different queries") and "global random state" in same.detail


def test_an_unknown_parameter_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match="has no parameter\\(s\\) tolerence; did you mean 'tolerance'"):
        ATTACKS.get("psml")(tolerence=0.1)


def test_an_unknown_plugin_defined_here_says_how_to_name_it(tmp_path, monkeypatch):
    (tmp_path / "my_probe.py").write_text("from psml_bench import Attack, register_attack\n\n"
                                          "@register_attack('probe-here')\nclass ProbeHere(Attack):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    for name in ("probe-here", "ProbeHere"):
        with pytest.raises(Exception, match="my_probe.py here defines ProbeHere, which nobody imported; name it "
                                            "'my_probe:ProbeHere'"):
            ATTACKS.get(name)
    with pytest.raises(Exception, match="class Naive is registered as 'naive'"):
        ATTACKS.get("Naive")


def test_a_submission_left_out_of_a_grid_is_logged_with_the_reason(caplog, monkeypatch):
    monkeypatch.setenv(SUBMISSIONS_ENV, str(EXAMPLES))
    with caplog.at_level(logging.INFO):
        load_grid("tiny")
    assert ("submission uncertainty-sampling left out of grid 'tiny': its manifest's 'grids' lists default (add "
            "'tiny' or '*' to join)") in caplog.text


class _NumpyAnswers(Defense):
    def postprocess(self, probabilities, rng):
        return probabilities.numpy()


def test_a_numpy_answer_from_postprocess_says_a_tensor_is_expected(tiny_zoo):
    server = Frontend(tiny_zoo, defense=_NumpyAnswers(), rng=np.random.default_rng(0))
    spec = Spec(sum(server.spec_range.accuracy) / 2, sum(server.spec_range.latency_ms) / 2)
    with pytest.raises(DefenseError, match=r"must return a torch.Tensor of shape \(4, 10\), got numpy.ndarray "
                                           r"\(convert it with torch.from_numpy\)"):
        server.query(tiny_zoo.splits["benign_x"][:4], spec)


def test_a_folder_with_data_files_or_above_the_size_cap_is_rejected_listing_them(tmp_path, cache_dir, caplog):
    from psml_bench.plugins.folders import folder_problems

    folder = _copy_example(tmp_path)
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "cached.pyc").write_bytes(b"\0" * 2**21)  # Python's own cache does not count
    (folder / "NOTES.md").write_text("notes\n")
    assert folder_problems(folder) == []
    (folder / "pool.npy").write_bytes(b"\0" * 100)
    (folder / "weights").mkdir()
    (folder / "weights" / "victim.pt").write_bytes(b"\0" * 100)
    (folder / "link.py").symlink_to(folder / "NOTES.md")
    (folder / "padding.txt").write_text("x" * 2**20)
    result = validate_submission(folder, cache_dir=cache_dir)  # a manifest error: nothing is run
    assert not result.ok and not result.checks
    data, size = [e for e in result.manifest_errors if e.startswith(f"{folder}: ")]  # beside the copy's name clash
    assert data == (f"{folder}: data files are not accepted (a submission carries only manifest.json and .py, .toml, "
                    f".md, .txt files, no symbolic links): link.py, pool.npy, weights/victim.pt")
    assert size.startswith(f"{folder}: the folder holds 1.0 MiB, above the 1 MiB cap; "
                           "largest: padding.txt (1.00 MiB), ")
    with caplog.at_level(logging.WARNING):  # a grid loading the folder skips it, saying the same
        loaded = load_submissions([tmp_path])
    assert [r.ok for r in loaded] == [False] and loaded[0].errors == (data, size)
    assert f"submission {folder.name} skipped: {data}" in caplog.text
