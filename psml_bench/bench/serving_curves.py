"""Serving curves and capacity kept: each defense setting of a grid on its service, benign clients only, against load.

Serving papers judge a system by the curve of SLO attainment and tail latency against offered load,
and by the highest rate it serves within its SLO (MLPerf's server scenario; DistServe's and vLLM's
"goodput"). A cell measures one load with an attacker in the queues; this module measures the curve
and the capacity each defense setting leaves to benign users, with no attacker:

- **curve**: for each zoo of the grid, each defense setting its cells name (a :class:`Setting`:
  the defense, the benign clients and the service config with the load left out) and each load of
  :data:`CURVE_LOADS` (fractions of the undefended capacity at the SLO, up to overload), the
  service of a cell (:class:`~psml_bench.serving.service.SimulatedService`) with ``benign_queries`` benign
  requests, budget 0 and the grid's policy, on each seed of :data:`SEEDS`: ``goodput`` (SLO
  attainment: answered within the bound by a model meeting the floor) and ``latency_p99_ms``, as a
  cell's :func:`~psml_bench.bench.cell.service_costs` computes them. The undefended setting is also
  run under the queue-blind ``infaas`` policy, for comparison (its load is still a fraction of
  the ``infaas-slo`` capacity);
- **capacity kept**: the highest load at which the setting's goodput, averaged over the seeds, is at
  least the service's ``slo_target`` (the capacity search's rule, here on the cell's own benign
  workload: same seeds, same arrivals and specs at every load, so attainment moves with the load
  alone), found by :data:`SEARCH_STEPS` geometric bisections of [:data:`MIN_LOAD`, :data:`MAX_LOAD`],
  divided by the same figure for the undefended setting. 0 when the setting misses the target even
  at :data:`MIN_LOAD` (e.g. a router that sends requests to models below their floor); a load above
  :data:`MAX_LOAD` is reported as :data:`MAX_LOAD` (``capped``).

The simulator charges a defense no compute of its own: an output perturbation costs nothing here,
so its capacity kept is 1 unless it refuses, blocks or reroutes benign requests. Results are kept
in ``<out>/serving.json`` by a content hash of everything they depend on (the zoo's identity, the
defense's identity, the service config, the policy, the seeds, the loads and this module's
:data:`VERSION`); a run computes only the missing entries.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .._version import PROTOCOL_VERSION
from ..common.files import content_hash, write_atomic
from ..contract.errors import sanitise
from ..serving.config import MAX_LOAD as _CONFIG_MAX_LOAD, ServiceConfig
from ..serving.service import SimulatedService, service_times
from ..zoo.model_zoo import Zoo
from .cell import slo_costs, zoo_identity
from .grid import Cell, GridConfig, PluginSpec, ResolvedPlugin

VERSION = 1
SERVING_FILE = "serving.json"
CURVE_LOADS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
SEEDS = (0, 1, 2)
MIN_LOAD, MAX_LOAD = 0.02, _CONFIG_MAX_LOAD
SEARCH_STEPS = 7
"""Geometric bisections of [MIN_LOAD, MAX_LOAD]: a relative resolution of 100 ** (1 / 2**7), about 3.7%."""
COMPARISON_POLICY = "infaas"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """One defense setting on one zoo's service, as the grid's cells name it (the load left out)."""

    zoo: str
    defense: ResolvedPlugin
    service: ServiceConfig
    policy: str

    @property
    def label(self) -> str:
        return self.defense.label

    def key(self, zoo: Zoo, benign_queries: int) -> str:
        """Content hash of everything the entry depends on (as a cell key hashes a cell's)."""
        intercept, slope = service_times(zoo)
        return content_hash({
            "version": VERSION, "protocol": PROTOCOL_VERSION, "zoo": zoo_identity(zoo),
            "menu": [e.__dict__ for e in zoo.menu],
            "service_times": [[float(a), float(s)] for a, s in zip(intercept, slope)],
            "defense": self.defense.identity, "service": self.service.as_dict(), "policy": self.policy,
            "seeds": SEEDS, "loads": CURVE_LOADS, "benign_queries": benign_queries,
            "search": [MIN_LOAD, MAX_LOAD, SEARCH_STEPS]})[:32]


def settings_of(grid: GridConfig, cells: Iterable[Cell]) -> list[Setting]:
    """Every distinct defense setting the cells run (per zoo, defense and service config without the load), in
    cell order, each zoo's undefended setting first, plus the undefended setting under the comparison policy."""
    found: dict[tuple, Setting] = {}
    for cell in cells:
        name = grid.zoo_of(cell)
        service = replace(cell.service, load=1.0, latency_visible=False)  # neither changes the benign workload's
        # setting: the load is swept, and benign clients never see latencies
        undefended = replace(cell, defense=PluginSpec("none")).defense_plugin
        policies = [(undefended, grid.policy), (cell.defense_plugin, grid.policy)]
        if grid.policy != COMPARISON_POLICY:
            policies.append((undefended, COMPARISON_POLICY))
        for defense, policy in policies:
            found.setdefault((name, content_hash(defense.identity), service, policy),
                             Setting(name, defense, service, policy))
    return list(found.values())


def measure(zoo: Zoo, setting: Setting, load: float, seed: int, benign_queries: int) -> dict[str, float]:
    """The setting's service at ``load`` with benign clients only: its goodput and tail latency on ``seed``."""
    service = SimulatedService(zoo, defense=setting.defense.instantiate(), config=replace(setting.service, load=load),
                               seed=seed, budget=0, policy=setting.policy, benign_queries=benign_queries)
    service.finish()
    costs = slo_costs(service)  # as a cell computes them, without the undefended re-run a cell's other costs need
    return {"goodput": costs["goodput"], "latency_p99_ms": costs["latency_p99_ms"],
            "refused_benign": costs["refused_benign"], "dropped_benign": costs["dropped_benign"]}


def _goodput(zoo: Zoo, setting: Setting, load: float, benign_queries: int) -> float:
    return float(np.mean([measure(zoo, setting, load, seed, benign_queries)["goodput"] for seed in SEEDS]))


def highest_load(zoo: Zoo, setting: Setting, benign_queries: int) -> tuple[float, bool]:
    """The highest load (a fraction of the undefended capacity) at which the setting's mean goodput over the
    seeds meets the SLO target, and whether it is capped at :data:`MAX_LOAD` (0: missed even at MIN_LOAD)."""
    target = setting.service.slo_target
    if _goodput(zoo, setting, MAX_LOAD, benign_queries) >= target:
        return MAX_LOAD, True
    if _goodput(zoo, setting, MIN_LOAD, benign_queries) < target:
        return 0.0, False
    lo, hi = MIN_LOAD, MAX_LOAD
    for _ in range(SEARCH_STEPS):
        middle = math.sqrt(lo * hi)
        lo, hi = (middle, hi) if _goodput(zoo, setting, middle, benign_queries) >= target else (lo, middle)
    return lo, False


def entry(zoo: Zoo, setting: Setting, benign_queries: int) -> dict[str, Any]:
    """One setting's curve (per load, per seed) and its highest load meeting the SLO target."""
    curve = {str(load): {str(seed): measure(zoo, setting, load, seed, benign_queries) for seed in SEEDS}
             for load in CURVE_LOADS}
    load, capped = highest_load(zoo, setting, benign_queries)
    return {"zoo": setting.zoo, "zoo_name": zoo.name, "defense": setting.label, "family": setting.defense.family,
            "policy": setting.policy, "benign_clients": setting.service.benign_clients,
            "slo_target": setting.service.slo_target, "curve": curve,
            "highest_load": load, "capped": capped}


def update(grid: GridConfig, zoos: Mapping[str, Zoo], cells: Iterable[Cell], out_dir: Path,
           progress: Any = None) -> dict[str, Any]:
    """Compute the serving entries of ``cells``' settings missing from ``out_dir/serving.json``; write and return
    the file's content (only this grid's entries, each with its ``capacity_kept`` against its zoo's undefended
    setting under the same policy)."""
    path = out_dir / SERVING_FILE
    stored = read(out_dir).get("entries", {})
    entries: dict[str, Any] = {}
    for setting in settings_of(grid, cells):
        zoo = zoos[setting.zoo]
        key = setting.key(zoo, grid.benign_queries)
        if key not in stored or "error" in stored[key]:
            if progress:
                progress(f"serving curve: {zoo.name}, {setting.label}, policy {setting.policy}")
            try:
                stored[key] = entry(zoo, setting, grid.benign_queries)
            except Exception as exc:  # noqa: BLE001 - a defense crash loses its curve, not the run's cells
                log.warning("serving curve of %s on %s failed: %s", setting.label, zoo.name, exc)
                stored[key] = {"zoo": setting.zoo, "zoo_name": zoo.name, "defense": setting.label,
                               "policy": setting.policy, "error": sanitise(f"{type(exc).__name__}: {exc}", 500)}
            _write(path, stored)  # each finished entry is kept, whatever happens to the next one
        entries[key] = stored[key]
    for value in entries.values():
        if "error" in value:
            continue
        base = next((e for e in entries.values() if e["zoo"] == value["zoo"] and e["defense"] == "none"
                     and e["policy"] == value["policy"] and e.get("benign_clients") == value["benign_clients"]
                     and "error" not in e), None)
        value["capacity_kept"] = value["highest_load"] / base["highest_load"] \
            if base and base["highest_load"] > 0 else None
    return _write(path, entries)


def _write(path: Path, entries: Mapping[str, Any]) -> dict[str, Any]:
    content = {"version": VERSION, "slo_loads": list(CURVE_LOADS), "seeds": list(SEEDS), "entries": dict(entries)}
    write_atomic(path, json.dumps(content, indent=1, sort_keys=True) + "\n")
    return content


def read(out_dir: Path) -> dict[str, Any]:
    """``out_dir/serving.json`` as written by :func:`update` (empty when absent)."""
    path = out_dir / SERVING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

