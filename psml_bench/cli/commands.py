"""What each ``psml-bench`` command does, given its parsed arguments (:mod:`psml_bench.cli.parser`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

from ..contract.errors import ConfigError, ManifestError, PsmlError


def cmd_run(args: argparse.Namespace) -> int:
    """``psml-bench run``: run a grid and write its leaderboard; 1 if a cell failed."""
    from ..bench.grid import load_grid
    from ..runner import check_profile, make_executor, run_grid

    from ..zoo.profiling import resolve_device

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


def cmd_render(args: argparse.Namespace) -> int:
    """``psml-bench render``: re-render a leaderboard from its committed cells."""
    from ..bench.grid import load_grid
    from ..render import rerender

    grid = load_grid(args.grid)
    count = rerender(grid, Path(args.out))
    print(f"grid {grid.name}: leaderboard re-rendered from {count} committed cells in {args.out} (none recomputed)")
    return 0


def _profile_path(zoo: str, choice: str | None, cache: Path | None) -> Path | None:
    """``run --profile reference|cpu|cuda|PATH`` as the profile file to route on (None: the default)."""
    from ..zoo.config import load_zoo_config
    from ..zoo.profiles import resolve_profile

    if not choice:
        return None
    return resolve_profile(load_zoo_config(zoo), choice, cache)


def cmd_zoo_build(args: argparse.Namespace) -> int:
    """``psml-bench zoo build``: build a zoo, show it and match it against the lock."""
    from ..zoo.build import build_zoo
    from ..zoo.config import load_zoo_config

    config = load_zoo_config(args.name)
    directory = build_zoo(config, args.cache, progress=not args.quiet, force=args.force, data=args.data,
                          device=args.device, jobs=args.jobs or None)
    print(f"zoo {config.name} built in {directory}")
    _show(args.name, args.cache)
    return _match_lock(directory, args.lock)


def _match_lock(directory: Path, lock: str | None) -> int:
    """Print, per model of the zoo in ``directory``, whether it matches the lock (default: the checkout's)."""
    from ..zoo.lock import checkout_lock, match_lines, read_locks

    path = Path(lock) if lock else checkout_lock()
    locks = read_locks(path) if lock or path.is_file() else None  # an explicit --lock must exist
    print("\n" + "\n".join(match_lines(json.loads((directory / "card.json").read_text()), locks, str(path))))
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    """``psml-bench zoo export``: write a built zoo to one archive."""
    from ..zoo.archive import export_zoo
    from ..zoo.build import open_zoo

    zoo = open_zoo(args.name, args.cache, build=False, progress=False)
    written = export_zoo(zoo.directory, Path(args.file))
    print(f"zoo {written.zoo} exported to {written.archive} ({len(written.files)} files, sha256 {written.sha256}); "
          f"import it with: psml-bench zoo import {written.archive} --sha256 {written.sha256}")
    return 0


def cmd_zoo_import(args: argparse.Namespace) -> int:
    """``psml-bench zoo import``: install a zoo archive, show it and match it against the lock."""
    from ..zoo.archive import import_zoo
    from ..zoo.lock import checkout_lock, read_locks

    path = Path(args.lock) if args.lock else checkout_lock()
    locks = None if args.ignore_lock or not (args.lock or path.is_file()) else read_locks(path)
    installed = import_zoo(args.source, args.cache, sha256=args.sha256, config=args.config, force=args.force,
                           locks=locks, lock_source=f"the lock {path}")
    print(f"zoo {installed.zoo} imported into {installed.directory}: {len(installed.files)} files, every hash "
          f"checked (archive sha256 {installed.sha256})")
    _show(installed.zoo if args.config is None else args.config, args.cache)
    return _match_lock(installed.directory, args.lock)


def _show(name: str, cache: Path | None) -> int:
    from ..report.leaderboard import disagreement_text, zoo_table
    from ..report.sections import markdown_table
    from ..zoo.profiling import frontier_separation, load_profile
    from ..zoo.model_zoo import Zoo
    from ..zoo.config import load_zoo_config, zoo_directory
    from ..zoo.profiles import committed_profiles, profile_table

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


def cmd_zoo_show(args: argparse.Namespace) -> int:
    """``psml-bench zoo show``: print a zoo's card (or plan) and its committed profiles."""
    return _show(args.name, args.cache)


def cmd_zoo_profile(args: argparse.Namespace) -> int:
    """``psml-bench zoo profile``: measure and write a zoo's latency profile."""
    from ..common.files import write_atomic
    from ..zoo.profiling import dump_profile, profile_device_kind
    from ..zoo.config import load_zoo_config
    from ..zoo.profiles import measured_profile_path, profile_table, profile_zoo, resolve_profile

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


def cmd_list(args: argparse.Namespace) -> int:
    """``psml-bench list``: print every registered plugin."""
    from ..plugins.registration import load_submissions
    from ..contract.registries import ATTACKS, DEFENSES, POLICIES, STRATEGIES

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


def cmd_validate(args: argparse.Namespace) -> int:
    """``psml-bench validate``: check submissions; 1 if one is not valid."""
    from ..bench.conformance import validate_submission
    from ..plugins.folders import submission_folders, submissions_dirs

    paths = [Path(p) for p in args.paths] or submission_folders()
    if not paths:
        looked = ", ".join(map(str, submissions_dirs())) or "nothing"
        raise PsmlError(f"no submission folders to validate (looked in {looked})")
    failed = 0
    for path in paths:
        if args.write_parameters and not _write_parameters(path):
            failed += 1
            print(f"psml-bench: error: submission {path} is not valid", file=sys.stderr)
            continue
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


def _write_parameters(path: Path) -> bool:
    """``validate --write-parameters``: rewrite one manifest's parameters from its class, saying what changed;
    False (the error printed) if it could not."""
    from ..plugins.derived import write_parameters

    try:
        rewrite = write_parameters(path)
    except ManifestError as exc:
        for error in exc.errors:
            print(f"psml-bench: error: {error}", file=sys.stderr)
        return False
    except PsmlError as exc:
        print(f"psml-bench: error: {exc}", file=sys.stderr)
        return False
    for line in rewrite.changes:
        print(f"{rewrite.path}: {line}")
    for line in rewrite.notes:
        print(f"{rewrite.path}: note: {line}")
    print(f"{rewrite.path}: parameters written from class {rewrite.cls}" if rewrite.written
          else f"{rewrite.path}: parameters already those of class {rewrite.cls}; nothing written")
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    """``psml-bench serve``: serve a zoo over HTTP until stopped."""
    import torch

    from ..bench.grid import resolve
    from ..serving.http_app import HttpLimits, bind, serve_forever
    from ..serving.live import LiveService, default_keys, load_keys
    from ..plugins.registration import load_submissions
    from ..contract.registries import POLICIES
    from ..bench.remote_attack import parse_plugin
    from ..serving.simulator import BatchingConfig
    from ..zoo.build import open_zoo

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


def cmd_attack(args: argparse.Namespace) -> int:
    """``psml-bench attack``: run an attack against a live endpoint."""
    from ..bench.remote_attack import attack_endpoint, load_pool
    from ..zoo.build import open_zoo

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


def cmd_load(args: argparse.Namespace) -> int:
    """``psml-bench load``: drive benign LoadGen traffic at a live endpoint and print the report."""
    from ..serving.loadgen import run_load
    from ..zoo.build import open_zoo

    zoo = open_zoo(args.zoo, args.cache, build=False, progress=False)
    report = run_load(args.target, args.key, zoo, qps=args.qps, duration_s=args.duration,
                      latency_bound_ms=args.latency_bound_ms, seed=args.seed,
                      log_dir=Path(args.log_dir) if args.log_dir else None)
    print(tabulate([[k, v] for k, v in report.as_dict().items()], headers=["load", "value"], tablefmt="github"))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0
