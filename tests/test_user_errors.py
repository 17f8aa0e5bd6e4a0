"""Every user mistake is one PsmlError sentence: the public API and the CLI, audited as a table (input -> message)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import psml_bench as p
from psml_bench.cli import main
from psml_bench.contract.registries import DEFENSES
from psml_bench.serving.frontend import Frontend, target_for
from psml_bench.zoo.model_zoo import ZooModel


@pytest.fixture(scope="module")
def world(tiny_zoo):
    server = Frontend(tiny_zoo, defense=DEFENSES.get("none")(), rng=np.random.default_rng(0), budget=10**6)
    knowledge = p.Knowledge(input_shape=tiny_zoo.input_shape, num_classes=tiny_zoo.num_classes,
                            spec_range=server.spec_range, pool=tiny_zoo.splits["attacker_x"], role="rank:1")
    spec = p.Spec(server.spec_range.accuracy[0], server.spec_range.latency_ms[1])
    return target_for(server), knowledge, spec, tiny_zoo.splits["attacker_x"][:4]


def _knowledge(world, **changes):
    _, k, _, _ = world
    fields = dict(input_shape=k.input_shape, num_classes=k.num_classes, spec_range=k.spec_range, pool=k.pool,
                  role=k.role)
    return p.Knowledge(**{**fields, **changes})


QUICK = p.SurrogateConfig(epochs=1, min_steps=1)
RNG = np.random.default_rng(0)

# name: (call(world), the PsmlError subclass, the message's regex)
API = {
    "spec not a number": (lambda w: p.Spec("high", 1.0), p.InvalidQueryError,
                          r"^spec min_accuracy must be a number, got 'high'$"),
    "spec NaN": (lambda w: w[0].query(w[3], p.Spec(w[2].min_accuracy, float("nan"))), p.InvalidQueryError,
                 r"^spec max_latency_ms nan is outside the advertised range \["),
    "spec range reversed": (lambda w: p.SpecRange((0.9, 0.1), (1.0, 2.0)), p.ConfigError,
                            r"^spec range accuracy must be \(low, high\) with low <= high, got \(0\.9, 0\.1\)$"),
    "role": (lambda w: _knowledge(w, role="victim"), p.ConfigError,
             r"^role must be 'rank:k' with k >= 1 \(the k-th most accurate model\), got 'victim'$"),
    "role rank:0": (lambda w: _knowledge(w, role="rank:0"), p.ConfigError, r"^role must be 'rank:k' with k >= 1"),
    "input shape": (lambda w: _knowledge(w, input_shape=(28, 28)), p.ConfigError,
                    r"^input_shape must be \(channels, height, width\) of positive integers, got \(28, 28\)$"),
    "pool shape": (lambda w: _knowledge(w, pool=torch.zeros(5, 3, 28, 28)), p.ConfigError,
                   r"^pool must be a floating-point tensor of shape \(N, 1, 28, 28\), got shape \(5, 3, 28, 28\)"),
    "classes": (lambda w: _knowledge(w, num_classes=1), p.ConfigError, r"^num_classes must be an integer >= 2, got 1$"),
    "pool size negative": (lambda w: p.sample_pool(w[1], -1, RNG), p.InvalidQueryError,
                           r"^sample_pool's n must be an integer >= 0, got -1$"),
    "pool size fraction": (lambda w: p.sample_pool(w[1], 2.5, RNG), p.InvalidQueryError,
                           r"^sample_pool's n must be an integer >= 0, got 2\.5$"),
    "seed instead of generator": (lambda w: p.sample_pool(w[1], 3, 0), p.ConfigError,
                                  r"^sample_pool's rng must be a numpy\.random\.Generator"),
    "query count negative": (lambda w: p.QuerySession(w[0], w[1], w[2], -1), p.InvalidQueryError,
                             r"^n_queries must be an integer >= 0, got -1$"),
    "extract negative": (lambda w: p.extract(w[0], w[1], w[2], -5, RNG, QUICK), p.InvalidQueryError,
                         r"^n_queries must be an integer >= 0, got -5$"),
    "unknown architecture": (lambda w: p.SurrogateConfig(arch="resnet_18"), p.ConfigError,
                             r"^unknown surrogate architecture 'resnet_18' \(not a timm architecture; did you mean "),
    "hub architecture": (lambda w: p.Surrogate("hf-hub:x/y", 1, 10, torch.zeros(1), torch.ones(1)), p.ConfigError,
                         r"^surrogate architecture 'hf-hub:x/y' names a download; surrogates are built from timm's "
                         r"local registry only"),
    "surrogate normalisation": (lambda w: p.Surrogate("test_resnet", 1, 10, torch.zeros(3), torch.ones(3)),
                                p.ConfigError, r"^surrogate mean must be a tensor of 1 value, got 3 values$"),
    "negative epochs": (lambda w: p.SurrogateConfig(epochs=-1), p.ConfigError,
                        r"^epochs must be an integer >= 0, got -1$"),
    "label mode": (lambda w: p.SurrogateConfig(labels="medium"), p.ConfigError,
                   r"^parameter 'labels' must be 'soft' or 'hard', got 'medium'$"),
    "learning rate": (lambda w: p.SurrogateConfig(lr=0), p.ConfigError, r"^lr must be > 0, got 0$"),
    "answers per input": (lambda w: p.train_surrogate(w[3], torch.ones(3, 10) / 10, w[1], QUICK, RNG), p.ConfigError,
                          r"^train_surrogate's answers must be a tensor of shape \(4, 10\), one probability row per "
                          r"input, got \(3, 10\)$"),
    "config as dict": (lambda w: p.train_surrogate(w[3], torch.ones(4, 10) / 10, w[1], {"epochs": 1}, RNG),
                       p.ConfigError, r"^config must be a psml_bench\.SurrogateConfig, got dict$"),
    "inputs far above 1": (lambda w: w[0].query(w[3] * 255, w[2]), p.InvalidQueryError,
                           r"^inputs must be in \[0, 1\] \(images scaled to \[0, 1\]\), got values in \[0, 255\]$"),
    "inputs below 0": (lambda w: p.query_batched(w[0], w[3] - 0.5, w[2]), p.InvalidQueryError,
                       r"^inputs must be in \[0, 1\] \(images scaled to \[0, 1\]\), got values in \[-0\.5, "),
    "attack parameter range": (lambda w: p.ATTACKS.get("psml")(epochs=-3), p.ConfigError,
                               r"^attack 'psml' parameter 'epochs' must be an integer >= 0, got -3$"),
    "attack surrogate": (lambda w: p.ATTACKS.get("psml")(surrogate="nope"), p.ConfigError,
                         r"^attack 'psml' parameter 'surrogate' must be a timm architecture of the local registry "
                         r"\(unknown surrogate architecture 'nope'"),
    "empty rule": (lambda w: p.Allowed(minimum=2, maximum=1), p.ConfigError,
                   r"^Allowed\(minimum=2, maximum=1\): the minimum is above the maximum"),
    "plugin name": (lambda w: p.register_attack("my attack!"), p.PsmlError,
                    r"^attack name 'my attack!' must be letters, digits"),
    "register a function": (lambda w: p.register_defense("fn")(len), p.PsmlError,
                            r"^register_defense\('fn'\) decorates a class, got builtin_function_or_method$"),
    "endpoint": (lambda w: p.HttpTarget("localhost:8000", "key"), p.ConfigError,
                 r"^the endpoint must be an http:// or https:// URL with a host"),
    "endpoint timeout": (lambda w: p.HttpTarget("http://127.0.0.1:9", "key", timeout_s=-1), p.ConfigError,
                         r"^timeout_s must be > 0, got -1$"),
    "zoo model options": (lambda w: ZooModel("test_resnet", {"no_such_option": 1}, 1, 10, [0.5], [0.5]), p.ConfigError,
                          r"^timm architecture 'test_resnet' rejects the zoo config's model options "
                          r"\{'no_such_option': 1\} \(models\.kwargs\): TypeError: "),
    "zoo normalisation channels": (lambda w: ZooModel("test_resnet", {}, 1, 10, [0.5] * 3, [0.2] * 3), p.ConfigError,
                                   r"^the zoo's preprocess\.mean has 3 values for 1-channel inputs \(give 1 or 1\)$"),
}


@pytest.mark.parametrize("case", sorted(API))
def test_a_public_api_mistake_is_one_psml_error(world, case):
    call, kind, message = API[case]
    with pytest.raises(kind, match=message) as error:
        call(world)
    assert isinstance(error.value, p.PsmlError) and "\n" not in str(error.value)


# argv -> the one line on stderr (exit status 2, nothing run)
CLI = {
    "negative timeout": (["run", "--timeout", "-1"], r"^psml-bench run: error: argument --timeout: -1 is out of "
                                                     r"range: must be >= 0 \(see psml-bench run --help\)$"),
    "negative memory": (["run", "--memory-mb", "-5"], r"^psml-bench run: error: argument --memory-mb: -5 is out of "
                                                      r"range: 0 \(none\) or >= 512"),
    "memory too small for torch": (["run", "--memory-mb", "64"], r"argument --memory-mb: 64 is out of range"),
    "negative jobs": (["run", "--jobs", "-2"], r"argument --jobs: -2 is out of range: must be >= 0"),
    "zero budget": (["attack", "--target", "http://127.0.0.1:9", "--key", "k", "--attack", "naive", "--budget", "0"],
                    r"argument --budget: 0 is out of range: must be >= 1 and <= 100,000,000"),
    "absurd budget": (["attack", "--target", "http://127.0.0.1:9", "--key", "k", "--attack", "naive",
                       "--budget", "10000000000"], r"argument --budget: 10000000000 is out of range"),
    "port": (["serve", "tiny", "--port", "70000"],
             r"argument --port: 70000 is out of range: must be >= 0 and <= 65,535"),
    "not a number": (["load", "--target", "http://x", "--key", "k", "--zoo", "z", "--qps", "fast", "--duration", "1"],
                     r"argument --qps: 'fast' is not a number"),
    "zero qps": (["load", "--target", "http://x", "--key", "k", "--zoo", "z", "--qps", "0", "--duration", "1"],
                 r"argument --qps: 0 is out of range: must be > 0"),
    "bad role": (["attack", "--target", "http://127.0.0.1:9", "--key", "k", "--attack", "naive", "--role", "best",
                  "--zoo", "fmnist-tiny"], r"^psml-bench attack: error: argument --role: role must be 'rank:k' "
                                           r"with k >= 1 \(the k-th most accurate model\), got 'best'"),
    "a cell to compute under --require-cached": (["run", "--grid", "tiny", "--out", "lb", "--require-cached",
                                                  "--executor", "inline"],
                                                 r"^psml-bench: error: --require-cached: (\d+) of \1 cells of grid "
                                                 r"tiny are not in lb/cells; no cell was computed$"),
}


@pytest.mark.parametrize("case", sorted(CLI))
def test_a_cli_mistake_is_one_line_and_status_2(tmp_path, capsys, monkeypatch, tiny_zoo, case):
    argv, message = CLI[case]
    monkeypatch.chdir(tmp_path)
    try:
        status = main(["--cache", str(tiny_zoo.directory.parent.parent), *argv])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err, err
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_validate_manifest_only_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--manifest-only check the manifests and register them (no plugin code is imported or run), without " \
           "the conformance tests" in text and "import defenses" not in text
