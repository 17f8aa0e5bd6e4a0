"""psml-bench's ``knockoff`` beside ART's ``KnockoffNets``: the same pool, budget, victim and training recipe.

    python benchmarks/knockoff_vs_art.py [--zoo fmnist-tiny] [--budget 1000] [--seeds 0 1 2 3 4]

Needs the Adversarial Robustness Toolbox (``pip install adversarial-robustness-toolbox``, in the
``test`` extra). Both attacks steal the victim ``rank:1`` of the zoo from a server hosting it alone
(no defense), with random sampling of the attacker's pool and soft labels:

- ours: ``Knockoff(sampling="random", spec="lax")`` with the attack generator ``default_rng([seed, 1])``;
- ART's: ``KnockoffNets(sampling_strategy="random", use_probability=True, nb_stolen=budget)``, its victim a
  ``BlackBoxClassifier`` whose ``predict`` queries the same kind of server (so the server counts ART's queries
  too), its thieved classifier a thin ART estimator whose ``fit`` trains psml-bench's surrogate with the same
  recipe (``fit_surrogate``: architecture, epochs, least steps, optimiser, batch size), seeded from
  ``default_rng([seed, 9])``; ART draws its sample with numpy's global generator, seeded with ``seed``.

What differs is the attack's code: which inputs, how they are queried, how the answers are handed to
training. The two draw their pool samples and surrogate initialisations from different generators, so
per seed they differ by sampling noise; the summary is the mean fidelity of each over the seeds and the
mean of the per-seed differences with its 95% t-interval. ART's *adaptive* strategy is not compared: it
trains its thieved model on one hard-labelled sample at a time (a different training recipe) and needs
labels for the transfer set, which our pool lacks.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from attacks.knockoff import Knockoff
from psml_bench import Knowledge, SurrogateConfig, Target
from psml_bench.bench.cell import surrogate_metrics
from psml_bench.contract.registries import make_defense
from psml_bench.extraction.surrogate import Surrogate, fit_surrogate
from psml_bench.serving.frontend import Frontend
from psml_bench.zoo.build import open_zoo
from psml_bench.zoo.model_zoo import Zoo


def _server(zoo: Zoo, victim: str, budget: int, seed: int) -> Frontend:
    return Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng([seed, 2]), budget=budget,
                    model_ids=[victim])


def _knowledge(zoo: Zoo, server: Frontend) -> Knowledge:
    return Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                     pool=zoo.splits["attacker_x"], role="rank:1")


def ours(zoo: Zoo, victim: str, budget: int, seed: int, config: SurrogateConfig) -> tuple[Surrogate, int]:
    """psml-bench's knockoff (random sampling, soft labels); the surrogate and the queries the server counted."""
    server = _server(zoo, victim, budget, seed)
    attack = Knockoff(spec="lax", sampling="random", surrogate=config.arch, epochs=config.epochs,
                      min_steps=config.min_steps, labels="soft")
    surrogate = attack.run(Target(server.query, lambda: server.remaining), _knowledge(zoo, server), budget,
                           np.random.default_rng([seed, 1]))
    return surrogate, server.used


def art(zoo: Zoo, victim: str, budget: int, seed: int, config: SurrogateConfig) -> tuple[Surrogate, int]:
    """ART's KnockoffNets (random sampling, probabilities) with psml-bench's training recipe."""
    from art.attacks.extraction import KnockoffNets
    from art.estimators.classification import BlackBoxClassifier
    from art.estimators.classification.classifier import ClassifierMixin
    from art.estimators.estimator import BaseEstimator

    server = _server(zoo, victim, budget, seed)
    knowledge = _knowledge(zoo, server)
    lax = (knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
    from psml_bench import Spec

    def predict(x: np.ndarray) -> np.ndarray:
        return server.query(torch.from_numpy(np.asarray(x, dtype=np.float32)), Spec(*lax), "extract").numpy()

    class RecipeClassifier(ClassifierMixin, BaseEstimator):
        """An ART classifier whose ``fit`` is psml-bench's surrogate training with a fixed recipe."""

        estimator_params = BaseEstimator.estimator_params + ClassifierMixin.estimator_params

        def __init__(self) -> None:
            super().__init__(model=None, clip_values=(0.0, 1.0))
            self.nb_classes = zoo.num_classes
            self.surrogate: Surrogate | None = None

        @property
        def input_shape(self) -> tuple[int, ...]:
            return tuple(zoo.input_shape)

        def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64, nb_epochs: int = 10, **kwargs) -> None:
            recipe = replace(config, epochs=nb_epochs, batch_size=batch_size)
            self.surrogate = fit_surrogate(torch.from_numpy(np.asarray(x, dtype=np.float32)),
                                           torch.from_numpy(np.asarray(y, dtype=np.float32)), knowledge, recipe,
                                           int(np.random.default_rng([seed, 9]).integers(2**31)))

        def predict(self, x: np.ndarray, batch_size: int = 512, **kwargs) -> np.ndarray:
            with torch.no_grad():
                return self.surrogate(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()

    victim_art = BlackBoxClassifier(predict, tuple(zoo.input_shape), zoo.num_classes, clip_values=(0.0, 1.0))
    attack = KnockoffNets(victim_art, batch_size_fit=config.batch_size, batch_size_query=512, nb_epochs=config.epochs,
                          nb_stolen=budget, sampling_strategy="random", use_probability=True, verbose=False)
    np.random.seed(seed)  # ART samples with numpy's global generator
    thief = attack.extract(knowledge.pool.numpy(), thieved_classifier=RecipeClassifier())
    return thief.surrogate, server.used


def compare(zoo: Zoo, budget: int, seeds: list[int], config: SurrogateConfig) -> list[dict]:
    """One row per seed: both attacks' fidelity and accuracy on the victim ``rank:1`` and the queries each sent."""
    victim = zoo.role("rank:1")
    rows = []
    for seed in seeds:
        row = {"seed": seed, "budget": budget}
        for name, attack in (("ours", ours), ("art", art)):
            surrogate, used = attack(zoo, victim, budget, seed, config)
            metrics = surrogate_metrics(zoo, victim, surrogate)
            row.update({f"{name}_fidelity": metrics["fidelity"], f"{name}_accuracy": metrics["accuracy"],
                        f"{name}_queries": used})
        rows.append(row)
    return rows


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% Student-t interval."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist-tiny")
    parser.add_argument("--cache", type=Path, default=None, help="zoo cache (default: psml-bench's)")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = open_zoo(args.zoo, args.cache, progress=False)
    config = SurrogateConfig()
    rows = compare(zoo, args.budget, args.seeds, config)
    for row in rows:
        print(json.dumps(row))
    ours_mean, ours_half = interval([r["ours_fidelity"] for r in rows])
    art_mean, art_half = interval([r["art_fidelity"] for r in rows])
    diff_mean, diff_half = interval([r["ours_fidelity"] - r["art_fidelity"] for r in rows])
    print(f"zoo {zoo.name}, victim rank:1 ({zoo.role('rank:1')}), budget {args.budget}, recipe {config.recipe()}, "
          f"{len(rows)} seeds")
    print(f"fidelity: ours {ours_mean:.4f} ± {ours_half:.4f}, ART {art_mean:.4f} ± {art_half:.4f}, "
          f"ours - ART {diff_mean:+.4f} ± {diff_half:.4f} (95% t-interval)")


if __name__ == "__main__":
    main()
