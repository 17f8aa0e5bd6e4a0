"""The ``psml-bench`` argument parser: the global options and each command's arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.cli_numbers import MAX_BUDGET, MIN_MEMORY_MB, integer, number, victim_role
from .commands import (cmd_attack, cmd_list, cmd_load, cmd_render, cmd_run, cmd_serve, cmd_validate, cmd_zoo_build,
                       cmd_zoo_export, cmd_zoo_import, cmd_zoo_profile, cmd_zoo_show)

DESCRIPTION = "The ``psml-bench`` command line."
"""What ``psml-bench --help`` says first (the package's docstring)."""

DATA_HELP = ("local copy of the dataset: a directory (parquet files, save_to_disk, or IDX files for fmnist) "
             "or SPLIT=FILE.parquet,... (default: the config's environment variable, else the Hub)")
LOCK_HELP = ("a leaderboard's zoos.json to match the weights against (default: the checkout's "
             "leaderboard/zoos.json, the committed leaderboard)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument told on one line (the option, the value, the range) and exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``psml-bench`` parser: the global options, then one subcommand per task (each sets ``func``)."""
    parser = _Parser(prog="psml-bench", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory for zoos (default: $PSML_BENCH_CACHE or ~/.cache/psml-bench)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_render(commands)
    _add_zoo(commands)
    commands.add_parser("list", help="list attacks, defenses, extraction strategies and policies").set_defaults(
        func=cmd_list)
    _add_validate(commands)
    _add_serve(commands)
    _add_attack(commands)
    _add_load(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction) -> None:
    """``run``: a grid, where its leaderboard goes, and where and how its cells run."""
    run = commands.add_parser("run", help="run a grid and regenerate the leaderboard")
    run.add_argument("--grid", default="default", help="grid name (shipped) or path to a grid .toml")
    run.add_argument("--out", default="leaderboard", help="leaderboard directory (default: leaderboard/)")
    run.add_argument("--jobs", type=integer(0), default=0,
                     help="cells to run in parallel processes (default 0: one per CPU core)")
    run.add_argument("--profile", default=None, metavar="reference|cpu|cuda|PATH",
                     help="latency profile to route on: the zoo's committed reference profile, its committed (else "
                          "measured) CPU or GPU profile, or a profile file (default: the reference profile)")
    run.add_argument("--executor", default="local", choices=["local", "ray", "inline"],
                     help="where cells run: local process pool (default), a Ray cluster, or this process")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    run.add_argument("--timeout", type=number(0), default=3600.0,
                     help="per-cell wall-clock limit in seconds; 0 for none (default 3600)")
    run.add_argument("--memory-mb", type=integer(MIN_MEMORY_MB, zero="none"), default=8192,
                     help=f"per-cell memory limit in MiB (local executor), at least {MIN_MEMORY_MB}; 0 for none "
                          "(default 8192)")
    run.add_argument("--retry-failed", action="store_true", help="recompute cells whose stored result failed")
    run.add_argument("--require-cached", action="store_true",
                     help="refuse (exit 2, computing nothing) when a cell is not already in OUT/cells; for CI")
    run.add_argument("--device", default="cpu", metavar="cpu|cuda|auto",
                     help="where cells serve, train and score their surrogates: cpu (default), cuda (cuda:N) or auto "
                          "(cuda when available); a cell's key and row name a device other than the CPU")
    run.set_defaults(func=cmd_run)


def _add_render(commands: argparse._SubParsersAction) -> None:
    """``render``: a grid and the leaderboard directory to re-render."""
    render = commands.add_parser("render", help="re-render a leaderboard from its committed cells (no cell recomputed, "
                                                "no zoo built)")
    render.add_argument("--grid", default="default", help="grid name (shipped) or path to a grid .toml")
    render.add_argument("--out", default="leaderboard", help="leaderboard directory (default: leaderboard/)")
    render.set_defaults(func=cmd_render)


def _add_zoo(commands: argparse._SubParsersAction) -> None:
    """``zoo``: its subcommands build, export, import, show and profile."""
    zoo = commands.add_parser("zoo", help="build, show, profile, export or import a zoo").add_subparsers(
        dest="zoo_command", required=True)
    _add_zoo_build(zoo)
    _add_zoo_archive(zoo)
    show = zoo.add_parser("show", help="print a zoo's card (or its plan, when not built) and its committed profiles")
    show.add_argument("name")
    show.set_defaults(func=cmd_zoo_show)
    _add_zoo_profile(zoo)


def _add_zoo_build(zoo: argparse._SubParsersAction) -> None:
    """``zoo build``: the zoo, its data, device and parallelism, and the lock to match."""
    build = zoo.add_parser("build", help="train and measure every model of a zoo")
    build.add_argument("name")
    build.add_argument("--force", action="store_true", help="rebuild even if the zoo is cached")
    build.add_argument("--data", default=None, metavar="DIR|SPLIT=FILE,...", help=DATA_HELP)
    build.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the config's build.device)")
    build.add_argument("--jobs", type=integer(0), default=0,
                       help="models trained side by side, each on the config's build.threads threads (default 0: "
                            "CPU cores // threads); the weights are the same for every value")
    build.add_argument("--lock", default=None, metavar="PATH", help=LOCK_HELP)
    build.set_defaults(func=cmd_zoo_build)


def _add_zoo_archive(zoo: argparse._SubParsersAction) -> None:
    """``zoo export`` and ``zoo import``: a built zoo to one archive file and back, hashes checked."""
    export = zoo.add_parser("export", help="write a built zoo (card, weights, splits, predictions, hashes) to one file")
    export.add_argument("name")
    export.add_argument("file", metavar="FILE", help="the archive to write (a tar)")
    export.set_defaults(func=cmd_zoo_export)
    imported = zoo.add_parser("import", help="install a zoo archive (a file or URL) after checking every hash")
    imported.add_argument("source", metavar="FILE|URL")
    imported.add_argument("--sha256", default=None, help="the archive's sha256 (required for a URL; export prints it)")
    imported.add_argument("--config", default=None, help="the zoo config it was built from (default: the shipped one)")
    imported.add_argument("--force", action="store_true", help="replace a zoo of the same config already in the cache")
    imported.add_argument("--lock", default=None, metavar="PATH",
                          help=LOCK_HELP + "; an archive whose weights differ from it is refused")
    imported.add_argument("--ignore-lock", action="store_true",
                          help="install an archive whose weights differ from the lock (its cells are then computed, "
                               "not reused)")
    imported.set_defaults(func=cmd_zoo_import)


def _add_zoo_profile(zoo: argparse._SubParsersAction) -> None:
    """``zoo profile``: the zoo, where and how its latency is measured, and where the profile goes."""
    profile = zoo.add_parser("profile", help="measure per-model latency at batch sizes 1..64 on a CPU or GPU")
    profile.add_argument("name")
    profile.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    profile.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                         help="weights and inputs in this precision (default fp32)")
    profile.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 2, 4, 8, 16, 32, 64],
                         help="comma-separated batch sizes, including 1 (default 1,2,4,8,16,32,64)")
    profile.add_argument("--warmup", type=integer(0), default=20, help="untimed calls per batch size (default 20)")
    profile.add_argument("--repeats", type=integer(1), default=200, help="timed calls per batch size (default 200)")
    profile.add_argument("--threads", type=integer(1), default=None,
                         help="intra-op threads of every timed call (default: torch's, usually the core count); "
                              "cells serve on 1")
    profile.add_argument("--untrained", action="store_true",
                         help="profile fresh models on random inputs of the zoo's declared shape: no data, no build")
    profile.add_argument("--data", default=None, metavar="DIR|SPLIT=FILE,...", help=DATA_HELP)
    profile.add_argument("--out", default=None,
                         help="where to write the profile JSON "
                              "(default: <cache>/profiles/<zoo>-<hash>-<cpu|cuda>.json)")
    profile.set_defaults(func=cmd_zoo_profile)


def _batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,2,4``: positive batch sizes, sorted and distinct."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of batch sizes") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"'{text}': batch sizes must be positive")
    return sizes


def _add_validate(commands: argparse._SubParsersAction) -> None:
    """``validate``: the submission folders, and whether to run the conformance tests."""
    validate = commands.add_parser("validate", help="check submissions: manifest, import, conformance tests on "
                                                    "fmnist-tiny")
    validate.add_argument("paths", nargs="*", metavar="PATH",
                          help="submission folders or manifest.json files (default: every folder of submissions/)")
    validate.add_argument("--manifest-only", action="store_true",
                          help="check the manifests and register them (no plugin code is imported or run), "
                               "without the conformance tests")
    validate.add_argument("--write-parameters", action="store_true",
                          help="first rewrite each manifest's parameters (types, defaults, minimum/maximum/choices) "
                               "from its class, read in the sandbox, keeping their descriptions; the file is "
                               "written only when they differ, and each change is printed")
    validate.set_defaults(func=cmd_validate)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    """``serve``: the zoo, defense and policy served, where it listens, its keys and its limits."""
    serve = commands.add_parser("serve", help="serve a zoo over HTTP behind the policy and a defense (docs/serving.md)")
    serve.add_argument("zoo", metavar="ZOO", help="a built zoo (name or config path)")
    serve.add_argument("--defense", default="none", metavar="NAME[:k=v,...]", help="defense (default none)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=integer(0, 65535), default=8000, help="port (default 8000; 0: any free port)")
    serve.add_argument("--keys", default=None, metavar="FILE",
                       help="JSON object of API key: budget (default: one fresh operator key, printed)")
    serve.add_argument("--profile", default=None, metavar="reference|cpu|cuda|PATH",
                       help="latency profile to route on (default: the reference profile, as in cells)")
    serve.add_argument("--max-batch", type=integer(1), default=256, help="most inputs per forward batch (default 256)")
    serve.add_argument("--max-wait-ms", type=number(0), default=2.0,
                       help="how long a model's worker waits for its batch to fill (default 2)")
    serve.add_argument("--max-body-mb", type=number(0, exclusive=True), default=64.0,
                       help="largest query body in MiB (default 64)")
    serve.add_argument("--threads", type=integer(1), default=1, help="torch threads per forward pass (default 1)")
    serve.add_argument("--forward-threads", type=integer(1), default=1,
                       help="forward passes run at once, all models together (default 1)")
    serve.add_argument("--seed", type=int, default=0, help="seeds the defense and the clients' ids (default 0)")
    serve.add_argument("--policy", default="infaas-slo",
                       help="routing policy (default infaas-slo: routes on the workers' queues, as cells do)")
    serve.set_defaults(func=cmd_serve)


def _endpoint_arguments(parser: argparse.ArgumentParser, key_help: str) -> None:
    """``--target URL --key KEY``: a live endpoint and the client's key."""
    parser.add_argument("--target", required=True, metavar="URL", help="the endpoint's base URL")
    parser.add_argument("--key", required=True, help=key_help)


def _add_attack(commands: argparse._SubParsersAction) -> None:
    """``attack``: the endpoint, the attack, its budget and victim, and where its surrogate goes."""
    attack = commands.add_parser("attack", help="run an attack against a live endpoint (psml-bench serve or yours)")
    _endpoint_arguments(attack, "the attacker's API key")
    attack.add_argument("--attack", required=True, metavar="NAME[:k=v,...]", help="a registered or submitted attack")
    attack.add_argument("--budget", type=integer(1, MAX_BUDGET), default=None,
                        help="most queries to send (default: the key's remaining budget)")
    attack.add_argument("--role", type=victim_role, default="rank:1",
                        help="the model to steal, rank:k (default rank:1)")
    attack.add_argument("--out", default="attack-out", help="where the surrogate and summary go (default attack-out/)")
    attack.add_argument("--zoo", default=None, help="the zoo the endpoint serves: the pool, and local scoring")
    attack.add_argument("--pool", default=None, metavar="FILE",
                        help="the attacker's unlabelled inputs "
                             "(.npy or safetensors; default: the zoo's attacker split)")
    attack.add_argument("--seed", type=int, default=0, help="seeds the attack (default 0)")
    attack.add_argument("--timeout", type=number(0), default=3600.0,
                        help="attack wall-clock limit in s; 0 for none (default 3600)")
    attack.set_defaults(func=cmd_attack)


def _add_load(commands: argparse._SubParsersAction) -> None:
    """``load``: the endpoint, the zoo it serves, and LoadGen's rate, duration and bound."""
    load = commands.add_parser("load", help="benign load on a live endpoint with MLPerf LoadGen's server scenario")
    _endpoint_arguments(load, "an operator API key")
    load.add_argument("--zoo", required=True, help="the zoo the endpoint serves (benign inputs and specs)")
    load.add_argument("--qps", type=number(0, exclusive=True), required=True,
                      help="target queries per second (Poisson arrivals)")
    load.add_argument("--duration", type=number(0, exclusive=True), required=True, help="minimum duration in seconds")
    load.add_argument("--latency-bound-ms", type=number(0, exclusive=True), default=None,
                      help="LoadGen's p99 latency bound (default: the advertised maximum latency)")
    load.add_argument("--seed", type=int, default=0, help="seeds the inputs and specs (default 0)")
    load.add_argument("--log-dir", default=None, help="keep LoadGen's logs here")
    load.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    load.set_defaults(func=cmd_load)
