"""The grid model: plugin specs resolved once, blocks, the grid config and its cells, and grid loading.

A grid (TOML, ``schemas/grid.schema.json``) is the union of its blocks; a block is the cross
product of its zoos, victims, attacks, defenses, budgets and seeds. Every plugin a grid names is
resolved once, when the grid loads (:func:`resolve`): its label, family, strength and source
identity are computed then, kept on the grid (``GridConfig.plugins``) and carried on its cells
and their rows. Loading a grid is pure: it reads and checks the submissions it names without
registering them (a run registers them, :mod:`psml_bench.bench.context`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from ..common.files import read_toml, resolve_config, validate
from ..contract.errors import ConfigError, PsmlError
from ..contract.plugins import Defense
from .sequential import SequentialSeeds, read_sequential
from ..plugins.manifests import Loaded, declared_submissions, grid_entries, scan_submissions
from ..contract.registries import ATTACKS, DEFENSES, POLICIES, STRATEGIES
from ..contract.registry import Registry
from ..serving.config import ServiceConfig
from ..contract.surrogate_config import SURROGATE_DEFAULTS
from ..zoo.attacker_data import IN_DISTRIBUTION, SOURCES, check_attacker_data
from ..zoo.config import load_zoo_config

RECIPE_FIELDS = ("surrogate", "epochs", "min_steps")
"""The surrogate parameters a block's training recipe fixes (an attack still declares soft or hard labels)."""
DEFAULT_RECIPE: tuple[tuple[str, Any], ...] = tuple((k, SURROGATE_DEFAULTS[k]) for k in RECIPE_FIELDS)
MAX_ACCURACY_DROP = 0.01
MAX_FALSE_POSITIVES = 0.05
MAX_ATTACKER_IDENTITIES = 64
"""The most client ids a Sybil attacker may spread its queries over (``attacker_identities``)."""
REFERENCE_ATTACKS = ("psml", "naive", "oracle")
"""The attacks whose differences are a sequential block's headline comparisons (psml - naive, psml - oracle)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginSpec:
    """A plugin name with fixed parameters, as a grid names it."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class ResolvedPlugin:
    """What a :class:`PluginSpec` means, computed once: plain data, so it travels to workers.

    Attributes:
        kind: ``attack`` or ``defense``.
        label: name with the parameters that differ from the defaults (a defense's strength always shown).
        family: the label without the strength parameter (what a strength sweep has in common).
        strength: the defense's strength parameter, if any; ``strength_value`` its value here.
        access: an attack's access (``service`` or ``victim``).
        identity: name, version, source hash and parameters (and the extraction strategy's version and
            source hash): the plugin's part of a cell key.
        defaults: the class's parameters with their default values.
        submitted: whether the plugin is a submission (run in the sandbox, its recipe verified).
        acts_on_routing: a defense that changes only the spec or the routing choice
            (:func:`acts_on_routing`).
    """

    kind: str
    spec: PluginSpec
    label: str
    family: str
    strength: str | None
    strength_value: Any
    access: str
    identity: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    submitted: bool = False
    acts_on_routing: bool = False

    @property
    def cls(self) -> type:
        """The registered class (looked up in this process's registry)."""
        return _REGISTRIES[self.kind].get(self.spec.name)

    def instantiate(self) -> Any:
        """A fresh plugin instance with the spec's parameters."""
        return self.cls(**self.spec.kwargs)


_REGISTRIES: dict[str, Registry] = {"attack": ATTACKS, "defense": DEFENSES}


def acts_on_routing(cls: type) -> bool:
    """Whether a defense class overrides a spec or routing hook (``perturb_spec``, ``reroute``) and no other.

    A submission never counts: its sandboxed proxy overrides every hook.
    """
    if getattr(cls, "submission_folder", None) is not None:
        return False
    changed = {hook for hook in ("admit", "perturb_spec", "reroute", "answer", "postprocess")
               if getattr(cls, hook, None) is not getattr(Defense, hook)}
    return bool(changed) and changed <= {"perturb_spec", "reroute"}


def resolve(kind: str, spec: PluginSpec) -> ResolvedPlugin:
    """Resolve an ``attack`` or ``defense`` spec against the registries as they stand (no memo: a grid
    keeps what it resolved, and its cells carry it).

    Raises:
        UnknownPluginError: the name is not registered.
        ConfigError: a parameter is unknown, of the wrong type or not allowed.
    """
    cls = _REGISTRIES[kind].get(spec.name)
    plugin = cls(**spec.kwargs)  # checks names, types and allowed values
    identity: dict[str, Any] = {"name": spec.name, "version": cls.version, "source_sha256": cls.source_hash(),
                                "params": spec.kwargs}
    if "strategy" in cls.defaults:  # the extraction strategy is code the attack runs: its source counts too
        strategy = STRATEGIES.get(plugin.params["strategy"])
        identity["strategy"] = {"version": strategy.version, "source_sha256": strategy.source_hash()}
    strength = getattr(plugin, "strength", None)
    return ResolvedPlugin(
        kind=kind, spec=spec, label=plugin.label, family=plugin.family, strength=strength,
        strength_value=plugin.params[strength] if strength else None, access=getattr(plugin, "access", ""),
        identity=identity, defaults=dict(cls.defaults),
        submitted=getattr(cls, "submission_folder", None) is not None,
        acts_on_routing=kind == "defense" and acts_on_routing(cls))


def threat_attack_label(label: str, attacker_data: str, attacker_identities: int) -> str:
    """An attack's label in rows and tables under a threat setting: ``psml on photos as 16 clients``.

    The label carries the pool's source and the attacker's identities so that tables keep threat
    settings apart; at the defaults (in-distribution, one identity) it is the attack's own label, so
    a grid without these parameters writes the results it wrote before they existed.
    """
    if attacker_data != IN_DISTRIBUTION:
        label = f"{label} on {attacker_data}"
    if attacker_identities != 1:
        label = f"{label} as {attacker_identities} clients"
    return label


@dataclass(frozen=True)
class Cell:
    """One (victim, attack, defense, budget, seed, service load and clients, zoo, attacker data) of a grid.

    ``zoo`` is the zoo the cell runs on, as the grid names it (``""``: the grid's main zoo); the
    victim role resolves on it. It is in the cell key through the zoo's identity, not by name.
    ``attacker_data`` is where the attacker's pool comes from (:mod:`psml_bench.zoo.attacker_data`);
    it is in the cell key only when it is not ``in-distribution``, so older keys stand.
    ``attacker_identities`` is how many client ids the attacker spreads its queries over, round-robin
    (in the key only when it is not 1).
    """

    victim: str
    attack: PluginSpec
    defense: PluginSpec
    budget: int
    seed: int
    service: ServiceConfig = ServiceConfig()
    zoo: str = ""
    attacker_data: str = IN_DISTRIBUTION
    attacker_identities: int = 1

    @cached_property
    def attack_plugin(self) -> ResolvedPlugin:
        """The resolved attack: carried from the grid that made the cell, else resolved here (once per cell)."""
        return resolve("attack", self.attack)

    @cached_property
    def defense_plugin(self) -> ResolvedPlugin:
        """The resolved defense: carried from the grid that made the cell, else resolved here (once per cell)."""
        return resolve("defense", self.defense)

    def carrying(self, attack: ResolvedPlugin | None, defense: ResolvedPlugin | None) -> Cell:
        """This cell holding its grid's resolved plugins (None: resolve it when asked); returns the cell."""
        for name, plugin in (("attack_plugin", attack), ("defense_plugin", defense)):
            if plugin is not None:
                self.__dict__[name] = plugin  # what the cached property would hold (the dataclass is frozen)
        return self


@dataclass(frozen=True)
class Block:
    """One part of a grid: the cross product of its lists is a set of cells."""

    name: str
    victims: tuple[str, ...]
    attacks: tuple[PluginSpec, ...]
    defenses: tuple[PluginSpec, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    services: tuple[ServiceConfig, ...] = (ServiceConfig(),)
    recipe: tuple[tuple[str, Any], ...] = DEFAULT_RECIPE
    zoos: tuple[str, ...] = ("",)
    """The zoos the block runs on, as the grid names them (``""``: the grid's main zoo)."""
    attacker_data: tuple[str, ...] = (IN_DISTRIBUTION,)
    """Where the attacker's pool comes from, one cell per source."""
    attacker_identities: tuple[int, ...] = (1,)
    """How many client ids the attacker spreads its queries over, one cell per value."""
    sequential: SequentialSeeds | None = None
    """Whether the runner adds seeds to the block's unresolved headline comparisons (None: its seeds only)."""

    def cells(self) -> list[Cell]:
        return [Cell(v, a, d, b, s, c, z, x, k) for z, v, a, d, b, c, x, k, s in itertools.product(
            self.zoos, self.victims, self.attacks, self.defenses, self.budgets, self.services, self.attacker_data,
            self.attacker_identities, self.seeds)]


@dataclass(frozen=True)
class GridConfig:
    """A validated grid: the union of its blocks' cells, or the cross product of its lists.

    With ``blocks`` the top-level lists are the union of the blocks' lists (for display).
    ``max_accuracy_drop``, ``max_false_positives`` and the blocks' ``recipe`` say how the leaderboard
    ranks, not what a cell computes: none is part of a cell key.
    """

    name: str
    zoo: str
    policy: str
    victims: tuple[str, ...]
    attacks: tuple[PluginSpec, ...]
    defenses: tuple[PluginSpec, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    benign_queries: int
    source: str
    blocks: tuple[Block, ...] = ()
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    max_false_positives: float = MAX_FALSE_POSITIVES
    plugins: tuple[ResolvedPlugin, ...] = field(default=(), compare=False, repr=False)
    """Every plugin of the grid's blocks, resolved when it loaded (a grid built in code has none: its
    cells resolve their own)."""

    def plugin(self, kind: str, spec: PluginSpec) -> ResolvedPlugin:
        """The grid's resolved ``attack`` or ``defense`` for ``spec`` (resolved now if it has none)."""
        found = self._resolved.get((kind, spec))
        return found if found is not None else resolve(kind, spec)

    @cached_property
    def _resolved(self) -> dict[tuple[str, PluginSpec], ResolvedPlugin]:
        return {(p.kind, p.spec): p for p in self.plugins}

    def parts(self) -> tuple[Block, ...]:
        """The grid's blocks; a grid built without them is one block of its lists (default service)."""
        return self.blocks or (Block("", self.victims, self.attacks, self.defenses, self.budgets, self.seeds),)

    def cells(self) -> list[Cell]:
        """The grid's cells, each carrying the plugins the grid resolved when it loaded."""
        return self._carried(cell for block in self.parts() for cell in block.cells())

    def block_cells(self, block: Block, seeds: tuple[int, ...]) -> list[Cell]:
        """``block``'s cells at ``seeds`` (a sequential block's later seeds), as :meth:`cells` makes them."""
        return self._carried(replace(block, seeds=seeds).cells())

    def _carried(self, cells: Iterable[Cell]) -> list[Cell]:
        resolved = self._resolved
        return [cell.carrying(resolved.get(("attack", cell.attack)), resolved.get(("defense", cell.defense)))
                for cell in dict.fromkeys(replace(cell, zoo=self.zoo_of(cell)) for cell in cells)]

    def sequential_cells(self, block: Block) -> list[Cell]:
        """The most cells ``block``'s sequential seeds may add: at its later seeds up to its cap, the reference
        attacks without a defense and, where it has defense settings, every service attack (none without
        sequential seeds; the runner asks only for the seeds of comparisons still open)."""
        if block.sequential is None:
            return []
        compared = set(found.values()) if "psml" in (found := self.references(block)) and len(found) > 1 else set()
        defended = any(d.name != "none" for d in block.defenses)
        later = tuple(s for s in block.sequential.seeds(block.seeds) if s not in block.seeds)
        return [cell for cell in self.block_cells(block, later) if (defended and cell.attack_plugin.access == "service")
                or (cell.defense_plugin.spec.name == "none" and cell.attack_plugin.label in compared)]

    def references(self, block: Block) -> dict[str, str]:
        """Per name of :data:`REFERENCE_ATTACKS`, the label of the block's attack of that name whose parameters are
        its defaults, the training recipe aside (one on the block's recipe first, else the first listed)."""
        found: dict[str, str] = {}
        for spec in sorted(block.attacks, key=lambda a: self._recipe_of(a) != block.recipe):
            attack = self.plugin("attack", spec)
            if spec.name in REFERENCE_ATTACKS and spec.name not in found and all(
                    attack.defaults.get(k) == v for k, v in spec.params if k not in RECIPE_FIELDS):
                found[spec.name] = attack.label
        return found

    def _recipe_of(self, spec: PluginSpec) -> tuple[tuple[str, Any], ...]:
        params = {**self.plugin("attack", spec).defaults, **spec.kwargs}
        return tuple((k, params.get(k)) for k in RECIPE_FIELDS)

    def zoo_of(self, cell: Cell) -> str:
        """The zoo a cell runs on, as the grid names it."""
        return cell.zoo or self.zoo

    def zoos(self) -> tuple[str, ...]:
        """Every zoo the grid's blocks run on, the main zoo first."""
        return tuple(dict.fromkeys([self.zoo, *(z or self.zoo for block in self.parts() for z in block.zoos)]))


def _expand(entries: list[dict[str, Any]], kind: str, source: str, field_name: str,
            resolved: dict[tuple[str, PluginSpec], ResolvedPlugin]) -> tuple[PluginSpec, ...]:
    specs = []
    for index, entry in enumerate(entries):
        try:
            _REGISTRIES[kind].get(entry["name"])
        except PsmlError as exc:
            raise ConfigError(f"{source}: field '{field_name}.{index}.name': {exc}") from None
        sweep = entry.get("sweep", {})
        keys = sorted(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)):
            params = {**entry.get("params", {}), **dict(zip(keys, values))}
            spec = PluginSpec(entry["name"], tuple(sorted(params.items())))
            try:
                if (kind, spec) not in resolved:
                    resolved[(kind, spec)] = resolve(kind, spec)  # validates names and types now, not mid-run
            except PsmlError as exc:
                raise ConfigError(f"{source}: field '{field_name}.{index}': {exc}") from None
            specs.append(spec)
    return tuple(dict.fromkeys(specs))


def load_grid(name_or_path: str | Path) -> GridConfig:
    """Load and validate a grid config by shipped name or path; plugin names and parameters are checked too.

    Pure: the submissions are read and checked, and the grid's plugins resolved against the registries and
    the valid submissions, but nothing is registered (a run does that, :class:`~psml_bench.bench.context.RunContext`).
    """
    path = resolve_config("grids", name_or_path)
    raw = read_toml(path)
    validate(raw, "grid", str(path))
    policy = raw.get("policy", "infaas-slo")
    try:
        POLICIES.get(policy)
    except PsmlError as exc:
        raise ConfigError(f"{path}: field 'policy': {exc}") from None
    loaded = scan_submissions()  # read and checked, not registered; invalid ones are logged and skipped
    resolved: dict[tuple[str, PluginSpec], ResolvedPlugin] = {}
    with declared_submissions(loaded):
        blocks = _blocks(raw, str(path), loaded, resolved)
        for block in blocks:
            for kind, specs in (("attack", block.attacks), ("defense", block.defenses)):
                for spec in specs:
                    if (kind, spec) not in resolved:
                        resolved[(kind, spec)] = resolve(kind, spec)
    union = lambda field: tuple(dict.fromkeys(x for block in blocks for x in getattr(block, field)))  # noqa: E731
    grid = GridConfig(
        name=raw["name"], zoo=raw["zoo"], policy=policy, victims=union("victims"),
        attacks=union("attacks"), defenses=union("defenses"), budgets=union("budgets"),
        seeds=tuple(raw["seeds"]), benign_queries=raw.get("benign_queries", 1000), source=str(path),
        blocks=blocks, max_accuracy_drop=float(raw.get("max_accuracy_drop", MAX_ACCURACY_DROP)),
        max_false_positives=float(raw.get("max_false_positives", MAX_FALSE_POSITIVES)),
        plugins=tuple(resolved.values()),
    )
    _check_sequential(grid)
    return grid


def _services(grid_level: dict[str, Any], block_level: dict[str, Any], source: str, where: str
              ) -> tuple[ServiceConfig, ...]:
    """The block's service configs: grid-level fields overridden by the block's; a list sweeps its field."""
    fields = {**grid_level, **block_level}
    keys = sorted(fields)
    lists = [fields[k] if isinstance(fields[k], list) else [fields[k]] for k in keys]
    configs = []
    for values in itertools.product(*lists):
        try:
            configs.append(ServiceConfig(**dict(zip(keys, values))))
        except PsmlError as exc:
            raise ConfigError(f"{source}: field '{where}service': {exc}") from None
    return tuple(dict.fromkeys(configs))


def _recipe(grid_level: dict[str, Any], block_level: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The block's training recipe: the surrogate defaults, overridden by the grid's ``recipe``, then the block's."""
    recipe = {**dict(DEFAULT_RECIPE), **grid_level, **block_level}
    return tuple((k, recipe[k]) for k in RECIPE_FIELDS)


def _blocks(raw: dict[str, Any], source: str, loaded: list[Loaded],
            resolved: dict[tuple[str, PluginSpec], ResolvedPlugin]) -> tuple[Block, ...]:
    """The grid's blocks (a grid without ``blocks`` is one block that every submission joins)."""
    if "blocks" not in raw:
        missing = [f for f in ("attacks", "defenses", "budgets") if f not in raw]
        if missing:
            raise ConfigError(f"{source}: a grid without 'blocks' needs the field(s) {', '.join(missing)}")
        entries = [{**raw, "name": "", "submissions": ["attack", "defense"]}]
    else:
        entries = raw["blocks"]
    submitted_attacks, submitted_defenses = grid_entries(raw["name"], loaded=loaded)
    blocks = []
    for index, entry in enumerate(entries):
        where = f"blocks.{index}." if "blocks" in raw else ""
        for field_name in ("victims", "budgets", "attacks", "defenses"):
            if field_name not in entry and field_name not in raw:
                raise ConfigError(f"{source}: field '{where}{field_name}' is missing (and has no grid-level default)")
        attack_entries = entry.get("attacks", raw.get("attacks"))
        defense_entries = entry.get("defenses", raw.get("defenses"))
        attacks = _expand(attack_entries, "attack", source, f"{where}attacks", resolved)
        defenses = _expand(defense_entries, "defense", source, f"{where}defenses", resolved)
        named = {e["name"] for e in attack_entries + defense_entries}
        joining = entry.get("submissions", [])
        if "attack" in joining:
            attacks += tuple(PluginSpec(n, tuple(sorted(p.items()))) for n, p in submitted_attacks if n not in named)
        if "defense" in joining:
            defenses += tuple(PluginSpec(n, tuple(sorted(p.items()))) for n, p in submitted_defenses if n not in named)
            for name in sorted({n for n, p in submitted_defenses if n in named and p}):
                log.warning("%s: %sdefenses names submission '%s' itself, so its manifest's sweep is not used in "
                            "this block (list each setting in the grid to sweep it)", source, where, name)
        services = _services(raw.get("service", {}), entry.get("service", {}) if "blocks" in raw else {}, source,
                             where)
        for attack in attacks:
            if ("attack", attack) not in resolved:
                resolved[("attack", attack)] = resolve("attack", attack)
            if resolved[("attack", attack)].cls.requires_latency and not all(s.latency_visible for s in services):
                raise ConfigError(f"{source}: field '{where}service.latency_visible': attack '{attack.name}' needs "
                                  "the service to show latencies; set latency_visible = true")
        blocks.append(Block(entry["name"], tuple(entry.get("victims", raw.get("victims"))),
                            tuple(dict.fromkeys(attacks)), tuple(dict.fromkeys(defenses)),
                            tuple(entry.get("budgets", raw.get("budgets"))),
                            tuple(entry.get("seeds", raw["seeds"]) if "blocks" in raw else raw["seeds"]), services,
                            _recipe(raw.get("recipe", {}), entry.get("recipe", {}) if "blocks" in raw else {}),
                            _zoos(entry.get("zoos", [raw["zoo"]]) if "blocks" in raw else [raw["zoo"]], source,
                                  where),
                            _attacker_data(raw.get("attacker_data", IN_DISTRIBUTION),
                                           entry.get("attacker_data") if "blocks" in raw else None,
                                           tuple(entry.get("budgets", raw.get("budgets"))), source, where),
                            _attacker_identities(raw.get("attacker_identities", 1),
                                                 entry.get("attacker_identities") if "blocks" in raw else None,
                                                 source, where),
                            read_sequential(entry if "blocks" in raw else {}, tuple(entry.get("seeds", raw["seeds"])),
                                            source, where)))
    return tuple(blocks)


def _check_sequential(grid: GridConfig) -> None:
    """Refuse a sequential block with no headline comparison to add seeds to.

    Raises:
        ConfigError: the block lacks the defense ``none``, or has neither psml with naive or oracle nor another
            defense.
    """
    for index, block in enumerate(grid.blocks):
        if block.sequential is None:
            continue
        references = grid.references(block)
        undefended = any(d.name == "none" for d in block.defenses)
        attacks = "psml" in references and ("naive" in references or "oracle" in references)
        if not (undefended and (attacks or len(block.defenses) > 1)):
            raise ConfigError(f"{grid.source}: field 'blocks.{index}.sequential_seeds': block '{block.name}' has no "
                              "headline comparison to add seeds to: it needs the defense 'none' and either 'psml' "
                              "with 'naive' or 'oracle' (at their defaults, the training recipe aside) or another "
                              "defense")


def _attacker_identities(grid_level: int | list[int], block_level: int | list[int] | None, source: str,
                         where: str) -> tuple[int, ...]:
    """The block's attacker identity counts (the block's field, else the grid's; a list sweeps), each an integer
    from 1 to :data:`MAX_ATTACKER_IDENTITIES`."""
    value = grid_level if block_level is None else block_level
    field_name = f"{where}attacker_identities" if block_level is not None else "attacker_identities"
    counts = value if isinstance(value, list) else [value]
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_ATTACKER_IDENTITIES:
            raise ConfigError(f"{source}: field '{field_name}': attacker_identities must be an integer from 1 to "
                              f"{MAX_ATTACKER_IDENTITIES}, got {count!r}")
    return tuple(dict.fromkeys(counts))


def _attacker_data(grid_level: str | list[str], block_level: str | list[str] | None, budgets: tuple[int, ...],
                   source: str, where: str) -> tuple[str, ...]:
    """The block's attacker data sources (the block's field, else the grid's; a list sweeps), each checked:
    known, its package installed, and at least as many inputs as the block's largest budget."""
    value = grid_level if block_level is None else block_level
    field_name = f"{where}attacker_data" if block_level is not None else "attacker_data"
    names = value if isinstance(value, list) else [value]
    for name in names:
        try:
            check_attacker_data(name)
        except PsmlError as exc:
            raise ConfigError(f"{source}: field '{field_name}': {exc}") from None
        size = SOURCES[name].size if name in SOURCES else None
        if size is not None and max(budgets) > size:
            raise ConfigError(f"{source}: field '{field_name}': attacker_data '{name}' has {size} inputs, fewer than "
                              f"the budget {max(budgets)}")
    return tuple(dict.fromkeys(names))


def _zoos(entries: list[str], source: str, where: str) -> tuple[str, ...]:
    """The block's zoos as the grid names them, each checked to be a zoo config (not built: the runner builds)."""
    for index, name in enumerate(entries):
        try:
            load_zoo_config(name)
        except PsmlError as exc:
            raise ConfigError(f"{source}: field '{where}zoos.{index}': {exc}") from None
    return tuple(entries)
