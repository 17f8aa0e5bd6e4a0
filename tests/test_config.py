"""Zoo and grid configs: validation errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from psml_bench import ConfigError
from psml_bench.bench.grid import load_grid
from psml_bench.zoo.profiling import load_profile, reference_profile_path
from psml_bench.zoo.config import load_zoo_config

TINY = Path(__file__).resolve().parents[1] / "psml_bench" / "configs" / "zoos" / "fmnist-tiny.toml"


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_configs_load():
    assert load_zoo_config("fmnist").name == "fmnist"
    config = load_zoo_config("fmnist-tiny")
    assert len(config.models) == 3 and config.directory_name.startswith("fmnist-tiny-")
    grid = load_grid("default")
    assert len(grid.seeds) >= 3 and len(grid.cells()) == len(set(grid.cells()))
    assert [b.name for b in grid.blocks] == ["budgets", "strategies", "spec-defenses", "output-defenses", "load",
                                             "stateful-defenses"]
    # the default zoo holds real serving architectures; the headline blocks also run on the compact zoo (issue 17)
    assert grid.zoos() == ("fmnist", "fmnist-compact")
    assert [len(b.zoos) for b in grid.blocks] == [2, 1, 2, 1, 1, 1]
    real, compact = load_zoo_config("fmnist"), load_zoo_config("fmnist-compact")
    assert not any(m.arch.startswith("test_") for m in real.models) and len(real.models) == 5
    assert (real.splits, real.mean, real.std) == (compact.splits, compact.mean, compact.std)  # same images in both zoos
    profile = load_profile(reference_profile_path(real.reference_profile))
    assert set(profile["models"]) == {m.id for m in real.models} and profile["threads"] == 1
    load, stateful = grid.blocks[-2:]
    assert [s.load for s in load.services] == [0.5, 0.8, 0.95]
    assert [s.latency_visible for s in stateful.services] == [True]  # psml-timing needs to see latencies
    # more seeds where three left the intervals overlapping; every block trains with the default recipe
    assert [b.seeds for b in grid.blocks] == [(0, 1, 2)] * 3 + [(0, 1, 2, 3, 4), (0, 1, 2), (0, 1, 2)]
    assert {b.recipe for b in grid.blocks} == {(("surrogate", "test_resnet"), ("epochs", 10), ("min_steps", 200))}
    assert grid.max_accuracy_drop == 0.01
    assert {b.recipe for b in load_grid("tiny").blocks} == {(("surrogate", "test_resnet"), ("epochs", 5),
                                                            ("min_steps", 40))}
    assert [d.kwargs for d in grid.defenses if d.name == "spec-noise"] == [
        {"scale": 0.02}, {"scale": 0.05}, {"scale": 0.1}, {"scale": 0.2},
        {"distribution": "laplace", "scale": 0.05}, {"distribution": "laplace", "scale": 0.1}]


def test_timing_grid_shares_the_default_grids_undefended_cells():
    """The `timing` grid (docs/defenses.md) runs psml and psml-timing on the default grid's setting."""
    timing, default = load_grid("timing"), load_grid("default")
    cells = timing.cells()
    assert len(cells) == 2 * 7 * 3 and {c.attack.name for c in cells} == {"psml", "psml-timing"}
    assert {c.service.latency_visible for c in cells} == {True}
    assert (timing.zoo, timing.victims, timing.benign_queries) == (default.zoo, default.victims, default.benign_queries)
    undefended = {c for c in cells if c.defense.name == "none"}
    assert len(undefended) == 6 and undefended <= set(default.cells())  # same keys: reused from leaderboard/cells


def test_config_hash_follows_what_determines_the_weights(tmp_path):
    text = TINY.read_text()
    base = load_zoo_config(TINY).config_hash
    described = write(tmp_path, text.replace('description = "', 'description = "Reworded. ', 1), "a.toml")
    assert load_zoo_config(described).config_hash == base
    retrained = write(tmp_path, text.replace("samples = 2000", "samples = 2001", 1), "b.toml")
    assert load_zoo_config(retrained).config_hash != base


@pytest.mark.parametrize("change, field", [
    (('seed = 0\nowner = 4000', 'seed = 0\nowner = -5'), "splits.owner"),
    (('arch = "test_resnet"', 'arch = "resnet9000"'), "models.0.arch"),
    (('arch = "test_resnet"', 'arch = 7'), "models.0.arch"),
    (('id = "effnet-xs"', 'id = "resnet-xs"'), "models"),
    (('[service]', '[service]\nbogus = 1'), "service"),
    (('threads = 2', 'threads = 0'), "build.threads"),
])
def test_bad_zoo_config_names_the_field(tmp_path, change, field):
    text = TINY.read_text()
    assert change[0] in text
    path = write(tmp_path, text.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as error:
        load_zoo_config(path)
    assert str(error.value).startswith(f"{path}: field '{field}'")


def test_invalid_toml_and_unknown_names(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_zoo_config(write(tmp_path, "name = [unclosed"))
    with pytest.raises(ConfigError, match="unknown zoo 'fmnistt'; available: "
                                          "cifar10, fmnist, fmnist-compact, fmnist-tiny, imagenette"):
        load_zoo_config("fmnistt")
    with pytest.raises(ConfigError, match="no such zoo config file"):
        load_zoo_config(tmp_path / "missing.toml")


GRID = """
name = "g"
zoo = "fmnist-tiny"
victims = ["rank:1"]
budgets = [100]
seeds = [0]
[[attacks]]
name = "{attack}"
params = {params}
[[defenses]]
name = "none"
"""


def test_grid_with_unknown_plugin_says_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match="field 'attacks.0.name': unknown attack 'navie'; did you mean 'naive'"):
        load_grid(write(tmp_path, GRID.format(attack="navie", params="{}")))


def test_grid_with_unknown_or_mistyped_parameter(tmp_path):
    with pytest.raises(ConfigError, match="attack 'psml' has no parameter\\(s\\) gird"):
        load_grid(write(tmp_path, GRID.format(attack="psml", params="{ gird = 3 }")))
    with pytest.raises(ConfigError, match="parameter 'grid' must be int"):
        load_grid(write(tmp_path, GRID.format(attack="psml", params='{ grid = "many" }')))


LOAD_IS_PURE = """
import sys
from psml_bench.bench.grid import load_grid, PluginSpec
from psml_bench.contract.registries import ATTACKS, DEFENSES, STRATEGIES
grid = load_grid("default")
assert not [m for m in sys.modules if m.startswith("psml_bench.isolation")], "loading a grid imported the sandbox"
registered = {e.name for r in (ATTACKS, DEFENSES, STRATEGIES) for e in r if e.source.startswith("submission ")}
assert not registered, registered
submitted = {p.spec.name for p in grid.plugins if p.submitted}
assert submitted == {"round-probs", "uncertainty-sampling"}, submitted
for bad in BAD:
    try:
        load_grid(bad)
    except Exception as exc:
        print(type(exc).__name__, exc)
from psml_bench.bench.context import RunContext
RunContext().submissions()
assert DEFENSES.entry("round-probs").source.startswith("submission round-probs/")
"""


def test_loading_a_grid_registers_nothing_and_imports_no_sandbox(tmp_path):
    """A fresh process: the grid's submissions are read, checked and resolved, not registered; a run registers
    them. A bad parameter of a submission the grid names is still one line at load."""
    import subprocess
    import sys

    bad = [write(tmp_path, GRID.format(attack="uncertainty-sampling", params="{ warmup = 2 }"), "a.toml"),
           write(tmp_path, GRID.format(attack="naive", params="{}").replace(
               'name = "none"', 'name = "round-probs"\nparams = { decimals = "two" }'), "d.toml")]
    result = subprocess.run([sys.executable, "-c", LOAD_IS_PURE.replace("BAD", repr([str(b) for b in bad]))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"ConfigError {bad[0]}: field 'attacks.0': attack 'uncertainty-sampling' parameter 'warmup' must be in "
        "[0.01, 1], got 2",
        f"ConfigError {bad[1]}: field 'defenses.0': defense 'round-probs' parameter 'decimals' must be int, got 'two'"]


def test_grid_schema_errors(tmp_path):
    text = GRID.format(attack="psml", params="{}").replace('victims = ["rank:1"]', 'victims = ["best"]')
    with pytest.raises(ConfigError, match="field 'victims.0'"):
        load_grid(write(tmp_path, text))


BLOCKS = """
name = "g"
zoo = "fmnist-tiny"
victims = ["rank:1"]
seeds = [0, 1]
[[blocks]]
name = "a"
budgets = [100, 200]
attacks = [{ name = "oracle" }, { name = "psml" }]
defenses = [{ name = "none" }]
[[blocks]]
name = "b"
budgets = [100]
victims = ["rank:2"]
attacks = [{ name = "psml" }]
defenses = [{ name = "none" }, { name = "spec-noise", sweep = { scale = [0.1, 0.2] } }]
"""


def test_grid_blocks_are_a_union_of_cross_products(tmp_path):
    grid = load_grid(write(tmp_path, BLOCKS))
    cells = grid.cells()
    assert len(cells) == 2 * 2 * 2 + 3 * 2  # block a: 2 attacks x 2 budgets x 2 seeds; b: 3 defenses x 2 seeds
    assert grid.victims == ("rank:1", "rank:2") and grid.budgets == (100, 200)
    assert {c.victim for c in cells if c.defense.name == "spec-noise"} == {"rank:2"}
    shared = write(tmp_path, BLOCKS.replace('victims = ["rank:2"]\n', ''), "shared.toml")
    assert len(load_grid(shared).cells()) == 8 + 4  # the (psml, none, 100) cells of b repeat a's: counted once


def test_grid_block_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="field 'blocks.1.budgets' is missing"):
        load_grid(write(tmp_path, BLOCKS.replace("budgets = [100]\n", "")))
    with pytest.raises(ConfigError, match="field 'blocks.1.defenses.1.name': unknown defense 'spec-nosie'"):
        load_grid(write(tmp_path, BLOCKS.replace('"spec-noise"', '"spec-nosie"')))
    with pytest.raises(ConfigError, match="needs the field\\(s\\) attacks"):
        load_grid(write(tmp_path, GRID.format(attack="psml", params="{}").replace('[[attacks]]\nname = "psml"\n'
                                                                                  'params = {}\n', "")))


@pytest.mark.parametrize("name", ["default", "headline-extended"])
def test_a_shipped_grid_loads_in_a_fresh_interpreter(name):
    """Loading a grid alone (no other harness module imported first) knows every policy, the default one included."""
    import subprocess
    import sys

    code = f"from psml_bench.bench.grid import load_grid; g = load_grid({name!r}); print(g.policy, len(g.cells()))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "infaas-slo"


def test_the_routing_grids_pair_cell_for_cell_under_the_two_routers():
    """`routing` and `routing-infaas` (issue 25) differ in the policy alone, so every row pairs with one."""
    aware, blind = load_grid("routing"), load_grid("routing-infaas")
    assert (aware.policy, blind.policy) == ("infaas-slo", "infaas")
    assert aware.cells() == blind.cells() and len(aware.cells()) == 3 * 4 * 3
    assert {c.attack.name for c in aware.cells()} == {"psml", "psml-adaptive", "psml-timing"}
    assert sorted({c.service.load for c in aware.cells()}) == [0.3, 0.5, 0.8, 0.95]
    default = load_grid("default")
    assert (aware.zoo, aware.victims, aware.seeds, aware.benign_queries) == \
        (default.zoo, default.victims, default.seeds, default.benign_queries)
