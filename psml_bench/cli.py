"""The ``psml-bench`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from .common.cli_numbers import MAX_BUDGET, MIN_MEMORY_MB, integer, number, victim_role
from .contract.errors import ConfigError, PsmlError


def _cmd_run(args: argparse.Namespace) -> int:
    from .bench.grid import load_grid
    from .runner import check_profile, make_executor, run_grid

    from .zoo.profiling import resolve_device

    device = resolve_device(args.device)
    grid = load_grid(args.grid)
    check_profile(grid, args.profile)
    profile = _profile_path(grid.zoo, args.profile, args.cache)
    executor = make_executor(args.executor, jobs=args.jobs, timeout_s=args.timeout or None,
                             memory_mb=args.memory_mb or None, address=args.address, device=device)
    summary = run_grid(grid, Path(args.out), cache_dir=args.cache, executor=executor, progress=not args.quiet,
                       profile=profile, retry_failed=args.retry_failed, device=device,
                       on_preflight=lambda plan: print(plan.text(), flush=True), require_cached=args.require_cached)
    print(f"grid {grid.name}: {len(summary.rows)} cells ({summary.cached} cached, {summary.computed} computed, "
          f"{summary.failed} failed) in {summary.seconds:.1f}s; leaderboard written to {summary.out_dir}")
    failed = [row for row in summary.rows if row.status != "ok"]
    for row in failed:
        print(f"psml-bench: error: cell {row.victim} / {row.attack} / {row.defense} / budget "
              f"{row.budget} / seed {row.seed} failed: {row.error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_render(args: argparse.Namespace) -> int:
    from .bench.grid import load_grid
    from .render import rerender

    grid = load_grid(args.grid)
    count = rerender(grid, Path(args.out))
    print(f"grid {grid.name}: leaderboard re-rendered from {count} committed cells in {args.out} (none recomputed)")
    return 0


def _profile_path(zoo: str, choice: str | None, cache: Path | None) -> Path | None:
    """``run --profile reference|cpu|cuda|PATH`` as the profile file to route on (None: the default)."""
    from .zoo.config import load_zoo_config
    from .zoo.profiles import resolve_profile

    if not choice:
        return None
    return resolve_profile(load_zoo_config(zoo), choice, cache)


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from .zoo.build import build_zoo
    from .zoo.config import load_zoo_config

    config = load_zoo_config(args.name)
    directory = build_zoo(config, args.cache, progress=not args.quiet, force=args.force, data=args.data,
                          device=args.device, jobs=args.jobs or None)
    print(f"zoo {config.name} built in {directory}")
    _show(args.name, args.cache)
    return _match_lock(directory, args.lock)


def _match_lock(directory: Path, lock: str | None) -> int:
    """Print, per model of the zoo in ``directory``, whether it matches the lock (default: the checkout's)."""
    from .zoo.lock import checkout_lock, match_lines, read_locks

    path = Path(lock) if lock else checkout_lock()
    locks = read_locks(path) if lock or path.is_file() else None  # an explicit --lock must exist
    print("\n" + "\n".join(match_lines(json.loads((directory / "card.json").read_text()), locks, str(path))))
    return 0


def _cmd_zoo_export(args: argparse.Namespace) -> int:
    from .zoo.archive import export_zoo
    from .zoo.build import open_zoo

    zoo = open_zoo(args.name, args.cache, build=False, progress=False)
    written = export_zoo(zoo.directory, Path(args.file))
    print(f"zoo {written.zoo} exported to {written.archive} ({len(written.files)} files, sha256 {written.sha256}); "
          f"import it with: psml-bench zoo import {written.archive} --sha256 {written.sha256}")
    return 0


def _cmd_zoo_import(args: argparse.Namespace) -> int:
    from .zoo.archive import import_zoo
    from .zoo.lock import checkout_lock, read_locks

    path = Path(args.lock) if args.lock else checkout_lock()
    locks = None if args.ignore_lock or not (args.lock or path.is_file()) else read_locks(path)
    installed = import_zoo(args.source, args.cache, sha256=args.sha256, config=args.config, force=args.force,
                           locks=locks, lock_source=f"the lock {path}")
    print(f"zoo {installed.zoo} imported into {installed.directory}: {len(installed.files)} files, every hash "
          f"checked (archive sha256 {installed.sha256})")
    _show(installed.zoo if args.config is None else args.config, args.cache)
    return _match_lock(installed.directory, args.lock)


def _show(name: str, cache: Path | None) -> int:
    from .report.leaderboard import disagreement_text, zoo_table
    from .report.sections import markdown_table
    from .zoo.profiling import frontier_separation, load_profile
    from .zoo.model_zoo import Zoo
    from .zoo.config import load_zoo_config, zoo_directory
    from .zoo.profiles import committed_profiles, profile_table

    config = load_zoo_config(name)
    directory = zoo_directory(config, cache)
    zoo = None
    if (directory / "card.json").is_file():
        zoo = Zoo(directory)
        print(f"zoo {zoo.name} ({directory})\n{config.description}\n")
        print(markdown_table(zoo_table(zoo)))
        print(f"\nadvertised specs: accuracy in {list(zoo.accuracy_range)}, latency in {list(zoo.latency_range_ms)} ms;"
              f" splits {zoo.card['splits']}")
        print(disagreement_text(zoo))
    else:
        dataset = config.dataset
        source = f"Hugging Face Hub '{dataset.hub_id}'" + (f" ({dataset.hub_data_dir})" if dataset.hub_data_dir else "")
        shape = config.image.input_shape()
        rows = [[m.id, m.arch, json.dumps(m.kwargs) if m.kwargs else "", "yes" if m.pretrained else "no",
                 m.input_size or "", m.train.samples, m.train.epochs, m.train.batch_size]
                for m in config.models]
        print(f"zoo {config.name}: not built yet (run `psml-bench zoo build {config.name}`)\n{config.description}\n")
        print(f"dataset: {dataset.name} from a local copy (--data or ${dataset.local_dir_env}) or the {source}; "
              f"splits owner {config.splits.owner}, attacker {config.splits.attacker}, benign {config.splits.benign}, "
              f"test {config.splits.test} (seed {config.splits.seed})")
        if shape is not None:
            print(f"inputs: {shape[0]}x{shape[1]}x{shape[2]}"
                  + (f" (shorter side resized to {config.image.resize}, centre crop)" if config.image.resize else ""))
        if config.build.gpu_scale:
            expected = (f", about {config.build.expected_gpu_minutes:g} min on one GPU"
                        if config.build.expected_gpu_minutes else "")
            print(f"build: GPU-scale{expected}; see docs/zoos.md")
        print()
        print(tabulate(rows, headers=["model", "timm arch", "kwargs", "pretrained", "input size", "train samples",
                                      "epochs", "batch"], tablefmt="github"))
    profiles = committed_profiles(config)
    for path in profiles:
        print()
        print(profile_table(path))
    if not profiles:
        print(f"\nno latency profile is committed for zoo {config.name}")
    if zoo is not None and zoo.profile_path is not None:
        print(f"\nfrontier neighbours in {zoo.profile_path.name} (separated: the gap between their p50s exceeds the "
              "larger of their p90 - p50 spreads):")
        for pair in frontier_separation(load_profile(zoo.profile_path), zoo.frontier):
            print(f"  {pair.faster} -> {pair.slower}: gap {pair.gap_ms:.2f} ms, spread {pair.spread_ms:.2f} ms, "
                  + ("separated" if pair.separated else "NOT separated"))
    return 0


def _cmd_zoo_show(args: argparse.Namespace) -> int:
    return _show(args.name, args.cache)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of batch sizes") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"'{text}': batch sizes must be positive")
    return sizes


def _cmd_zoo_profile(args: argparse.Namespace) -> int:
    from .common.files import write_atomic
    from .zoo.profiling import dump_profile, profile_device_kind
    from .zoo.config import load_zoo_config
    from .zoo.profiles import measured_profile_path, profile_table, profile_zoo, resolve_profile

    config = load_zoo_config(args.name)
    profile = profile_zoo(args.name, args.cache, device=args.device, precision=args.precision,
                          batch_sizes=args.batch_sizes, warmup=args.warmup, repeats=args.repeats,
                          untrained=args.untrained, data=args.data, progress=not args.quiet, threads=args.threads)
    kind = profile_device_kind(profile)
    out = Path(args.out) if args.out else measured_profile_path(config, kind, args.cache)
    write_atomic(out, dump_profile(profile))
    print(profile_table(out))
    try:
        routes = kind if resolve_profile(config, kind, args.cache) == out else out  # a committed one goes first
    except ConfigError:  # written elsewhere (--out), and none of this kind is committed or cached
        routes = out
    print(f"profile written to {out}; route a run on it with `psml-bench run --profile {routes}`")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .plugins.registration import load_submissions
    from .contract.registries import ATTACKS, DEFENSES, POLICIES, STRATEGIES

    load_submissions()

    rows = []
    for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES), ("strategy", STRATEGIES), ("policy", POLICIES)):
        for entry in registry:
            doc = (entry.plugin.__doc__ or "").strip().splitlines()
            params = getattr(entry.plugin, "defaults", {})
            rows.append([kind, entry.name, entry.source, ", ".join(f"{k}={v}" for k, v in params.items()),
                         doc[0] if doc else ""])
    print(tabulate(rows, headers=["kind", "name", "source", "parameters", "description"], tablefmt="github"))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .bench.conformance import validate_submission
    from .plugins.folders import submission_folders, submissions_dirs

    paths = [Path(p) for p in args.paths] or submission_folders()
    if not paths:
        looked = ", ".join(map(str, submissions_dirs())) or "nothing"
        raise PsmlError(f"no submission folders to validate (looked in {looked})")
    failed = 0
    for path in paths:
        result = validate_submission(path, cache_dir=args.cache, run=not args.manifest_only, progress=not args.quiet)
        for error in result.manifest_errors:
            print(f"psml-bench: error: {error}", file=sys.stderr)
        for check in result.checks:
            status = "ok  " if check.ok else "FAIL"
            print(f"{status} {result.folder.name}: {check.name}" + (f": {check.detail}" if check.detail else ""))
        if result.ok:
            print(f"{result.folder.name}: valid")
        else:
            failed += 1
            print(f"psml-bench: error: submission {result.folder} is not valid", file=sys.stderr)
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from .bench.grid import resolve
    from .serving.http_app import HttpLimits, bind, serve_forever
    from .serving.live import LiveService, default_keys, load_keys
    from .plugins.registration import load_submissions
    from .contract.registries import POLICIES
    from .bench.remote_attack import parse_plugin
    from .serving.simulator import BatchingConfig
    from .zoo.build import open_zoo

    load_submissions()
    defense = resolve("defense", parse_plugin(args.defense))
    keys = load_keys(args.keys) if args.keys else default_keys()
    limits = BatchingConfig(args.max_batch, args.max_wait_ms)
    POLICIES.get(args.policy)  # an unknown policy: one line, before the zoo is opened
    if args.max_body_mb <= 0 or args.threads < 1:
        raise PsmlError("--max-body-mb must be > 0 and --threads >= 1")
    zoo = open_zoo(args.zoo, args.cache, build=False, progress=False,
                   profile=_profile_path(args.zoo, args.profile, args.cache))
    sock = bind(args.host, args.port)
    torch.set_num_threads(args.threads)
    service = LiveService(zoo, defense=defense.instantiate(), keys=keys, limits=limits,
                          forward_threads=args.forward_threads, seed=args.seed, policy=args.policy)
    host, port = sock.getsockname()[:2]
    print(f"psml-bench serve: zoo {zoo.name}, defense {defense.label}, on http://{host}:{port}", file=sys.stderr,
          flush=True)
    if not args.keys:
        print(f"psml-bench serve: no --keys: API key {next(iter(keys))} (operator, unlimited)", file=sys.stderr,
              flush=True)
    serve_forever(service, sock, HttpLimits(int(args.max_body_mb * 2**20)))
    print("psml-bench serve: stopped", file=sys.stderr, flush=True)
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from .bench.remote_attack import attack_endpoint, load_pool
    from .zoo.build import open_zoo

    zoo = open_zoo(args.zoo, args.cache, build=False, progress=False) if args.zoo else None
    pool = load_pool(Path(args.pool)) if args.pool else None
    result = attack_endpoint(args.target, args.key, args.attack, out_dir=Path(args.out), budget=args.budget,
                             role=args.role, zoo=zoo, pool=pool, seed=args.seed, timeout_s=args.timeout or None)
    summary = result.summary
    scores = (f"; fidelity {summary['fidelity']:.4f}, accuracy {summary['accuracy']:.4f} against "
              f"{summary['victim_model']}") if "fidelity" in summary else ""
    print(f"attack {summary['attack']}: {summary['queries']} queries in {summary['wall_s']}s{scores}; surrogate "
          f"{result.surrogate_path}, summary {result.summary_path}")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from .serving.loadgen import run_load
    from .zoo.build import open_zoo

    zoo = open_zoo(args.zoo, args.cache, build=False, progress=False)
    report = run_load(args.target, args.key, zoo, qps=args.qps, duration_s=args.duration,
                      latency_bound_ms=args.latency_bound_ms, seed=args.seed,
                      log_dir=Path(args.log_dir) if args.log_dir else None)
    print(tabulate([[k, v] for k, v in report.as_dict().items()], headers=["load", "value"], tablefmt="github"))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


def _endpoint_arguments(parser: argparse.ArgumentParser, key_help: str) -> None:
    """``--target URL --key KEY``: a live endpoint and the client's key."""
    parser.add_argument("--target", required=True, metavar="URL", help="the endpoint's base URL")
    parser.add_argument("--key", required=True, help=key_help)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument told on one line (the option, the value, the range) and exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="psml-bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory for zoos (default: $PSML_BENCH_CACHE or ~/.cache/psml-bench)")
    commands = parser.add_subparsers(dest="command", required=True)

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
    run.set_defaults(func=_cmd_run)

    render = commands.add_parser("render", help="re-render a leaderboard from its committed cells (no cell recomputed, "
                                                "no zoo built)")
    render.add_argument("--grid", default="default", help="grid name (shipped) or path to a grid .toml")
    render.add_argument("--out", default="leaderboard", help="leaderboard directory (default: leaderboard/)")
    render.set_defaults(func=_cmd_render)

    zoo = commands.add_parser("zoo", help="build, show, profile, export or import a zoo").add_subparsers(
        dest="zoo_command", required=True)
    data_help = ("local copy of the dataset: a directory (parquet files, save_to_disk, or IDX files for fmnist) "
                 "or SPLIT=FILE.parquet,... (default: the config's environment variable, else the Hub)")
    build = zoo.add_parser("build", help="train and measure every model of a zoo")
    build.add_argument("name")
    build.add_argument("--force", action="store_true", help="rebuild even if the zoo is cached")
    build.add_argument("--data", default=None, metavar="DIR|SPLIT=FILE,...", help=data_help)
    build.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the config's build.device)")
    build.add_argument("--jobs", type=integer(0), default=0,
                       help="models trained side by side, each on the config's build.threads threads (default 0: "
                            "CPU cores // threads); the weights are the same for every value")
    lock_help = ("a leaderboard's zoos.json to match the weights against (default: the checkout's "
                 "leaderboard/zoos.json, the committed leaderboard)")
    build.add_argument("--lock", default=None, metavar="PATH", help=lock_help)
    build.set_defaults(func=_cmd_zoo_build)
    export = zoo.add_parser("export", help="write a built zoo (card, weights, splits, predictions, hashes) to one file")
    export.add_argument("name")
    export.add_argument("file", metavar="FILE", help="the archive to write (a tar)")
    export.set_defaults(func=_cmd_zoo_export)
    imported = zoo.add_parser("import", help="install a zoo archive (a file or URL) after checking every hash")
    imported.add_argument("source", metavar="FILE|URL")
    imported.add_argument("--sha256", default=None, help="the archive's sha256 (required for a URL; export prints it)")
    imported.add_argument("--config", default=None, help="the zoo config it was built from (default: the shipped one)")
    imported.add_argument("--force", action="store_true", help="replace a zoo of the same config already in the cache")
    imported.add_argument("--lock", default=None, metavar="PATH",
                          help=lock_help + "; an archive whose weights differ from it is refused")
    imported.add_argument("--ignore-lock", action="store_true",
                          help="install an archive whose weights differ from the lock (its cells are then computed, "
                               "not reused)")
    imported.set_defaults(func=_cmd_zoo_import)
    show = zoo.add_parser("show", help="print a zoo's card (or its plan, when not built) and its committed profiles")
    show.add_argument("name")
    show.set_defaults(func=_cmd_zoo_show)
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
    profile.add_argument("--data", default=None, metavar="DIR|SPLIT=FILE,...", help=data_help)
    profile.add_argument("--out", default=None,
                         help="where to write the profile JSON "
                              "(default: <cache>/profiles/<zoo>-<hash>-<cpu|cuda>.json)")
    profile.set_defaults(func=_cmd_zoo_profile)

    commands.add_parser("list", help="list attacks, defenses, extraction strategies and policies").set_defaults(
        func=_cmd_list)

    validate = commands.add_parser("validate", help="check submissions: manifest, import, conformance tests on "
                                                    "fmnist-tiny")
    validate.add_argument("paths", nargs="*", metavar="PATH",
                          help="submission folders or manifest.json files (default: every folder of submissions/)")
    validate.add_argument("--manifest-only", action="store_true",
                          help="check the manifests and register them (no plugin code is imported or run), "
                               "without the conformance tests")
    validate.set_defaults(func=_cmd_validate)

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
    serve.set_defaults(func=_cmd_serve)

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
    attack.set_defaults(func=_cmd_attack)

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
    load.set_defaults(func=_cmd_load)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("datasets", "huggingface_hub", "urllib3", "filelock", "fsspec"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except PsmlError as exc:
        print(f"psml-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psml-bench: interrupted; finished cells are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
