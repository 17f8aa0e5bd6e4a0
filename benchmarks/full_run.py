"""Time `psml-bench run` from an empty cache, then again with nothing changed.

    python benchmarks/full_run.py [--grid default] [--jobs 0] [--keep DIR] [--out DIR]

Runs in fresh temporary cache and output directories (so the zoo is trained from scratch) and
prints one JSON object: the wall time of the cold run (zoo build + every cell), of the warm
re-run, their ratio, and the cell counts. Timings on a shared machine are noisy; compare ratios
within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(grid: str, jobs: int, cache: Path, out: Path) -> tuple[float, str]:
    env = {**os.environ, "PSML_BENCH_CACHE": str(cache)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "psml_bench.cli", "-q", "run", "--grid", grid, "--out", str(out),
                             "--jobs", str(jobs)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        sys.exit(f"psml-bench run failed ({result.returncode}): {result.stderr.strip()}")
    return seconds, result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="default")
    parser.add_argument("--jobs", type=int, default=0, help="as psml-bench run --jobs (0: one per core)")
    parser.add_argument("--keep", type=Path, default=None, help="use this directory instead of a temporary one")
    parser.add_argument("--out", type=Path, default=None, help="leaderboard directory (default: in the temporary one)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="psml-bench-full-run-"))
    cache, out = root / "cache", args.out or root / "leaderboard"
    cold, cold_summary = timed_run(args.grid, args.jobs, cache, out)
    warm, warm_summary = timed_run(args.grid, args.jobs, cache, out)
    print(json.dumps({"grid": args.grid, "jobs": args.jobs, "cores": os.cpu_count(), "cold_run_s": round(cold, 1),
                      "warm_run_s": round(warm, 1), "warm_over_cold": round(warm / cold, 4),
                      "cold": cold_summary, "warm": warm_summary, "directory": str(root)}, indent=2))


if __name__ == "__main__":
    main()
