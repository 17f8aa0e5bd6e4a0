"""The attack process: every attack runs in a process of its own, behind a query channel.

The cell worker (which holds the zoo, the server, its hidden log and the test labels) starts one
*attack process* per cell from a clean fork server that has imported only code (torch, timm,
psml_bench, the built-in plugins), never a zoo. The attack process receives the attack's
locator, its parameters, the :class:`Knowledge`, the budget and the seeded generator; then, where
the OS allows (running as root on POSIX), it drops to an unprivileged uid/gid (65534, "nobody")
*before* it imports a submitted plugin, so it cannot read the zoo cache (zoo directories are
0700) nor signal, trace or read the memory of the worker.

The channel is a ``multiprocessing`` pipe:

- attack -> worker: raw bytes, a JSON header plus a safetensors blob, parsed without ``pickle``
  (unpickling bytes from the attack process would let it run code in the worker). At most
  ``max_message`` bytes per message.
- worker -> attack: pickled replies (the attack process may trust the worker).

``Target.query`` in the attack process becomes a round trip: the worker calls
:meth:`Server.query`, which counts and enforces the budget; :class:`BudgetExhausted` and
:class:`InvalidQueryError` come back and are raised again with the same class and message.
When the attack returns, its surrogate (a :class:`Surrogate`) comes back as architecture name
plus weights and is rebuilt by the worker from timm, so scoring runs trusted code only.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.torch
import torch

from ._errors import AttackFailed, BudgetExhausted, InvalidQueryError, ProtocolError, PsmlError
from ._registries import ATTACKS, STRATEGIES
from ._surrogate import Surrogate, trained_recipe
from ._serving import Knowledge, Server, Spec, Target

if TYPE_CHECKING:
    from ._service import Service

log = logging.getLogger(__name__)

UNPRIVILEGED_ID = 65534
"""uid and gid of the attack process when the harness runs as root ("nobody" on Debian)."""

ATTACK_THREADS = 1
"""Torch threads in the attack process (the same as a cell, so numbers do not depend on isolation)."""

FORWARDED_ERRORS: dict[str, type[PsmlError]] = {"BudgetExhausted": BudgetExhausted,
                                                "InvalidQueryError": InvalidQueryError}
"""Server errors re-raised in the attack process with the same class and message."""

_MESSAGE_SLACK = 64 * 2**20
PREIMPORTED = (
    # what the built-ins import lazily while they run, and what plugins commonly use: after the
    # privilege drop the Python installation may be unreadable (e.g. under /root), so an attack
    # can import only what is loaded already (or readable by uid 65534)
    "abc", "bisect", "collections", "concurrent.futures", "contextlib", "copy", "dataclasses", "enum",
    "functools", "gc", "glob", "hashlib", "heapq", "itertools", "json", "logging", "math", "operator", "pathlib",
    "random", "re", "statistics", "string", "tempfile", "textwrap", "time", "typing", "warnings",
    "numpy.ctypeslib", "numpy.fft", "numpy.linalg", "numpy.ma", "numpy.random",
    "torch.distributions", "torch.nn.functional", "torch.optim", "torch.optim.lr_scheduler", "torch.utils.data",
    "torch.utils.serialization", "safetensors.torch", "timm", "psml_bench", "attacks", "defenses",
)
"""Modules imported in the attack process before the privilege drop (plus a manifest's ``imports``)."""
_PRELOAD = ["psml_bench._isolation", *PREIMPORTED]


@dataclass(frozen=True)
class AttackLocator:
    """How the attack process finds the attack class.

    Attributes:
        name: the registry name (built-in, entry point or ``module:Class``), imported in the attack
            process before it drops privileges (the harness imported the same code already).
        params: the plugin's parameters.
        submission: a submission folder; its Python files are read while privileged and imported
            from memory only after the drop.
        entry: ``module:Class`` inside the submission folder.
        imports: installed modules the submission needs, imported before the drop.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    submission: str | None = None
    entry: str | None = None
    imports: tuple[str, ...] = ()


# --- message encoding ---------------------------------------------------------------------------

def pack(header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    """One message of the attack -> worker direction: JSON header plus safetensors blob."""
    head = json.dumps(header).encode()
    body = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}) if tensors else b""
    return len(head).to_bytes(8, "little") + head + body


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse a message from the attack process without pickle; raise :class:`ProtocolError`."""
    try:
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError("header longer than the message")
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        body = data[8 + size:]
        tensors = safetensors.torch.load(body) if body else {}
    except Exception as exc:  # noqa: BLE001 - anything malformed is the attack's fault
        raise ProtocolError(f"ProtocolError: the attack process sent a malformed message ({exc})") from None
    return header, tensors


# --- the attack process ---------------------------------------------------------------------------

def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not on Linux
        return None


def drop_privileges(uid: int = UNPRIVILEGED_ID, gid: int = UNPRIVILEGED_ID) -> bool:
    """Switch this process to ``uid``/``gid`` with no supplementary groups, for good.

    Only possible as root on POSIX; returns whether privileges were dropped. Afterwards the
    process is made non-dumpable (others with the same uid cannot trace it or read its memory)
    and is killed when its parent dies.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return False
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel refused to drop
        raise RuntimeError("could not drop root privileges")
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.umask(0o077)
    os.chdir("/")
    return True


_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4


def _exit_with_parent() -> None:
    """End this process when its parent (the fork server, which ends with the worker) is gone."""
    parent = os.getppid()
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # a uid change clears it: set it after
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="psml-parent-watch").start()


def _read_sources(folder: Path) -> dict[str, str]:
    """Module name -> source of every ``.py`` file under ``folder`` (read while privileged)."""
    sources = {}
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder).with_suffix("")
        parts = list(relative.parts)
        if any(not p.isidentifier() for p in parts):
            continue
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if parts:
            sources[".".join(parts) + ("/__init__" if is_package else "")] = path.read_text()
    return sources


class _MemoryFinder:
    """Imports a submission's modules from sources read before the privilege drop."""

    def __init__(self, sources: dict[str, str], origin: str):
        self.sources = sources
        self.origin = origin

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        import importlib.util

        if f"{name}/__init__" in self.sources:
            spec = importlib.util.spec_from_loader(name, self, origin=f"{self.origin}/{name}", is_package=True)
            spec.submodule_search_locations = []
            return spec
        if name in self.sources:
            return importlib.util.spec_from_loader(name, self, origin=f"{self.origin}/{name}.py")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        source = self.sources.get(f"{module.__name__}/__init__", self.sources.get(module.__name__))
        code = compile(source, module.__spec__.origin, "exec")
        exec(code, module.__dict__)  # noqa: S102 - this is the sandboxed plugin import


def _load_attack_class(locator: AttackLocator, sources: dict[str, str] | None) -> type:
    if sources is None:
        return ATTACKS.get(locator.name)
    sys.meta_path.insert(0, _MemoryFinder(sources, locator.submission or "submission"))
    module_name, _, attr = (locator.entry or "").partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, ATTACKS.base)):
        raise TypeError(f"entry '{locator.entry}' is not a subclass of psml_bench.Attack")
    return cls


def _remote_target(conn: Connection) -> Target:
    def call(header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Any:
        conn.send_bytes(pack(header, tensors))
        status, *payload = pickle.loads(conn.recv_bytes())
        if status == "error":
            kind, message = payload
            raise FORWARDED_ERRORS[kind](message)
        return payload[0]

    def query(inputs: Any, spec: Any, purpose: str) -> torch.Tensor:
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if not isinstance(inputs, torch.Tensor):
            raise InvalidQueryError(f"inputs must be a torch.Tensor or numpy array, got {type(inputs).__name__}")
        if isinstance(spec, Spec):
            specs: Any = [float(spec.min_accuracy), float(spec.max_latency_ms)]
        else:
            try:
                items = list(spec)
            except TypeError:
                items = [None]
            specs = ([[float(s.min_accuracy), float(s.max_latency_ms)] for s in items]
                     if all(isinstance(s, Spec) for s in items) else None)
        answers, refused, latency = call({"op": "query", "purpose": str(purpose), "spec": specs}, {"inputs": inputs})
        return answers, refused, latency

    return Target(query, lambda: call({"op": "remaining"}))


def _attack_main(conn: Connection) -> None:
    """Entry point of the attack process."""
    torch.set_num_threads(ATTACK_THREADS)
    try:
        setup = pickle.loads(conn.recv_bytes())  # from the worker: trusted
    except (EOFError, OSError):  # the worker went away before sending the cell
        return
    locator: AttackLocator = setup["locator"]
    try:
        soft, hard = setup["memory_limit"]
        if soft != resource.RLIM_INFINITY:
            # the worker's own limit (its start-up footprint plus the cell's allowance); the fork
            # server may have started before the worker set it
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        sys.path[:] = setup["sys_path"]
        for module in (*PREIMPORTED, *locator.imports):
            try:
                importlib.import_module(module)
            except ImportError:
                if module in locator.imports:
                    raise
        sources = _read_sources(Path(locator.submission)) if locator.submission else None
        cls = _load_attack_class(locator, None) if sources is None else None
        STRATEGIES.names()  # imports the built-in extraction strategies while their files are readable
        if setup["drop_privileges"]:
            drop_privileges()
        _exit_with_parent()
        if cls is None:
            cls = _load_attack_class(locator, sources)
        attack = cls(**dict(locator.params))
        surrogate = attack.run(_remote_target(conn), setup["knowledge"], setup["budget"], setup["rng"])
        if not isinstance(surrogate, torch.nn.Module):
            raise TypeError(f"attack returned {type(surrogate).__name__}, not a torch.nn.Module")
        if type(surrogate) is not Surrogate:
            raise TypeError(f"attack returned a {type(surrogate).__name__}; an isolated attack must return a "
                            "psml_bench.Surrogate (any timm architecture), the only surrogate the harness rebuilds")
        arch = surrogate.net.pretrained_cfg.get("architecture") if hasattr(surrogate.net, "pretrained_cfg") else None
        if not isinstance(arch, str):
            raise TypeError("the returned Surrogate's network does not name its timm architecture")
        message = pack({"op": "done", "arch": arch, "recipe": trained_recipe(surrogate)}, dict(surrogate.state_dict()))
    except BaseException as exc:  # noqa: BLE001 - everything the plugin does wrong is reported
        message = pack({"op": "failed", "type": type(exc).__name__, "message": str(exc),
                        "traceback": traceback.format_exc()[-4000:]})
    try:
        conn.send_bytes(message)
    except (OSError, ValueError):
        pass


# --- the worker's side ----------------------------------------------------------------------------

_CONTEXT: Any = None


def _context() -> Any:
    """A fork server that has imported code only: attack processes fork from it cheaply."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(_PRELOAD)
        else:  # pragma: no cover - Windows
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def _start(process: Any) -> None:
    """Start ``process``, also from a daemonic executor worker.

    multiprocessing refuses children of daemonic processes because it would not be able to clean
    them up at exit; an attack process is cleaned up by the worker (kill on every exit path) and by
    the kernel (parent-death signal), so the flag is lifted for the start only.
    """
    config = multiprocessing.current_process()._config  # noqa: SLF001 - no public API for this
    daemon = config.get("daemon")
    config["daemon"] = False
    try:
        process.start()
    finally:
        if daemon is not None:
            config["daemon"] = daemon
        else:
            config.pop("daemon", None)


def isolation_available() -> bool:
    """Whether attack processes drop to an unprivileged uid here (root on POSIX)."""
    return os.name == "posix" and os.geteuid() == 0


def _spec_from_header(value: Any) -> Spec | list[Spec | None]:
    if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        return Spec(float(value[0]), float(value[1]))
    if isinstance(value, list) and all(isinstance(s, list) and len(s) == 2
                                       and all(isinstance(v, (int, float)) for v in s) for s in value):
        return [Spec(float(a), float(l)) for a, l in value]
    return [None]  # the server answers: spec must be one Spec or a sequence of N Specs


def _rebuild_surrogate(header: dict[str, Any], state: dict[str, torch.Tensor], knowledge: Knowledge) -> Surrogate:
    arch = header.get("arch")
    if not isinstance(arch, str) or "mean" not in state or "std" not in state:
        raise AttackFailed("TypeError: the attack returned a surrogate without an architecture or normalisation")
    try:
        with torch.random.fork_rng():
            model = Surrogate(arch, knowledge.input_shape[0], knowledge.num_classes, state["mean"].flatten(),
                              state["std"].flatten())
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise AttackFailed(f"TypeError: the attack's surrogate ({arch}) could not be rebuilt: {exc}") from None
    recipe = header.get("recipe")
    model.recipe = recipe if isinstance(recipe, str) else ""  # checked against the weights in the attack process
    return model.eval()


def run_attack(server: Server | Service, locator: AttackLocator, knowledge: Knowledge, budget: int,
               rng: np.random.Generator, *, timeout_s: float | None = None,
               drop: bool | None = None) -> Surrogate:
    """Run an attack in its own process against ``server``; return its surrogate.

    Args:
        server: the service the attack queries (the budget is enforced here, in this process): a
            :class:`Server`, or a cell's :class:`~psml_bench._service.Service` on its simulated clock.
        locator: which attack, with its parameters.
        knowledge: what the attacker knows; sent to the attack process.
        budget: the attack's query budget (passed to ``run``; the server enforces its own).
        rng: the attack's generator, sent with its state.
        timeout_s: wall-clock limit of the attack process (``None``: the executor's cell timeout).
        drop: drop to uid/gid 65534 (default: whenever running as root).

    Raises:
        AttackFailed: the attack raised, died, timed out, broke the protocol or returned no
            usable surrogate; the message is the cell's error.
        Exception: whatever the server (policy, defense) raised while answering.
    """
    context = _context()
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_attack_main, args=(child_end,), daemon=True, name="psml-attack")
    _start(process)
    child_end.close()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    input_bytes = int(np.prod(knowledge.input_shape)) * 8
    max_message = _MESSAGE_SLACK + input_bytes * max(budget, 1)
    try:
        parent_end.send_bytes(pickle.dumps({
            "locator": locator, "knowledge": knowledge, "budget": budget, "rng": rng,
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
            "memory_limit": resource.getrlimit(resource.RLIMIT_AS),
            "drop_privileges": isolation_available() if drop is None else drop,
        }, protocol=pickle.HIGHEST_PROTOCOL))
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise AttackFailed(f"timed out after {timeout_s:g}s")
            ready = wait([parent_end, process.sentinel], timeout=remaining)
            if not ready:
                continue
            if parent_end not in ready and not parent_end.poll():
                process.join(timeout=5)
                raise AttackFailed(f"worker died (exit code {process.exitcode}): the attack process ended without "
                                   "a result (crashed, killed for memory, or exited)")
            try:
                data = parent_end.recv_bytes(max_message)
            except EOFError:
                process.join(timeout=5)
                raise AttackFailed(f"worker died (exit code {process.exitcode}): the attack process closed its "
                                   "channel without a result") from None
            except OSError as exc:
                raise ProtocolError(f"ProtocolError: the attack process sent a message over {max_message} bytes "
                                    f"({exc})") from None
            header, tensors = unpack(data)
            op = header.get("op")
            if op == "query":
                reply = _answer(server, header, tensors)
                parent_end.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            elif op == "remaining":
                parent_end.send_bytes(pickle.dumps(("ok", server.remaining)))
            elif op == "done":
                return _rebuild_surrogate(header, tensors, knowledge)
            elif op == "failed":
                kind, message = str(header.get("type", "Error")), str(header.get("message", ""))
                log.debug("attack process failed:\n%s", header.get("traceback", ""))
                if kind == "BudgetExhausted":
                    raise AttackFailed(f"budget overrun: {message}")
                raise AttackFailed(f"{kind}: {message}")
            else:
                raise ProtocolError(f"ProtocolError: the attack process sent an unknown message {str(op)[:40]!r}")
    finally:
        parent_end.close()
        if process.is_alive():
            process.kill()
        process.join(timeout=10)


def _answer(server: Server | Service, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple:
    inputs = tensors.get("inputs")
    if inputs is None:
        raise ProtocolError("ProtocolError: the attack process sent a query without inputs")
    purpose = header.get("purpose")
    try:
        answers = server.query(inputs, _spec_from_header(header.get("spec")),
                               purpose=purpose if isinstance(purpose, str) else "extract")
    except BudgetExhausted as exc:
        return ("error", "BudgetExhausted", str(exc))
    except InvalidQueryError as exc:
        return ("error", "InvalidQueryError", str(exc))
    return ("ok", (answers, server.last_refused, server.last_latency_ms))


def prestart() -> None:
    """Start the attack fork server now; its imports then overlap the worker's own start-up."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
