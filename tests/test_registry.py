"""The generic registry: built-ins, did-you-mean, collisions, module:Class targets, entry points."""

from __future__ import annotations

import pytest

from psml_bench import ATTACKS, DEFENSES, POLICIES, Attack, PsmlError, Registry, UnknownPluginError


def test_builtins_are_registered_with_their_source():
    assert {"oracle", "naive", "psml"} <= set(ATTACKS.names())
    assert {"none", "spec-noise"} <= set(DEFENSES.names())
    assert "infaas" in POLICIES.names()
    assert ATTACKS.entry("psml").source == "built-in"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownPluginError) as error:
        ATTACKS.get("psmll")
    assert str(error.value) == ("unknown attack 'psmll'; did you mean 'psml'? available: "
                                + ", ".join(ATTACKS.names()))
    with pytest.raises(UnknownPluginError, match="did you mean 'spec-noise'"):
        DEFENSES.get("specnoise")


def test_base_class_and_collisions_are_checked():
    registry = Registry("thing", Attack)
    with pytest.raises(PsmlError, match="subclass of Attack"):
        registry.add("bad", int, source="test")

    class One(Attack):
        def run(self, target, knowledge, budget, rng):
            raise NotImplementedError

    class Two(One):
        pass

    registry.add("one", One, source="a")
    registry.add("one", One, source="a")  # same class again: fine
    with pytest.raises(PsmlError, match="collides"):
        registry.add("one", Two, source="b")


def test_module_class_targets_load_lazily(tmp_path, monkeypatch):
    (tmp_path / "my_attack_mod.py").write_text(
        "from psml_bench import Attack\n"
        "class Mine(Attack):\n"
        "    def run(self, target, knowledge, budget, rng):\n"
        "        raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = ATTACKS.get("my_attack_mod:Mine")
    assert cls.__name__ == "Mine" and ATTACKS.entry("my_attack_mod:Mine").source == "module my_attack_mod"
    with pytest.raises(UnknownPluginError, match="cannot load attack 'my_attack_mod:Nope'"):
        ATTACKS.get("my_attack_mod:Nope")


def test_entry_points_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "third_party_defense.py").write_text(
        "from psml_bench import Defense\n"
        "class Theirs(Defense):\n"
        "    '''A third-party defense.'''\n")
    dist = tmp_path / "third_party-2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party\nVersion: 2.3\n")
    (dist / "entry_points.txt").write_text("[psml_bench.defenses]\ntheirs = third_party_defense:Theirs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("defense", DEFENSES.base, entry_point_group="psml_bench.defenses")
    entry = registry.entry("theirs")
    assert entry.plugin.__name__ == "Theirs" and entry.source == "installed: third-party 2.3"


def test_allowed_values_are_declared_as_data():
    from psml_bench import Allowed

    unit = Allowed(minimum=0, maximum=1)
    assert unit.accepts(0) and unit.accepts(1.0) and not unit.accepts(1.01) and not unit.accepts(float("nan"))
    assert unit.describe() == "in [0, 1]"
    assert Allowed(minimum=0, exclusive_minimum=True).describe() == "> 0"
    assert not Allowed(minimum=0, exclusive_minimum=True).accepts(0.0)
    count = Allowed(minimum=1, integer=True)
    assert count.accepts(2) and count.accepts(2.0) and not count.accepts(2.5) and not count.accepts(0)
    assert count.describe() == "an integer >= 1"
    assert Allowed(choices=("soft", "hard")).describe() == "'soft' or 'hard'"
