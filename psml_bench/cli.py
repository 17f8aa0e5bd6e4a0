"""The ``psml-bench`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from ._errors import PsmlError


def _cmd_run(args: argparse.Namespace) -> int:
    from ._runner import load_grid, make_executor, run_grid

    grid = load_grid(args.grid)
    executor = make_executor(args.executor, jobs=args.jobs, timeout_s=args.timeout or None,
                             memory_mb=args.memory_mb or None, address=args.address)
    summary = run_grid(grid, Path(args.out), cache_dir=args.cache, executor=executor, progress=not args.quiet,
                       profile=Path(args.profile) if args.profile else None, retry_failed=args.retry_failed)
    print(f"grid {grid.name}: {len(summary.rows)} cells ({summary.cached} cached, {summary.computed} computed, "
          f"{summary.failed} failed) in {summary.seconds:.1f}s; leaderboard written to {summary.out_dir}")
    failed = [row for row in summary.rows if row["status"] != "ok"]
    for row in failed:
        print(f"psml-bench: error: cell {row['victim']} / {row['attack']} / {row['defense']} / budget "
              f"{row['budget']} / seed {row['seed']} failed: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from ._zoo import build_zoo, load_zoo_config

    config = load_zoo_config(args.name)
    directory = build_zoo(config, args.cache, progress=not args.quiet, force=args.force)
    print(f"zoo {config.name} built in {directory}")
    return _show(args.name, args.cache)


def _show(name: str, cache: Path | None) -> int:
    from ._leaderboard import zoo_table
    from ._zoo import Zoo, default_cache_dir, load_zoo_config

    config = load_zoo_config(name)
    directory = (cache or default_cache_dir()) / "zoos" / config.directory_name
    if (directory / "card.json").is_file():
        zoo = Zoo(directory)
        print(f"zoo {zoo.name} ({directory})\n{config.description}\n")
        print(zoo_table(zoo))
        print(f"\nadvertised specs: accuracy in {list(zoo.accuracy_range)}, latency in {list(zoo.latency_range_ms)} ms;"
              f" splits {zoo.card['splits']}")
        return 0
    rows = [[m.id, m.arch, json.dumps(m.kwargs) if m.kwargs else "", m.train.samples, m.train.epochs]
            for m in config.models]
    print(f"zoo {config.name}: not built yet (run `psml-bench zoo build {config.name}`)\n{config.description}\n")
    print(tabulate(rows, headers=["model", "timm arch", "kwargs", "train samples", "epochs"], tablefmt="github"))
    return 0


def _cmd_zoo_show(args: argparse.Namespace) -> int:
    return _show(args.name, args.cache)


def _cmd_zoo_profile(args: argparse.Namespace) -> int:
    from ._config import write_atomic
    from ._profiling import make_profile, measure_latency
    from ._zoo import open_zoo

    zoo = open_zoo(args.name, args.cache, progress=not args.quiet)
    example = zoo.splits["test_x"][:1]
    stats = {entry.id: measure_latency(zoo.model(entry.id), example) for entry in zoo.menu}
    out = Path(args.out) if args.out else zoo.directory / "profile-cpu.json"
    write_atomic(out, json.dumps(make_profile(zoo.name, stats), indent=2) + "\n")
    print(tabulate([[m, s.p50_ms, s.p90_ms, s.p99_ms] for m, s in stats.items()],
                   headers=["model", "p50 ms", "p90 ms", "p99 ms"], tablefmt="github"))
    print(f"profile written to {out}; route a run on it with `psml-bench run --profile {out}`")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ._plugins import ATTACKS, DEFENSES
    from ._serving import POLICIES
    from ._submissions import load_submissions

    load_submissions()

    rows = []
    for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES), ("policy", POLICIES)):
        for entry in registry:
            doc = (entry.plugin.__doc__ or "").strip().splitlines()
            params = getattr(entry.plugin, "defaults", {})
            rows.append([kind, entry.name, entry.source, ", ".join(f"{k}={v}" for k, v in params.items()),
                         doc[0] if doc else ""])
    print(tabulate(rows, headers=["kind", "name", "source", "parameters", "description"], tablefmt="github"))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ._submissions import submission_folders, submissions_dirs, validate_submission

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psml-bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory for zoos (default: $PSML_BENCH_CACHE or ~/.cache/psml-bench)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a grid and regenerate the leaderboard")
    run.add_argument("--grid", default="default", help="grid name (shipped) or path to a grid .toml")
    run.add_argument("--out", default="leaderboard", help="leaderboard directory (default: leaderboard/)")
    run.add_argument("--jobs", type=int, default=0,
                     help="cells to run in parallel processes (default 0: one per CPU core)")
    run.add_argument("--profile", default=None, help="latency profile to route on (default: the zoo's reference)")
    run.add_argument("--executor", default="local", choices=["local", "ray", "inline"],
                     help="where cells run: local process pool (default), a Ray cluster, or this process")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    run.add_argument("--timeout", type=float, default=3600.0,
                     help="per-cell wall-clock limit in seconds; 0 for none (default 3600)")
    run.add_argument("--memory-mb", type=int, default=8192,
                     help="per-cell memory limit in MiB (local executor); 0 for none (default 8192)")
    run.add_argument("--retry-failed", action="store_true", help="recompute cells whose stored result failed")
    run.set_defaults(func=_cmd_run)

    zoo = commands.add_parser("zoo", help="build, show or profile a zoo").add_subparsers(dest="zoo_command",
                                                                                           required=True)
    build = zoo.add_parser("build", help="train and measure every model of a zoo")
    build.add_argument("name")
    build.add_argument("--force", action="store_true", help="rebuild even if the zoo is cached")
    build.set_defaults(func=_cmd_zoo_build)
    show = zoo.add_parser("show", help="print a zoo's card (or its plan, when not built)")
    show.add_argument("name")
    show.set_defaults(func=_cmd_zoo_show)
    profile = zoo.add_parser("profile", help="re-measure batch-1 latency of every model")
    profile.add_argument("name")
    profile.add_argument("--out", default=None, help="where to write the profile JSON")
    profile.set_defaults(func=_cmd_zoo_profile)

    commands.add_parser("list", help="list attacks, defenses and policies").set_defaults(func=_cmd_list)

    validate = commands.add_parser("validate", help="check submissions: manifest, import, conformance tests on "
                                                    "fmnist-tiny")
    validate.add_argument("paths", nargs="*", metavar="PATH",
                          help="submission folders or manifest.json files (default: every folder of submissions/)")
    validate.add_argument("--manifest-only", action="store_true",
                          help="check the manifests (and import defenses) without running the conformance tests")
    validate.set_defaults(func=_cmd_validate)
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
