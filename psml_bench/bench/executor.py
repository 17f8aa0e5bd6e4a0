"""Executors: where the cells of a grid run (this process, a local pool of workers, or Ray).

- ``local``: a pool of worker processes on this machine (``jobs`` of them), each cell with a
  wall-clock timeout and an address-space limit; a hung or crashed worker is killed and replaced
  and its cell marked failed, the rest of the grid goes on.
- ``ray``: the same cells as Ray tasks, on a local Ray instance or a cluster (``address``).

Workers compute rows; the driver writes every cell file, so a worker on another node needs no
access to the output directory, only to the zoo cache (see docs/running.md). A worker process holds
its own :class:`~psml_bench.bench.context.RunContext` for the cells it runs (a Ray worker: its
process's default one); the inline executor runs cells in the driver's.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import time
from abc import ABC, abstractmethod
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable

import torch

from .cell import CELL_THREADS, CellTask, execute
from .context import RunContext
from .row import CellRow
from ..contract.errors import PsmlError
from ..isolation.attack_process import prestart

log = logging.getLogger(__name__)

OnResult = Callable[[CellTask, "CellRow | None", str], None]
"""Called once per task with (task, row, error): a row, or None and the reason it has none."""


class Executor(ABC):
    jobs: int = 1
    """Cells run at once (what a run's preflight divides its time estimate by)."""

    @abstractmethod
    def map(self, tasks: Iterable[CellTask], on_result: OnResult, context: RunContext | None = None) -> None:
        """Run every task; report each through ``on_result`` as it finishes (``context``: the run's, for cells
        run in this process; a worker process holds its own)."""


class InlineExecutor(Executor):
    """Runs cells one by one in this process: no timeout, no memory limit (for debugging)."""

    def map(self, tasks, on_result, context=None):
        for task in tasks:
            try:
                on_result(task, execute(task, context), "")
            except Exception as exc:  # noqa: BLE001
                on_result(task, None, f"{type(exc).__name__}: {exc}")


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _exit_with_parent(parent: int) -> None:
    """End this worker when the driver is gone (killed with SIGKILL, say) instead of computing on."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(conn: Connection, memory_mb: int | None, parent: int, gpu: bool = False) -> None:
    _exit_with_parent(parent)
    torch.set_num_threads(CELL_THREADS)
    prestart(gpu=gpu)  # the attack sandbox's imports overlap this worker's start-up
    if memory_mb and not gpu:  # CUDA maps more address space than any such limit would allow
        # the limit is on what a cell may add to the address space the worker started with
        import timm  # noqa: F401 - map timm and friends before measuring
        limit = _vm_size() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    context = RunContext()  # this worker's: its cells share the submissions it registers
    try:
        while True:
            task = conn.recv()
            if task is None:
                return
            try:
                result = (execute(task, context), "")
            except Exception as exc:  # noqa: BLE001 - reported to the driver as the cell's failure
                result = (None, f"{type(exc).__name__}: {exc}")
            conn.send(result)
    except (EOFError, BrokenPipeError):  # the driver went away
        return


class LocalExecutor(Executor):
    """A pool of ``jobs`` spawned worker processes with a per-cell timeout and memory limit.

    With ``gpu`` (cells on a CUDA device) the workers' attack sandboxes hold the GPUs, and the
    memory limit is not applied: CUDA maps more address space than any such limit would allow.
    """

    def __init__(self, jobs: int, timeout_s: float | None = None, memory_mb: int | None = None, gpu: bool = False):
        self.jobs = max(1, jobs)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.gpu = gpu
        # spawn, not fork: forking a process that has started torch's thread pools is unsafe
        self._context = multiprocessing.get_context("spawn")

    def _start(self) -> tuple[Any, Connection]:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, self.memory_mb, os.getpid(), self.gpu),
                                         daemon=True)
        process.start()
        child.close()
        return process, parent

    def map(self, tasks, on_result, context=None):
        pending = deque(tasks)
        workers = [self._start() for _ in range(min(self.jobs, len(pending)))]
        busy: dict[Connection, tuple[Any, CellTask, float]] = {}
        idle = list(workers)
        try:
            while pending or busy:
                while idle and pending:
                    process, conn = idle.pop()
                    task = pending.popleft()
                    conn.send(task)
                    busy[conn] = (process, task, time.monotonic())
                for conn in wait(list(busy), timeout=0.5):
                    process, task, _ = busy.pop(conn)
                    try:
                        row, error = conn.recv()
                    except (EOFError, OSError):
                        process.join(timeout=5)
                        on_result(task, None, f"worker died (exit code {process.exitcode}): killed for memory "
                                              "or crashed")
                        idle.append(self._start())
                        continue
                    on_result(task, row, error)
                    idle.append((process, conn))
                if self.timeout_s is not None:
                    now = time.monotonic()
                    for conn, (process, task, started) in list(busy.items()):
                        if now - started > self.timeout_s:
                            process.kill()
                            process.join()
                            del busy[conn]
                            on_result(task, None, f"timed out after {self.timeout_s:g}s")
                            idle.append(self._start())
        finally:
            for process, conn in idle + [(p, c) for c, (p, _, _) in busy.items()]:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for process, _ in idle + [(p, c) for c, (p, _, _) in busy.items()]:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()


class RayExecutor(Executor):
    """Runs each cell as a Ray task (one CPU each) on a local instance or the cluster at ``address``."""

    def __init__(self, address: str | None = None, timeout_s: float | None = None, num_cpus: int | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self.num_cpus = num_cpus
        self.jobs = num_cpus or 1

    def map(self, tasks, on_result, context=None):
        try:
            import ray
        except ImportError:
            raise PsmlError("the ray executor needs Ray: pip install 'psml-bench[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        # keep at most one task per CPU in flight, so a task's wall clock starts when it is submitted
        window = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending = deque(tasks)
        running: dict[Any, tuple[CellTask, float]] = {}
        while pending or running:
            while pending and len(running) < window:
                task = pending.popleft()
                running[remote.remote(task)] = (task, time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in done:
                task, _ = running.pop(ref)
                try:
                    on_result(task, ray.get(ref), "")
                except Exception as exc:  # noqa: BLE001
                    cause = getattr(exc, "cause", None) or exc
                    on_result(task, None, f"{type(cause).__name__}: {cause}")
            if self.timeout_s is not None:
                now = time.monotonic()
                for ref, (task, started) in list(running.items()):
                    if now - started > self.timeout_s:
                        ray.cancel(ref, force=True)
                        del running[ref]
                        on_result(task, None, f"timed out after {self.timeout_s:g}s")
