"""query-hash (Blacklight-style duplicate detection) and psml-jitter, on hand-made inputs and the tiny zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.psml import Psml
from attacks.psml_jitter import JitteredTarget
from psml_bench import ConfigError, Knowledge, Requests
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend, target_for
from defenses.query_hash import WindowHasher


def _requests(inputs: torch.Tensor, clients) -> Requests:
    n = len(inputs)
    clients = np.broadcast_to(np.asarray(clients, dtype=np.int64), (n,)).copy()
    return Requests(clients, inputs, np.zeros(n), np.zeros(n), np.zeros(n))


def _fingerprint(zoo, defense, attack_target=None, seed: int = 0):
    """Run psml's fingerprint phase against a server defended by ``defense``; return the server and the spec."""
    server = Frontend(zoo, defense=defense, rng=np.random.default_rng(0))
    knowledge = Knowledge(zoo.input_shape, zoo.num_classes, server.spec_range, zoo.splits["attacker_x"], "rank:2")
    rng = np.random.default_rng([seed, 1])
    target = target_for(server) if attack_target is None else attack_target(target_for(server), rng).handle()
    return server, Psml().fingerprint(target, knowledge, 400, rng)


def test_psml_fingerprint_is_detected_at_its_first_repeated_probe(tiny_zoo):
    defense = make_defense("query-hash", {"action": "flag"})
    server, _ = _fingerprint(tiny_zoo, defense)
    assert defense.detected == {0}
    # psml's first call is its 16 probe candidates; the next sends the probe again
    assert defense.matches[0] == server.used - 16


def test_blocking_refuses_the_detecting_query_and_everything_after(tiny_zoo):
    defense = make_defense("query-hash")
    server, _ = _fingerprint(tiny_zoo, defense)
    assert defense.blocked == {0}
    refused = np.concatenate([~np.isin(s, np.arange(len(server.menu))) for s in server.log.served])
    assert not refused[:16].any() and refused[16:].all()


def test_distinct_natural_images_are_not_detected(tiny_zoo):
    pool = tiny_zoo.splits["attacker_x"][:1000]
    defense = make_defense("query-hash", {"action": "flag"})
    for start in range(0, len(pool), 100):
        assert defense.admit(_requests(pool[start:start + 100], 5), np.random.default_rng(0)).all()
    assert not defense.detected and defense.matches.get(5, 0) == 0


def test_background_windows_would_make_natural_images_collide(tiny_zoo):
    """The 28x28 adaptation: without skipping all-background windows, distinct Fashion-MNIST images match."""
    pool = tiny_zoo.splits["attacker_x"][:300].reshape(300, -1).numpy()
    shared = {}
    for skip in (False, True):
        fingerprints = [set(f) for f in WindowHasher(784, 50.0, 20, 1, 50, skip, 0).fingerprints(pool)]
        shared[skip] = max(len(fingerprints[i] & fingerprints[j]) for i in range(100) for j in range(i))
    assert shared[False] >= 25 > 2 * shared[True]


def test_a_small_jitter_still_matches_and_a_large_one_does_not(tiny_zoo):
    pool = tiny_zoo.splits["attacker_x"][:40].reshape(40, -1).numpy()
    hasher = WindowHasher(784, 50.0, 20, 1, 50, True, 0)
    rng = np.random.default_rng(0)
    clean = hasher.fingerprints(pool)
    for jitter, matched in ((0.005, True), (0.05, False)):
        noisy = hasher.fingerprints(np.clip(pool + rng.uniform(-jitter, jitter, pool.shape), 0, 1))
        shared = np.array([len(set(a) & set(b)) for a, b in zip(clean, noisy)])
        assert bool(np.median(shared) >= 25) is matched


def test_psml_jitter_evades_query_hash_and_still_finds_the_victim(tiny_zoo):
    defense = make_defense("query-hash", {"action": "flag"})
    server, spec = _fingerprint(tiny_zoo, defense, lambda target, rng: JitteredTarget(target, 0.05, 0.1, rng))
    assert not defense.detected and defense.matches.get(0, 0) == 0
    served = server.requested(np.array([spec.min_accuracy]), np.array([spec.max_latency_ms]))
    assert server.menu[int(served[0])].id == tiny_zoo.role("rank:2")


def test_scope_global_matches_across_clients_and_reject_refuses_only_matches():
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    per_client = make_defense("query-hash", {"action": "flag"})
    across = make_defense("query-hash", {"action": "reject", "scope": "global", "collisions": 2})
    batch = _requests(torch.cat([images[:3], images[:3], images[3:], images[:1]]), [1, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    assert per_client.admit(batch, None).all()
    assert per_client.detected == {2} and per_client.matches == {2: 1}  # only its own repeat of image 0
    admitted = across.admit(batch, None)
    # client 2 sends three images client 1 sent: its second match detects it, and later matches are refused
    assert across.detected == {2} and not across.blocked and across.matches == {2: 4}
    assert admitted.tolist() == [True] * 3 + [True, False, False] + [True] * 3 + [False]


@pytest.mark.parametrize("params, message", [
    ({"window": 900}, r"^defense 'query-hash' parameter 'window' \(900\) is larger than the input \(784 values\)$"),
])
def test_a_window_larger_than_the_input_is_one_config_error(params, message):
    defense = make_defense("query-hash", params)
    with pytest.raises(ConfigError, match=message):
        defense.admit(_requests(torch.rand(2, 1, 28, 28), 1), None)


@pytest.mark.parametrize("params, message", [
    ({"threshold": 60}, r"^defense 'query-hash' parameter 'threshold' \(60\) must be at most 'hashes' \(50\)"),
    ({"step": 0.0}, r"^defense 'query-hash' parameter 'step' must be > 0, got 0.0$"),
    ({"action": "ban"}, r"^defense 'query-hash' parameter 'action' must be 'block' or 'reject' or 'flag', got 'ban'$"),
    ({"jitter": -0.1}, r"^attack 'psml-jitter' parameter 'jitter' must be in \[0, 1\], got -0.1$"),
])
def test_bad_parameters_are_one_config_error(params, message):
    from psml_bench.contract.registries import ATTACKS
    with pytest.raises(ConfigError, match=message):
        if "jitter" in params:
            ATTACKS.get("psml-jitter")(**params)
        else:
            make_defense("query-hash", params)


# --- api-watermark and the ownership test ----------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, -0.01, 0.06, float("nan")])
def test_a_watermark_fraction_outside_its_range_is_one_config_error(fraction):
    with pytest.raises(ConfigError, match=rf"^defense 'api-watermark' parameter 'fraction' must be [^\n]*, "
                                          rf"got {fraction!r}$"):
        make_defense("api-watermark", {"fraction": fraction})


def test_watermarked_answers_are_keyed_wrong_top_classes_kept_per_client(tiny_zoo):
    pool = tiny_zoo.splits["attacker_x"][:2000]
    probabilities = torch.softmax(torch.randn(len(pool), 10, generator=torch.Generator().manual_seed(0)), dim=1)
    defense = make_defense("api-watermark", {"fraction": 0.05})
    answers = defense.answer(_requests(pool, 3), probabilities, None)
    changed = np.flatnonzero((answers != probabilities).any(dim=1).numpy())
    assert 0.03 < len(changed) / len(pool) < 0.07
    inputs, labels = defense.watermark_pairs(3)
    assert len(labels) == len(changed) and torch.equal(inputs, pool[changed])
    assert torch.equal(answers[changed].argmax(1), labels)
    assert (labels != probabilities[changed].argmax(1)).all()
    assert torch.allclose(answers.sum(1), torch.ones(len(pool)))
    again = defense.answer(_requests(pool, 3), probabilities, None)  # the same inputs: the same answers, no new pairs
    assert torch.equal(again, answers) and len(defense.watermark_pairs(3)[1]) == len(changed)
    assert len(defense.watermark_pairs(4)[1]) == 0 and make_defense("none").watermark_pairs(3) is None
    other_key = make_defense("api-watermark", {"fraction": 0.05, "key": 1}).answer(_requests(pool, 3), probabilities,
                                                                                   None)
    assert not torch.equal(other_key, answers)


def test_ownership_needs_four_agreeing_queries_on_ten_classes_and_rarely_claims_chance():
    from psml_bench.bench.ownership import ownership_queries
    assert ownership_queries(np.ones(4, dtype=bool), 10) == 4.0  # (1/9)^4 <= 1e-3 / 4
    assert np.isnan(ownership_queries(np.ones(3, dtype=bool), 10))  # (1/9)^3 > 1e-3 / 3
    assert ownership_queries(np.array([0, 1, 1, 1, 1, 1, 0, 0], dtype=bool), 10) == 6.0
    assert np.isnan(ownership_queries(np.zeros(0, dtype=bool), 10))
    rng = np.random.default_rng(0)
    claims = [not np.isnan(ownership_queries(rng.random(40) < 1 / 9, 10)) for _ in range(5000)]
    assert np.mean(claims) <= 1e-3


def test_a_watermark_cell_scores_ownership_and_claims_no_innocent_model(tiny_zoo):
    from psml_bench.bench.cell import run_cell
    from psml_bench.bench.grid import Cell, GridConfig, PluginSpec
    attack = PluginSpec("psml", (("epochs", 5), ("min_steps", 40)))
    defense = PluginSpec("api-watermark", (("fraction", 0.05),))
    grid = GridConfig("wm", "fmnist-tiny", "infaas", ("rank:2",), (attack,), (defense,), (400,), (0,), 300, "test")
    row = run_cell(tiny_zoo, grid, Cell("rank:2", attack, defense, 400, 0))
    assert row.status == "ok", row.error
    assert row.watermark_pairs >= 8 and 0 <= row.watermark_agreement <= 1
    assert row.innocent_claims == 0 and row.innocent_agreement <= 1 / 9 + 0.1
    assert row.ownership_claimed == float(not np.isnan(row.ownership_queries))
    assert 0 < row.benign_accuracy_drop < 0.1


def test_the_defense_table_shows_ownership_only_for_watermarking_settings():
    """Every-setting table of the committed deployable-defenses grid: an 'ownership claimed' column with the
    claim rate against the strongest attack for api-watermark, '—' for the others; no column without one."""
    from pathlib import Path

    import pandas as pd

    from psml_bench.bench.grid import load_grid
    from psml_bench.report.leaderboard import defense_tables
    from psml_bench.report.ranking import describe_grid, protection_table

    frame = pd.read_csv(Path(__file__).resolve().parents[1] / "leaderboard" / "deployable-defenses" / "results.csv")
    grid = load_grid("deployable-defenses")
    views, settings = describe_grid(grid)
    table = protection_table(frame, views, settings, grid.max_accuracy_drop, grid.max_false_positives)
    _, every = defense_tables(table)
    column = every.headers.index("ownership claimed")
    by_defense = {row[2]: row[column] for row in every.rows}
    assert all(value != "—" for name, value in by_defense.items() if "api-watermark" in name)
    assert all(value == "—" for name, value in by_defense.items() if "api-watermark" not in name)
    _, plain = defense_tables(table[~table["defense"].str.contains("api-watermark")])
    assert "ownership claimed" not in plain.headers
