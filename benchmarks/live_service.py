"""The live service under load: HTTP overhead, capacity, LoadGen at 50% and 80% of it with an attack beside.

    python benchmarks/live_service.py [--zoo fmnist] [--cache DIR] [--duration 45] [--latency-bound-ms 100]
                                      [--attack naive:epochs=2] [--attack-budget 300] [--alone] [--out FILE]

1. HTTP overhead: the same 256-input query (routed to the most accurate model) answered by the
   in-process ``Frontend`` and through ``psml-bench serve`` + ``HttpClient``, alternately,
   ``--repeats`` times each, both on one torch thread; prints the median ratio HTTP/in-process
   (goal: at most 1.3).
2. Capacity: closed-loop single-input benign queries, 16 always in flight (one asyncio client, the
   load generator's), for ``--capacity-seconds`` against the undefended server.
3. For the defenses ``none`` and ``spec-noise`` (a server started for each), LoadGen's server
   scenario for ``--duration`` seconds at 50% of that capacity alone, then at 50% and 80% while
   ``psml-bench attack`` runs against the same server with its own key; one table row per run:
   goodput, p50/p99, LoadGen's p99 and verdict (with the constraints it found unmet), and the
   attack's fidelity and queries (goal at 50% undefended, alone: p99 within the bound and VALID).
   With ``--alone``: the load alone at 50% and at 80%, no attack.

Every number comes from this one run; the table is printed and, with ``--out``, written as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from tabulate import tabulate

from psml_bench import Spec
from psml_bench.serving.http_client import HttpClient
from psml_bench.serving.loadgen import measure_capacity, run_load
from psml_bench.contract.registries import make_defense
from psml_bench.serving.frontend import Frontend
from psml_bench.zoo.build import open_zoo

ATTACK_KEYS = 4  # one per run with an attack


def start_server(zoo: str, cache: str | None, keys: Path, defense: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "psml_bench.cli", *(["--cache", cache] if cache else []), "serve", zoo,
               "--port", "0", "--keys", str(keys), "--threads", "1", "--defense", defense]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"on (http://\S+)", line)
        if match:
            url = match.group(1)
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/v1/service", timeout=5).status_code == 200:
                        return process, url
                except httpx.HTTPError:
                    time.sleep(0.2)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"the server did not start: {process.stderr.read()}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def http_overhead(zoo, url: str, repeats: int) -> tuple[float, float, float]:
    """(median in-process ms, median HTTP ms, median of the per-pair ratios)."""
    torch.set_num_threads(1)
    inputs = zoo.splits["attacker_x"][:256]
    spec = Spec(zoo.accuracy_range[1], zoo.latency_range_ms[1])
    server = Frontend(zoo, defense=make_defense("none"), rng=np.random.default_rng(0))
    client = HttpClient(url, "op")
    for _ in range(3):  # warm both
        server.query(inputs, spec)
        client.query(inputs, spec)
    local, remote = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        server.query(inputs, spec)
        local.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.query(inputs, spec)
        remote.append(time.perf_counter() - started)
    client.close()
    ratios = [r / lo for r, lo in zip(remote, local)]
    return statistics.median(local) * 1000, statistics.median(remote) * 1000, statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="fmnist")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--duration", type=float, default=45.0,
                        help="seconds per LoadGen run (45: about 4,600 queries at 50%% of capacity, where early "
                             "stopping allows 30 over the bound; a 15 s run allows 4)")
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--latency-bound-ms", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--attack", default="naive:epochs=2")
    parser.add_argument("--attack-budget", type=int, default=300)
    parser.add_argument("--alone", action="store_true", help="only the load, at 50%% and 80%%, no attack beside")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    zoo = open_zoo(args.zoo, Path(args.cache) if args.cache else None, build=False, progress=False)
    scratch = Path(tempfile.mkdtemp(prefix="psml-live-bench-"))
    keys = scratch / "keys.json"
    keys.write_text(json.dumps({"op": {"budget": None, "operator": True},
                                **{f"attacker-{i}": args.attack_budget for i in range(ATTACK_KEYS)}}))
    lines = []

    process, url = start_server(args.zoo, args.cache, keys, "none")
    try:
        local_ms, http_ms, ratio = http_overhead(zoo, url, args.repeats)
        lines.append(f"HTTP overhead, 256-input query: in-process {local_ms:.1f} ms, HTTP {http_ms:.1f} ms, "
                     f"ratio {ratio:.2f} (goal <= 1.3)")
        capacity = measure_capacity(url, "op", zoo, seconds=args.capacity_seconds)
        lines.append(f"capacity (closed loop, 16 in flight, single-input queries): {capacity:.1f} queries/s")
        print("\n".join(lines), flush=True)
    except BaseException:
        stop_server(process)
        raise

    # --alone: the load alone at 50% and 80%, no attack (its training shares the cores with the server)
    runs = ((0.5, False), (0.8, False)) if args.alone else ((0.5, False), (0.5, True), (0.8, True))
    rows, run = [], 0
    for defense in ("none", "spec-noise"):
        if defense != "none":
            process, url = start_server(args.zoo, args.cache, keys, defense)
        try:
            for fraction, with_attack in runs:
                out = scratch / f"attack-{run}"
                attack = subprocess.Popen(
                    [sys.executable, "-m", "psml_bench.cli", *(["--cache", args.cache] if args.cache else []),
                     "attack", "--target", url, "--key", f"attacker-{run}", "--attack", args.attack,
                     "--zoo", args.zoo, "--out", str(out), "--timeout", "600"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) if with_attack else None
                report = run_load(url, "op", zoo, qps=fraction * capacity, duration_s=args.duration,
                                  latency_bound_ms=args.latency_bound_ms)
                summary, error = {}, ""
                if attack is not None:
                    _, error = attack.communicate(timeout=900)
                    summary = json.loads((out / "summary.json").read_text()) if attack.returncode == 0 else {}
                    run += 1
                verdict = report.verdict + (f" ({report.unmet} unmet)" if report.unmet else "")
                rows.append([defense, f"{fraction:.0%}", f"{report.target_qps:.1f}", f"{report.achieved_qps:.1f}",
                             f"{report.goodput:.3f}", f"{report.latency_p50_ms:.1f}", f"{report.latency_p99_ms:.1f}",
                             f"{report.loadgen_p99_ms:.1f}", verdict,
                             "no attack" if attack is None else f"{summary['fidelity']:.3f}" if summary
                             else f"failed: {error.strip()[-80:]}",
                             summary.get("queries", ""), summary.get("wall_s", "")])
                print(rows[-1], flush=True)
        finally:
            stop_server(process)
    table = tabulate(rows, headers=["defense", "load", "target qps", "achieved qps", "goodput", "p50 ms", "p99 ms",
                                    "LoadGen p99 ms", "LoadGen", "attack fidelity", "attack queries", "attack s"],
                     tablefmt="github")
    header = (f"zoo {zoo.name}, latency bound {args.latency_bound_ms:g} ms (p99), {args.duration:g} s per run, "
              + ("no attack" if args.alone else f"attack {args.attack} with budget {args.attack_budget}")
              + f", {os.cpu_count()} CPUs")
    text = "\n".join([header, *lines, "", table])
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
