"""What several test modules share: a target that records what it forwards, and a tiny-zoo grid file."""

from __future__ import annotations

from pathlib import Path

import torch

from psml_bench import Spec, Target
from psml_bench.serving.frontend import Frontend

TINY_GRID = """
name = "{name}"
zoo = "fmnist-tiny"
victims = ["rank:2"]
seeds = [0]
benign_queries = 100
{top}
[[blocks]]
name = "b"
budgets = [{budget}]
attacks = [{attacks}]
defenses = [{defenses}]
{block}
"""
"""One block (psml, 20 steps, one epoch, by default) on fmnist-tiny's second model, one seed, 100 benign queries."""


TINY_ATTACK = '{ name = "psml", params = { min_steps = 20, epochs = 1 } }'


def tiny_grid(path: Path, *, budget: int, defense: str, top: str = "", block: str = "",
              attacks: tuple[str, ...] = ("psml",), defenses: tuple[str, ...] = ()) -> Path:
    """Write a :data:`TINY_GRID` named after ``path`` (``top`` and ``block``: extra lines at the top and in its
    block; ``attacks``: the attack names, each trained for 20 steps and one epoch; ``defenses``: entries of the
    block's defense list after ``defense``) to ``path``; return it."""
    entries = ", ".join(TINY_ATTACK.replace('"psml"', f'"{name}"') for name in attacks)
    listed = ", ".join([f'{{ name = "{defense}" }}', *defenses])
    path.write_text(TINY_GRID.format(name=path.stem, budget=budget, attacks=entries, defenses=listed, top=top,
                                     block=block))
    return path


class Recorder:
    """A target that records every input and spec it forwards to the server (once answered)."""

    def __init__(self, server: Frontend):
        self.server = server
        self.inputs: list[torch.Tensor] = []
        self.specs: list[Spec] = []

    def query(self, inputs, spec, purpose):
        answers = self.server.query(inputs, spec, purpose)
        self.inputs.append(inputs.clone())
        self.specs.extend([spec] * len(inputs) if isinstance(spec, Spec) else list(spec))
        return answers

    @property
    def target(self) -> Target:
        return Target(self.query, lambda: self.server.remaining)

    @property
    def queried(self) -> torch.Tensor:
        return torch.cat(self.inputs)
