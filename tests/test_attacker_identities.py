"""``attacker_identities``: a Sybil attacker spreads its queries over k client ids; the budget counts them together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from psml_bench import BudgetExhausted, ConfigError, Spec
from psml_bench.bench.cell import cell_key, run_cell
from psml_bench.bench.grid import load_grid
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import opaque_client_ids
from psml_bench.serving.service import ServiceConfig, SimulatedService

from helpers import tiny_grid

def grid_file(tmp_path: Path, top: str = "", block: str = "") -> Path:
    return tiny_grid(tmp_path / "sybil.toml", budget=400, defense="prada", top=top, block=block)


@pytest.mark.parametrize("value", ["0", "65", '"4"', "[1, 2.5]"])
def test_bad_identity_counts_are_one_line_errors(tmp_path, value):
    with pytest.raises(ConfigError, match=r"field 'blocks.0.attacker_identities'|field 'blocks.0.attacker_identities."
                                          r"|attacker_identities"):
        load_grid(grid_file(tmp_path, block=f"attacker_identities = {value}"))


def test_one_identity_keeps_cells_and_ids_and_k_sweeps(tmp_path, tiny_zoo):
    grid = load_grid(grid_file(tmp_path, top="attacker_identities = [1, 4]"))
    cells = grid.cells()
    assert [c.attacker_identities for c in cells] == [1, 4]
    assert load_grid(grid_file(tmp_path)).cells() == cells[:1]
    assert cell_key(tiny_zoo, grid, cells[0]) != cell_key(tiny_zoo, grid, cells[1])
    config = ServiceConfig()
    one = SimulatedService(tiny_zoo, defense=make_defense("none"), config=config, seed=3, budget=10)
    ids = opaque_client_ids(3, config.benign_clients + 1)
    assert one.attacker_id == ids[0] and np.array_equal(one.benign_ids, ids[1:])
    assert list(one.attacker_ids) == [ids[0]]


def test_rows_go_round_robin_over_the_identities_and_the_budget_counts_them_together(tiny_zoo):
    class Recording:
        """A defense that records the client of every request it admits."""

        def __init__(self):
            self.inner, self.clients = make_defense("none"), []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def admit(self, requests, rng):
            self.clients.append(requests.clients.copy())
            return self.inner.admit(requests, rng)

    defense = Recording()
    service = SimulatedService(tiny_zoo, defense=defense, config=ServiceConfig(), seed=0, budget=10,
                               attacker_identities=4)
    assert len(set(service.attacker_ids.tolist())) == 4
    assert not set(service.attacker_ids.tolist()) & set(service.benign_ids.tolist())
    spec = Spec(service.spec_range.accuracy[0], service.spec_range.latency_ms[1])
    pool = tiny_zoo.splits["attacker_x"]
    for rows in (3, 3, 4):
        service.query(pool[:rows], spec)
    attacker = set(service.attacker_ids.tolist())
    sent = np.concatenate([c[np.isin(c, list(attacker))] for c in defense.clients])
    assert sent.tolist() == [int(service.attacker_ids[i % 4]) for i in range(10)]
    with pytest.raises(BudgetExhausted):
        service.query(pool[:1], spec)
    assert service.used == 10


def test_prada_catches_one_identity_but_not_sixteen_below_its_history(tmp_path, tiny_zoo):
    """PRADA tests a client only after min_history (100) of its queries: 400 over 16 ids is 25 each."""
    grid = load_grid(grid_file(tmp_path, block="attacker_identities = [1, 16]"))
    rows = [run_cell(tiny_zoo, grid, cell) for cell in grid.cells()]
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    single, sybil = rows
    assert single.detected == 1.0 and single.queries_to_detection <= 400
    assert single.identities_detected is None and "identities_detected" not in single.as_dict()
    assert sybil.detected == 0.0 and sybil.identities_detected == 0.0
    assert sybil.attack.endswith("as 16 clients") and sybil.queries == 400


def test_each_threat_setting_of_a_block_is_its_own_view_on_the_page():
    """The committed threat-models results: a block with several attacker data sources and identity counts
    is one view per setting, each with exactly that setting's rows, and together they hold every row."""
    from pathlib import Path

    import pandas as pd

    from psml_bench.bench.grid import load_grid
    from psml_bench.report.ranking import block_rows, describe_grid
    from psml_bench.report.threats import threat_settings

    root = Path(__file__).resolve().parents[1]
    frame = pd.read_csv(root / "leaderboard" / "threat-models" / "results.csv")
    views, _ = describe_grid(load_grid("threat-models"))
    sybil = [view for view in views if view.name.startswith("sybil")]
    assert len(sybil) == 6 and len({view.name for view in sybil}) == 6
    threat = threat_settings(frame)
    seen = set()
    for view in views:
        rows = block_rows(frame, view)
        assert len(rows), view.name
        assert (threat.loc[rows.index, "attacker_data"] == view.attacker_data).all()
        assert (threat.loc[rows.index, "attacker_identities"] == view.attacker_identities).all()
        seen |= set(rows.index)
    assert seen == set(frame.index)
