"""The manifest's parameters derived from the class: `psml-bench validate --write-parameters` fills and rewrites
them from the class (read in the sandbox), keeps descriptions, writes only a change, and `validate` fails while
they differ, saying so."""

from __future__ import annotations

import json
import shutil

import pytest

from psml_bench import SURROGATE_DEFAULTS, Allowed, Attack
from psml_bench.bench.conformance import parameters_check, validate_submission
from psml_bench.contract.errors import ManifestError
from psml_bench.isolation.attack_process import sandbox_available
from psml_bench.isolation.declaration import Declaration, class_declaration
from psml_bench.plugins.derived import derive_parameters, format_manifest, write_parameters

from test_submissions import EXAMPLES, GOOD, cli, write_submission

sandboxed = pytest.mark.skipif(not sandbox_available(), reason="the class is read in the sandbox")

RULED = '''
from psml_bench import Allowed, Defense


class Demo(Defense):
    strength = "scale"
    defaults = {defaults}
    allowed = {allowed}
'''


def _defense(tmp_path, name, defaults, allowed="{}", parameters=None):
    """A submitted defense whose class has ``defaults`` and ``allowed`` (its code); its manifest is GOOD's with
    ``parameters``."""
    code = RULED.format(defaults=defaults, allowed=allowed)
    return write_submission(tmp_path, {**GOOD, "name": name, "entry": "demo_defense:Demo", "grids": ["nowhere"],
                                       "parameters": parameters or GOOD["parameters"]},
                            {"demo_defense.py": code})


def test_the_written_style_is_the_shipped_manifests():
    for folder in (EXAMPLES / "round-probs", EXAMPLES / "uncertainty-sampling"):
        text = (folder / "manifest.json").read_text()
        assert format_manifest(json.loads(text)) == text


def test_a_declaration_holds_the_rules_of_the_class_itself_not_those_of_psml_bench():
    class Mine(Attack):
        defaults = {**SURROGATE_DEFAULTS, "rate": 0.5, "k": 1.0}
        allowed = {**Attack.allowed, "rate": Allowed(minimum=0, maximum=1),
                   "k": Allowed(minimum=0, exclusive_minimum=True)}

    class Child(Mine):
        allowed = {"rate": Allowed(choices=(0.25, 0.5))}

    declared = class_declaration(Mine)
    assert declared["parameters"] == [[name, value] for name, value in Mine.defaults.items()]
    assert declared["rules"] == {"rate": {"minimum": 0, "maximum": 1}} and declared["unwritable"] == {"k": "> 0"}
    assert declared["inherited"] == sorted(SURROGATE_DEFAULTS)
    assert class_declaration(Child)["rules"] == {"rate": {"choices": [0.25, 0.5]}}  # the most derived class's
    Child.defaults = {"shape": (1, 2)}
    with pytest.raises(TypeError, match="the default of parameter 'shape' is \\(1, 2\\)"):
        class_declaration(Child)


def test_derived_parameters_keep_order_descriptions_and_rules_the_class_does_not_declare():
    declaration = Declaration("Demo", {"new": True, "rate": 0.5, "count": 2}, {"rate": {"maximum": 1}}, {},
                              inherited=())
    existing = {"count": {"type": "number", "default": 2, "minimum": 1, "description": "how many"},
                "rate": {"description": "how fast", "type": "number", "default": 0.25, "minimum": 0},
                "old": {"type": "string", "default": "x"}}
    derived = derive_parameters(existing, declaration)
    assert list(derived.parameters) == ["count", "rate", "new"]
    assert derived.parameters["count"] == existing["count"]  # "number" stays; the class declares no rule for it
    assert list(derived.parameters["rate"].items()) == [("description", "how fast"), ("type", "number"),
                                                        ("default", 0.5), ("maximum", 1)]
    assert derived.parameters["new"] == {"type": "boolean", "default": True}
    assert derived.undescribed == ["new"]
    assert derived.changes == ["parameters.rate.default: 0.25 -> 0.5",
                               "parameters.rate.minimum: removed (class Demo declares no such rule)",
                               "parameters.rate.maximum: set to 1",
                               'parameters.new: added {"type": "boolean", "default": true}',
                               "parameters.old: removed (not in the defaults of class Demo)"]
    assert len(derived.notes) == 1 and derived.notes[0].startswith("parameters.count: minimum kept from the manifest")


@sandboxed
@pytest.mark.parametrize("name", ["round-probs", "uncertainty-sampling"])
def test_the_shipped_submissions_already_agree_with_their_classes(tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(EXAMPLES / name, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = (copy / "manifest.json").read_bytes()
    rewrite = write_parameters(copy)
    assert not rewrite.written and rewrite.changes == ()
    assert (copy / "manifest.json").read_bytes() == before == (EXAMPLES / name / "manifest.json").read_bytes()
    assert parameters_check(copy).ok


@sandboxed
def test_a_missing_parameter_is_filled_from_the_class_keeping_its_description(tmp_path):
    folder = _defense(tmp_path, "derived-filled", {"scale": 0.1, "width": 4}, "{'width': Allowed(minimum=1)}",
                      {**GOOD["parameters"], "width": {"description": "columns kept"}})
    rewrite = write_parameters(folder)
    assert rewrite.written and rewrite.cls == "Demo"
    assert rewrite.changes == ('parameters.width.type: set to "integer"', "parameters.width.default: set to 4",
                               "parameters.width.minimum: set to 1")
    text = (folder / "manifest.json").read_text()
    assert ('  "parameters": {\n'
            '    "scale": {"type": "number", "default": 0.1},\n'
            '    "width": {"type": "integer", "default": 4, "minimum": 1, "description": "columns kept"}\n'
            '  },\n') in text
    assert text == format_manifest(json.loads(text)) and list(json.loads(text)) == list(GOOD) + ["grids"]
    assert validate_submission(folder, run=False).ok


@sandboxed
def test_a_changed_default_fails_validate_saying_how_to_fix_it_then_is_rewritten(tmp_path):
    folder = _defense(tmp_path, "derived-default", {"scale": 0.2})
    result = validate_submission(folder)  # fails before any conformance cell: no zoo is opened
    assert not result.ok and [c.ok for c in result.checks] == [True, False]
    check = result.checks[1]
    assert check.name == "the manifest's parameters are class Demo's"
    assert check.detail == (f"parameters.scale.default: 0.1 -> 0.2; `psml-bench validate --write-parameters {folder}` "
                            "writes them from the class")
    assert write_parameters(folder).changes == ("parameters.scale.default: 0.1 -> 0.2",)
    assert json.loads((folder / "manifest.json").read_text())["parameters"] == {
        "scale": {"type": "number", "default": 0.2}}
    assert parameters_check(folder).ok
    written = (folder / "manifest.json").stat().st_mtime_ns
    assert not write_parameters(folder).written and (folder / "manifest.json").stat().st_mtime_ns == written


@sandboxed
def test_a_new_parameter_without_a_description_is_one_line_and_exit_1(tmp_path, cache_dir):
    folder = _defense(tmp_path, "derived-undescribed", {"scale": 0.1, "depth": 2, "mode": "a"})
    before = (folder / "manifest.json").read_bytes()
    result = cli("validate", "--write-parameters", "--manifest-only", str(folder), cache_dir=cache_dir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "is not valid" in lines[1], lines
    assert lines[0] == (f"psml-bench: error: {folder}/manifest.json: field 'parameters': class Demo's parameter(s) "
                        "depth, mode are not in the manifest and the class cannot give a description; add one to "
                        'each first, e.g. "depth": {"description": "what it does"}')
    assert (folder / "manifest.json").read_bytes() == before


@sandboxed
def test_a_rewrite_that_would_invalidate_the_sweep_writes_nothing(tmp_path):
    folder = _defense(tmp_path, "derived-sweep", {"scale": 0.02}, "{'scale': Allowed(maximum=0.05)}")
    before = (folder / "manifest.json").read_bytes()
    with pytest.raises(ManifestError) as error:
        write_parameters(folder)
    assert len(error.value.errors) == 1, error.value.errors
    assert "field 'sweep.values.0': 0.1 is not allowed; the parameter must be <= 0.05" in error.value.errors[0]
    assert error.value.errors[0].endswith("(after writing the class's parameters; nothing written)")
    assert (folder / "manifest.json").read_bytes() == before


def test_validate_help_names_the_option(cache_dir):
    result = cli("validate", "--help", cache_dir=cache_dir)
    assert result.returncode == 0 and "--write-parameters" in result.stdout
