"""Grids on several zoos (a block's ``zoos``) and a zoo's mean pairwise disagreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from psml_bench import ConfigError
from psml_bench._cell import cell_key, zoo_identity
from psml_bench._grid import load_grid
from psml_bench._runner import make_executor, run_grid
from psml_bench._zoo import Zoo, disagreement, mean_disagreement
from psml_bench._zoo_config import load_zoo_config, zoo_directory

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
    assert sorted(r["zoo"] for r in summary.rows) == ["fmnist-tiny", "fmnist-tiny-b"]
    assert len({r["cell_key"] for r in summary.rows}) == 2
    readme = (out / "README.md").read_text()
    for text in ("## Zoo `fmnist-tiny`", "## Zoo `fmnist-tiny-b`", "block `b`, zoo `fmnist-tiny-b`",
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
