"""DFME (strategies/dfme.py): its queries stay within the count, the gradient estimate's queries included; seeds
reproduce it; its zeroth-order gradient points where the true one does; its student learns the victim on the
generator's outputs. (Every strategy's conformance tests, dfme's included, are in test_strategies.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psml_bench import (STRATEGIES, ConfigError, Knowledge, QuerySession, Spec, Surrogate, SurrogateConfig, Target,
                        extract)
from psml_bench.bench.cell import run_cell
from psml_bench.bench.grid import load_grid
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend
from strategies.dfme import (PROBABILITY_FLOOR, Dfme, InputGenerator, disagreement, forward_difference_gradient,
                             to_input, victim_logits)

SMALL = {"batch": 4, "directions": 2, "generator_steps": 1, "student_steps": 2, "latent": 16, "width": 8}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Recorder:
    """A target that records each call's inputs before the server answers them."""

    def __init__(self, server: Frontend, refuse_every: int = 0):
        self.server, self.refuse_every = server, refuse_every
        self.calls: list[torch.Tensor] = []

    def _query(self, inputs, spec, purpose):
        self.calls.append(inputs.clone())
        answers = self.server.query(inputs, spec, purpose)
        refused, latency = self.server.last_refused, self.server.last_latency_ms
        if self.refuse_every:  # the service refuses some rows: NaN answers that still cost budget
            refused = refused | (torch.arange(len(inputs)) % self.refuse_every == 0)
            answers = torch.where(refused.unsqueeze(1), torch.full_like(answers, float("nan")), answers)
        return answers, refused, latency

    @property
    def target(self) -> Target:
        return Target(self._query, lambda: self.server.remaining)


def _setup(zoo, budget: int | None):
    victim = zoo.role("rank:2")
    server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng([0, 2]), budget=budget,
                      model_ids=[victim])
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=zoo.splits["attacker_x"], role="rank:2")
    return server, knowledge, Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])


def _collect(zoo, n_queries: int, seed: int = 7, server_budget: int | None = None, refuse_every: int = 0,
             labels: str = "soft", **params):
    server, knowledge, spec = _setup(zoo, server_budget)
    recorder = Recorder(server, refuse_every)
    session = QuerySession(recorder.target, knowledge, spec, n_queries)
    student = Dfme(**params).collect(session, knowledge, SurrogateConfig(labels=labels), np.random.default_rng(seed))
    return student, server, recorder, session


@pytest.mark.parametrize("n_queries", [1, 4, 19, 100, 137])
def test_dfme_spends_exactly_its_queries_and_never_more(tiny_zoo, n_queries):
    _, server, recorder, session = _collect(tiny_zoo, n_queries, server_budget=n_queries, **SMALL)
    assert server.used == n_queries == sum(len(c) for c in recorder.calls) == session.sent
    assert server.log.count("extract") == n_queries


def test_the_gradient_estimates_queries_are_sent_and_counted(tiny_zoo):
    """batch 4, m = 2, one generator and two student steps: per round 12 estimate queries, then 4 and 4."""
    _, server, recorder, _ = _collect(tiny_zoo, 100, server_budget=100, **SMALL)
    assert [len(c) for c in recorder.calls] == [12, 4, 4] * 5 and server.used == 100
    epsilon = STRATEGIES.get("dfme").defaults["epsilon"]
    for call in recorder.calls[::3]:
        points = call.view(4, 3, -1)  # per latent: its m = 2 perturbed points, then the point itself
        steps = (points[:, :2] - points[:, 2:]).norm(dim=2)
        # act' <= 1/2: a perturbation of length epsilon moves the input by at most epsilon / 2, and it moves it
        assert (steps > 0).all() and (steps <= epsilon / 2 + 1e-6).all()
    rows = {row.numpy().tobytes() for row in tiny_zoo.splits["attacker_x"]}
    assert not any(x.numpy().tobytes() in rows for x in torch.cat(recorder.calls))  # data-free: no pool input


def test_the_last_queries_that_do_not_fill_a_round_shrink_it_then_train_the_student(tiny_zoo):
    # 2 rounds of 4 latents x 5 queries, then 2 latents (10 queries), then 3 queries for a last student step
    _, _, recorder, _ = _collect(tiny_zoo, 53, **SMALL)
    assert [len(c) for c in recorder.calls] == [12, 4, 4] * 2 + [6, 2, 2, 3]


def test_the_same_seed_gives_the_same_queries_and_student_and_another_seed_does_not(tiny_zoo):
    runs = [_collect(tiny_zoo, 100, seed=seed, **SMALL) for seed in (7, 7, 8)]
    (student, _, recorder, _), (again, _, recorder_again, _), (_, _, other, _) = runs
    assert torch.equal(torch.cat(recorder.calls), torch.cat(recorder_again.calls))
    state, state_again = student.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not torch.equal(torch.cat(recorder.calls), torch.cat(other.calls))


def test_the_forward_difference_gradient_points_along_the_true_one(tiny_zoo):
    """With m directions in d dimensions the estimate's cosine to the gradient is about sqrt(m / (m + d)):
    0.58 for m = 400, d = 784; a wrong sign or scale in the estimate fails this."""
    victim = tiny_zoo.model(tiny_zoo.role("rank:2")).eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = Surrogate("test_resnet", 1, tiny_zoo.num_classes, torch.tensor([0.5]), torch.tensor([0.5])).eval()
        pre = torch.randn(3, *tiny_zoo.input_shape)

    def answers(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(victim(x), dim=1)

    estimate, answered = forward_difference_gradient(pre, answers, student, 400, 1e-3, "soft",
                                                     torch.Generator().manual_seed(1))
    x = pre.clone().requires_grad_(True)
    objective = -disagreement(student(to_input(x)), victim_logits(answers(to_input(x)), "soft")).mean()
    (true,) = torch.autograd.grad(objective, x)
    cosine = F.cosine_similarity(estimate.flatten(1), true.flatten(1), dim=1)
    assert answered.all() and (cosine > 0.4).all(), cosine
    assert 1.2 < float(estimate.norm() / true.norm()) < 2.3  # E|estimate|^2 = |grad|^2 (1 + d / m) roughly


def test_the_student_learns_the_victim_on_the_generators_outputs(tiny_zoo):
    """On a tiny budget (300 queries, batches of 4: 10 rounds): the student's disagreement with the victim on
    the generator outputs it queried is below that of the same student untrained, and it agrees with the
    victim's argmax far more often (measured: disagreement 0.97 vs 1.17, agreement 0.43 vs 0.07)."""
    student, _, _, session = _collect(tiny_zoo, 300, batch=4)
    untrained, _, _, _ = _collect(tiny_zoo, 1, batch=4)  # the same seed's student; one query trains nothing
    inputs, targets = session.inputs, victim_logits(session.answers, "soft")
    with torch.no_grad():
        trained_logits, untrained_logits = student(inputs), untrained(inputs)
    distance = [float(disagreement(logits, targets).mean()) for logits in (trained_logits, untrained_logits)]
    assert distance[0] < 0.9 * distance[1], distance
    agreement = [float((logits.argmax(1) == session.answers.argmax(1)).float().mean())
                 for logits in (trained_logits, untrained_logits)]
    assert agreement[0] > agreement[1] + 0.2, agreement


def test_refused_answers_give_no_gradient_and_no_loss(tiny_zoo):
    student, server, _, session = _collect(tiny_zoo, 100, refuse_every=3, **SMALL)
    assert server.used == 100 and len(session.inputs) < 100  # refused rows cost budget and are not kept
    assert all(torch.isfinite(v).all() for v in student.state_dict().values())


def test_hard_labels_recover_the_logits_of_the_one_hot_argmax():
    answers = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.0, 0.4]])
    soft, hard = victim_logits(answers, "soft"), victim_logits(answers, "hard")
    assert torch.allclose(soft.sum(dim=1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(soft[1, 1] - soft[1, 0], torch.tensor(np.log(PROBABILITY_FLOOR / 0.6), dtype=torch.float32))
    floor = float(np.log(PROBABILITY_FLOOR))
    expected = torch.tensor([[floor, 0.0, floor], [0.0, floor, floor]])
    assert torch.allclose(hard, expected - expected.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 30, 30), (3, 33, 17)])
def test_the_generator_fits_the_zoos_input_shape(shape):
    generator = InputGenerator(shape, latent=8, width=4)
    out = generator(torch.randn(5, 8))
    assert out.shape == (5, *shape)
    inputs = to_input(out)
    assert (inputs >= 0).all() and (inputs <= 1).all()


def test_extract_returns_the_strategys_student_and_refuses_anything_else(tiny_zoo, monkeypatch):
    server, knowledge, spec = _setup(tiny_zoo, 50)
    config = SurrogateConfig(strategy="dfme")
    surrogate = extract(Recorder(server).target, knowledge, spec, 50, np.random.default_rng(3), config)
    student, _, _, _ = _collect(tiny_zoo, 50, seed=3)  # extract's generator: the strategy draws first
    assert type(surrogate) is Surrogate and not surrogate.training and surrogate.recipe == ""
    assert all(torch.equal(a, b) for a, b in zip(surrogate.state_dict().values(), student.state_dict().values()))
    # answers the attack already holds train the student further
    extra = (knowledge.pool[:8], torch.softmax(torch.randn(8, knowledge.num_classes), dim=1))
    server, _, _ = _setup(tiny_zoo, 50)
    further = extract(Recorder(server).target, knowledge, spec, 50, np.random.default_rng(3), config, extra=extra)
    assert not all(torch.equal(a, b) for a, b in zip(further.state_dict().values(), student.state_dict().values()))
    monkeypatch.setattr(Dfme, "collect", lambda *args: torch.nn.Linear(1, 1))
    server, _, _ = _setup(tiny_zoo, 50)
    with pytest.raises(ConfigError, match="strategy 'dfme' returned Linear from collect"):
        extract(Recorder(server).target, knowledge, spec, 50, np.random.default_rng(3), config)


GRID = """
name = "data-free"
zoo = "fmnist-tiny"
victims = ["rank:2"]
seeds = [0]
benign_queries = 100

[[blocks]]
name = "b"
budgets = [300]
attacks = [{ name = "psml", params = { strategy = "dfme" } }]
defenses = [{ name = "none" }, { name = "prob-noise", sweep = { sigma = [0.2] } }]
"""


def test_a_data_free_cell_runs_in_the_sandbox_and_is_own_training(tmp_path, tiny_zoo):
    """psml's fingerprint, then DFME, in the isolated attack process: the budget spent, the student scored, and
    its row on the own-training track (the student is not a training of the block's recipe)."""
    path = tmp_path / "data-free.toml"
    path.write_text(GRID)
    grid = load_grid(path)
    rows = [run_cell(tiny_zoo, grid, cell) for cell in grid.cells()]
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    assert all(r.queries == 300 and r.surrogate_recipe == "" and 0 <= r.fidelity <= 1 for r in rows)
