"""Grids on several zoos (a block's ``zoos``) and a zoo's mean pairwise disagreement."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from psml_bench import ConfigError
from psml_bench.bench.cell import cell_key, zoo_identity
from psml_bench.bench.grid import Block, GridConfig, PluginSpec, load_grid
from psml_bench.report.intervals import NO_ESTIMATE, Estimate
from psml_bench.bench.row import CellRow
from psml_bench.report.leaderboard import render_markdown
from psml_bench.report.results import results_frame
from psml_bench.zoo.model_zoo import MenuEntry
from psml_bench.report.zoo_comparison import agreement
from psml_bench.runner import make_executor, run_grid
from psml_bench.zoo.model_zoo import Zoo, disagreement, mean_disagreement
from psml_bench.zoo.config import load_zoo_config, zoo_directory

TINY = Path(__file__).resolve().parents[1] / "psml_bench" / "configs" / "zoos" / "fmnist-tiny.toml"
NAIVE = '{ name = "naive", params = { min_steps = 20, epochs = 1 } }'


def grid_text(zoos: str = "", extra_block: str = "") -> str:
    return (f'name = "two"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nseeds = [0]\nbenign_queries = 50\n'
            f'[[blocks]]\nname = "b"\nbudgets = [50]\nattacks = [{NAIVE}]\ndefenses = [{{ name = "none" }}]\n'
            f'{zoos}\n{extra_block}')


@pytest.fixture(scope="module")
def two_zoos(tiny_zoo, tmp_path_factory):
    """A cache holding the tiny zoo and a second zoo: the tiny zoo's files under another name (no build)."""
    root = tmp_path_factory.mktemp("two-zoos")
    config_path = root / "fmnist-tiny-b.toml"
    config_path.write_text(TINY.read_text().replace('name = "fmnist-tiny"', 'name = "fmnist-tiny-b"', 1))
    cache = root / "cache"
    (cache / "zoos").mkdir(parents=True)
    (cache / "zoos" / tiny_zoo.directory.name).symlink_to(tiny_zoo.directory)
    second = zoo_directory(load_zoo_config(config_path), cache)
    second.mkdir()
    for name in ("weights", "splits.safetensors", "predictions.safetensors"):
        (second / name).symlink_to(tiny_zoo.directory / name)
    card = {**tiny_zoo.card, "zoo": "fmnist-tiny-b", "config_hash": load_zoo_config(config_path).config_hash}
    (second / "card.json").write_text(json.dumps(card))
    return cache, config_path


def test_a_block_on_two_zoos_has_cells_on_both_and_keys_the_main_zoos_as_before(tiny_zoo, two_zoos, tmp_path):
    cache, second = two_zoos
    plain = load_grid(_write(tmp_path / "plain.toml", grid_text()))
    both = load_grid(_write(tmp_path / "both.toml", grid_text(f'zoos = ["fmnist-tiny", "{second}"]')))
    assert both.zoos() == ("fmnist-tiny", str(second)) and plain.zoos() == ("fmnist-tiny",)
    assert [both.zoo_of(c) for c in both.cells()] == ["fmnist-tiny", str(second)]
    main = [c for c in both.cells() if both.zoo_of(c) == "fmnist-tiny"]
    identity = zoo_identity(tiny_zoo)
    assert [cell_key(tiny_zoo, both, c, identity) for c in main] == \
        [cell_key(tiny_zoo, plain, c, identity) for c in plain.cells()]


def test_a_two_zoo_grid_runs_end_to_end_with_one_leaderboard(two_zoos, tmp_path):
    cache, second = two_zoos
    grid = load_grid(_write(tmp_path / "g.toml", grid_text(f'zoos = ["fmnist-tiny", "{second}"]')))
    out = tmp_path / "lb"
    summary = run_grid(grid, out, cache_dir=cache, executor=make_executor("inline"), progress=False)
    assert summary.failed == 0 and summary.computed == 2
    assert sorted(r.zoo for r in summary.rows) == ["fmnist-tiny", "fmnist-tiny-b"]
    assert len({r.cell_key for r in summary.rows}) == 2
    readme = (out / "README.md").read_text()
    for text in ("## Zoo `fmnist-tiny`", "## Zoo `fmnist-tiny-b`", "## Zoos compared", "block `b`, zoo `fmnist-tiny-b`",
                 "block `b`, zoo `fmnist-tiny`", "Mean pairwise disagreement", "zoo_frontier_fmnist-tiny-b.png"):
        assert text in readme
    assert (out / "zoo_frontier_fmnist-tiny-b.png").is_file()
    again = run_grid(grid, out, cache_dir=cache, executor=make_executor("inline"), progress=False)
    assert (again.cached, again.computed) == (2, 0)
    with pytest.raises(ConfigError, match="--profile routes one zoo.*run it without --profile"):
        run_grid(grid, out, cache_dir=cache, profile=Path("any.json"), progress=False)


def test_a_bad_zoos_entry_is_one_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'blocks\.0\.zoos\.1'.*no-such-zoo"):
        load_grid(_write(tmp_path / "a.toml", grid_text('zoos = ["fmnist-tiny", "no-such-zoo"]')))
    with pytest.raises(ConfigError, match=r"field 'blocks\.0\.zoos\.0'"):
        load_grid(_write(tmp_path / "b.toml", grid_text("zoos = [3]")))
    with pytest.raises(ConfigError, match=r"field 'blocks\.0\.zoos'"):
        load_grid(_write(tmp_path / "c.toml", grid_text("zoos = []")))


def test_mean_pairwise_disagreement_on_hand_made_predictions():
    def one_hot(labels):
        return torch.nn.functional.one_hot(torch.tensor(labels), 3).float()

    predictions = {"a": one_hot([0, 0, 0, 0]), "b": one_hot([0, 0, 1, 1]), "c": one_hot([1, 0, 1, 2])}
    # a-b differ on 2 of 4, a-c on 3 of 4, b-c on 2 of 4 (the last image: 1 against 2)
    assert mean_disagreement(predictions, ["a", "b", "c"]) == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert mean_disagreement(predictions, ["b", "c"]) == 0.5
    assert mean_disagreement(predictions, ["a"]) is None
    assert disagreement(predictions, ["a", "b", "c"], ["a", "c"]) == {"all_models": 0.583333, "frontier": 0.75}


def test_the_zoo_disagreement_comes_from_the_card_or_the_predictions_and_is_not_in_the_identity(tiny_zoo):
    computed = disagreement(tiny_zoo.test_predictions, [m["id"] for m in tiny_zoo.card["models"]], tiny_zoo.frontier)
    card = {k: v for k, v in tiny_zoo.card.items() if k != "disagreement"}
    without = _with_card(tiny_zoo, card)
    assert without.disagreement == computed and 0 < computed["all_models"] < 1
    stored = _with_card(tiny_zoo, {**card, "disagreement": {"all_models": 0.5, "frontier": 0.25}})
    assert stored.disagreement == {"all_models": 0.5, "frontier": 0.25}
    assert zoo_identity(stored) == zoo_identity(without)


def _with_card(zoo: Zoo, card: dict) -> Zoo:
    copy = Zoo.__new__(Zoo)
    copy.__dict__.update({k: v for k, v in zoo.__dict__.items() if k != "disagreement"}, card=card)
    return copy


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class HandZoo:
    """The parts of a zoo that rendering reads, without weights (victim ``mid``)."""

    profile_name = "hand.json"
    accuracy_range = (0.7, 0.95)
    latency_range_ms = (0.5, 3.0)
    frontier = ("mid",)
    card = {"models": [{"id": "mid", "arch": "resnet18", "params": 10, "macs": 100}]}

    def __init__(self, name: str, accuracy: float, disagreement: dict):
        self.name, self.disagreement = name, disagreement
        self.menu = (MenuEntry("mid", accuracy, 1.0),)

    def entry(self, model_id):
        return next(e for e in self.menu if e.id == model_id)


ATTACKS = {"oracle": PluginSpec("oracle"), "naive": PluginSpec("naive"), "psml": PluginSpec("psml"),
           "psml-adaptive": PluginSpec("psml-adaptive")}
DEFENSES = {"none": PluginSpec("none"), "spec-noise(scale=0.05)": PluginSpec("spec-noise", (("scale", 0.05),)),
            "spec-noise(scale=0.1)": PluginSpec("spec-noise", (("scale", 0.1),)),
            "spec-quantize(step=0.1)": PluginSpec("spec-quantize", (("step", 0.1),)),
            "top-k(k=2)": PluginSpec("top-k", (("k", 2),))}
GOODPUT = {"none": 1.0, "spec-noise(scale=0.05)": 0.9, "spec-noise(scale=0.1)": 0.7, "spec-quantize(step=0.1)": 0.95,
           "top-k(k=2)": 1.0}
# per (zoo, attack, defense): fidelity per seed 0, 1, 2 (accuracy 0.7 unless listed in ACCURACY)
FIDELITY = {
    ("a", "oracle", "none"): [0.80, 0.82, 0.84], ("a", "naive", "none"): [0.70, 0.71, 0.75],
    ("a", "psml", "none"): [0.78, 0.80, 0.85],
    ("b", "oracle", "none"): [0.90, 0.90, 0.90], ("b", "naive", "none"): [0.85, 0.88, 0.91],
    ("b", "psml", "none"): [0.86, 0.89, 0.92],
}
SPEC = {  # the spec block's psml runs (its undefended psml cells are other cells than the budgets block's)
    ("a", "psml", "none"): [0.80, 0.81, 0.82], ("a", "psml", "spec-noise(scale=0.05)"): [0.78, 0.78, 0.80],
    ("a", "psml", "spec-quantize(step=0.1)"): [0.785, 0.795, 0.805],
    ("a", "psml-adaptive", "none"): [0.79, 0.80, 0.81],
    ("a", "psml-adaptive", "spec-noise(scale=0.05)"): [0.79, 0.80, 0.82],
    ("a", "psml-adaptive", "spec-quantize(step=0.1)"): [0.79, 0.80, 0.81],
    ("b", "psml", "none"): [0.90, 0.90, 0.90], ("b", "psml", "spec-noise(scale=0.05)"): [0.91, 0.90, 0.92],
    ("b", "psml", "spec-quantize(step=0.1)"): [0.92, 0.92, 0.92],
    ("b", "psml-adaptive", "none"): [0.88, 0.88, 0.88],
    ("b", "psml-adaptive", "spec-noise(scale=0.05)"): [0.88, 0.88, 0.88],
    ("b", "psml-adaptive", "spec-quantize(step=0.1)"): [0.90, 0.90, 0.90],
}
ACCURACY = {("a", "psml"): [0.7, 0.7, 0.7], ("a", "naive"): [0.6, 0.6, 0.6],
            ("b", "psml"): [0.7, 0.7, 0.7], ("b", "naive"): [0.72, 0.75, 0.78]}


def hand_grid() -> GridConfig:
    seeds = (0, 1, 2)
    blocks = (Block("budgets", ("rank:1",), tuple(ATTACKS[a] for a in ("oracle", "naive", "psml")), (DEFENSES["none"],),
                    (100,), seeds, zoos=("a", "b")),
              Block("spec", ("rank:1",), (ATTACKS["psml"], ATTACKS["psml-adaptive"]), tuple(DEFENSES.values()), (200,),
                    seeds, zoos=("a", "b")))
    return GridConfig("hand", "a", "infaas", ("rank:1",), tuple(ATTACKS.values()), tuple(DEFENSES.values()),
                      (100, 200), seeds, 100, "test", blocks)


def hand_rows(zoos=("a", "b")) -> list[CellRow]:
    cells = []
    for zoo in zoos:
        cells += [(zoo, 100, a, "none", FIDELITY[(zoo, a, "none")]) for a in ("oracle", "naive", "psml")]
        # spec-noise 0.1 (ineligible: goodput 0.7) and top-k (not a spec defense) protect most
        cells += [(zoo, 200, a, d, SPEC.get((zoo, a, d)) or [f - 0.3 for f in SPEC[(zoo, a, "none")]])
                  for a in ("psml", "psml-adaptive") for d in DEFENSES]
    return [CellRow(zoo=zoo, victim="rank:1", victim_model="mid", attack=attack,
                    attack_access="victim" if attack == "oracle" else "service", defense=defense, budget=budget,
                    seed=seed, load=0.5, status="ok", fidelity=fidelity[seed],
                    accuracy=ACCURACY.get((zoo, attack), [0.7] * 3)[seed] if budget == 100 else 0.7,
                    goodput=GOODPUT[defense], benign_accuracy_drop=0.0, perturbation=0.0, latency_overhead=0.0,
                    flags="", cell_key=f"{zoo}{budget}{attack}{defense}{seed}")
            for zoo, budget, attack, defense, fidelity in cells for seed in (0, 1, 2)]


def hand_zoos(names=("a", "b")) -> dict:
    zoos = {"a": HandZoo("a", 0.9, {"all_models": 0.164, "frontier": 0.146}),
            "b": HandZoo("b", 0.85, {"all_models": 0.3, "frontier": 0.25})}
    return {n: zoos[n] for n in names}


def _hw(differences: list[float]) -> float:
    """The 95% t half-width of three per-seed differences: t(0.975, 2) s / sqrt(3)."""
    mean = sum(differences) / 3
    return 4.302652729911275 * math.sqrt(sum((d - mean) ** 2 for d in differences) / 2) / math.sqrt(3)


def _row(text: str, *start: str) -> list[str]:
    """The cells of the first table row whose leading cells are ``start``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[:len(start)] == list(start):
            return cells
    raise AssertionError(f"no row {start}")


def test_zoos_compared_sets_the_headline_comparisons_of_each_zoo_side_by_side():
    text = render_markdown(results_frame(hand_rows()), hand_zoos(), hand_grid())
    assert "## Zoos compared" in text
    assert _row(text, "`a`") == ["`a`", "0.164", "0.146", "rank:1", "`mid`", "0.9000"]
    assert _row(text, "`b`") == ["`b`", "0.300", "0.250", "rank:1", "`mid`", "0.8500"]
    start = ["rank:1", "budgets", "100", "0.5"]
    # psml - oracle: a [-0.02, -0.02, 0.01], b [-0.04, -0.01, 0.02]: both negative, neither excludes 0
    assert _row(text, *start, "psml - oracle, fidelity")[5:] == [
        f"-0.010 ± {_hw([-0.02, -0.02, 0.01]):.3f} (n=3)", f"-0.010 ± {_hw([-0.04, -0.01, 0.02]):.3f} (n=3)",
        "Same sign (-) on both zoos; the interval includes 0 on both zoos."]
    assert _row(text, *start, "psml - naive, fidelity")[5:] == [
        f"0.090 ± {_hw([0.08, 0.09, 0.10]):.3f} (n=3)", "0.010 ± 0.000 (n=3)",
        "Same sign (+) on both zoos; the interval excludes 0 on both zoos."]
    assert _row(text, *start, "psml - naive, accuracy")[5:] == [
        "0.100 ± 0.000 (n=3)", f"-0.050 ± {_hw([-0.02, -0.05, -0.08]):.3f} (n=3)",
        "Sign differs: + on `a`, - on `b`; the interval excludes 0 on `a`; it includes 0 on `b`."]
    # spec defenses: spec-noise 0.1 (goodput 0.7) is ineligible and top-k is no spec defense, though both protect most
    start = ["rank:1", "spec", "200", "0.5"]
    assert _row(text, *start, "psml")[5:] == [
        f"0.023 ± {_hw([0.02, 0.03, 0.02]):.3f} (n=3)", "spec-noise(scale=0.05)",
        f"-0.010 ± {_hw([-0.01, 0.0, -0.02]):.3f} (n=3)", "spec-noise(scale=0.05)",
        "Sign differs: + on `a`, - on `b`; the interval excludes 0 on `a`; it includes 0 on `b`."]
    # psml-adaptive: on a, spec-quantize (0 each seed) beats spec-noise 0.05 ([0, 0, -0.01]); on b, the reverse
    assert _row(text, *start, "psml-adaptive")[5:] == [
        "0.000 ± 0.000 (n=3)", "spec-quantize(step=0.1)", "0.000 ± 0.000 (n=3)", "spec-noise(scale=0.05)",
        "Same sign (0) on both zoos; the interval includes 0 on both zoos."]
    # the defense tables' protection, a at spec-quantize: psml undefended - psml-adaptive against it, 0.01 each seed
    assert _row(text, *start, "strongest attack")[5:] == [
        "0.010 ± 0.000 (n=3)", "spec-quantize(step=0.1)",
        f"-0.010 ± {_hw([-0.01, 0.0, -0.02]):.3f} (n=3)", "spec-noise(scale=0.05)",
        "Sign differs: + on `a`, - on `b`; the interval excludes 0 on `a`; it includes 0 on `b`."]
    compared = text.split("## Zoos compared")[1].split("## Victim")[0]
    assert "top-k" not in compared and "spec-noise(scale=0.1)" not in compared
    one = render_markdown(results_frame(hand_rows(("a",))), hand_zoos(("a",)), hand_grid())
    assert "Zoos compared" not in one and "psml - oracle" not in one


def test_agreement_names_missing_zoos_and_intervals_it_cannot_judge():
    nan = float("nan")
    assert agreement({"a": Estimate(0.1, 0.05, 3), "b": Estimate(0.2, nan, 1), "c": NO_ESTIMATE}) == \
        "Same sign (+) on `a`, `b`; the interval excludes 0 on `a`; one seed (no interval) on `b`; no estimate on `c`."
    assert agreement({"a": Estimate(-0.1, 0.2, 3), "b": Estimate(0.2, 0.1, 3)}) == \
        "Sign differs: - on `a`, + on `b`; the interval excludes 0 on `b`; it includes 0 on `a`."


def test_a_zoo_without_an_eligible_spec_setting_says_so():
    rows = [replace(r, goodput=0.5) if r.zoo == "b" and r.defense != "none" else r for r in hand_rows()]
    text = render_markdown(results_frame(rows), hand_zoos(), hand_grid())
    assert _row(text, "rank:1", "spec", "200", "0.5", "psml")[5:] == [
        f"0.023 ± {_hw([0.02, 0.03, 0.02]):.3f} (n=3)", "spec-noise(scale=0.05)", "—", "no eligible setting",
        "Sign + on `a` only; the interval excludes 0 on `a`; no estimate on `b`."]
