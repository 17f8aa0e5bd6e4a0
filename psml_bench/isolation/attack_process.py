"""The attack process: every attack runs in a process of its own, in the sandbox, behind a query channel.

The cell worker (which holds the zoo, the front end, its hidden log and the test labels) has each attack
process forked by its sandbox's zygote (:mod:`psml_bench.isolation.sandbox`: bubblewrap, fresh namespaces per
cell, a filesystem with the Python installation and the harness's packages only). The attack
process receives, over its channel, the attack's locator, the source of any plugin code the
sandbox cannot see (a submission's ``.py`` files, read by the worker), its parameters, the
:class:`Knowledge`, the budget, the seeded generator and its memory limit; nothing else reaches it.

The channel is a socket pair (its wire form: :mod:`psml_bench.isolation.channel`):

- attack -> worker: raw bytes, a JSON header plus a safetensors blob, parsed without ``pickle``
  (unpickling bytes from the attack process would let it run code in the worker). At most
  ``max_message`` bytes per message.
- worker -> attack: pickled replies (the attack process may trust the worker).

``Target.query`` in the attack process becomes a round trip: the worker calls
:meth:`Frontend.query`, which counts and enforces the budget; :class:`BudgetExhausted` and
:class:`InvalidQueryError` come back and are raised again with the same class and message.
``train_surrogate`` of a fresh surrogate becomes a request to the worker, which trains it
(:mod:`psml_bench.isolation.trainer`). When the attack returns, its surrogate (a :class:`Surrogate`) comes back as
architecture name plus weights and is rebuilt by the worker from timm, so scoring runs trusted code only. Every
failure reason a cell records is the harness's own sentence; what the attack says is quoted,
truncated and stripped of control characters.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import pickle
import random
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import timm
import torch

from ..contract.errors import AttackFailed, BudgetExhausted, ConfigError, InvalidQueryError, ProtocolError, sanitise
from ..contract.parameters import declaration_mismatches
from ..contract.registries import ATTACKS, STRATEGIES
from .sandbox import MemoryFinder, Sandbox, read_sources, sandbox_problem, visible
from ..extraction.surrogate import Surrogate, nonfinite_weights, training_elsewhere
from .trainer import SurrogateTrainer, remote_trainer
from .channel import caller, pack, remote_target, spec_from_header, unpack
from ..contract.target import Knowledge
from ..serving.frontend import Frontend

if TYPE_CHECKING:
    from ..serving.service import SimulatedService

log = logging.getLogger(__name__)

ATTACK_THREADS = 1
"""Torch threads in the attack process and of the answers its worker computes (the same as a cell, so
numbers do not depend on isolation or on the caller's thread count)."""

MAX_ERROR_CHARS = 300
"""Longest quotation of an attack's own words (its exception message) in a cell's error."""
EXIT_GRACE_S = 5.0
"""How long the attack process may take to exit after its result before its sandbox is ended."""

_MESSAGE_SLACK = 64 * 2**20
PREIMPORTED = (
    # what the built-ins import lazily while they run, and what plugins commonly use: imported once
    # in the zygote, so an attack process starts with them loaded (a fork, not an import)
    "abc", "bisect", "collections", "concurrent.futures", "contextlib", "copy", "dataclasses", "enum",
    "functools", "gc", "glob", "hashlib", "heapq", "itertools", "json", "logging", "math", "operator", "pathlib",
    "random", "re", "statistics", "string", "tempfile", "textwrap", "time", "typing", "warnings",
    "numpy.ctypeslib", "numpy.fft", "numpy.linalg", "numpy.ma", "numpy.random",
    "torch.distributions", "torch.nn.functional", "torch.optim", "torch.optim.lr_scheduler", "torch.utils.data",
    "torch.utils.serialization", "safetensors.torch", "timm", "psml_bench", "attacks", "defenses", "strategies")
"""Modules the sandbox's zygote imports once, before it forks any attack process."""


@dataclass(frozen=True)
class PluginLocator:
    """How a sandboxed process finds a plugin class: the attack process its attack (and strategy), the jailed
    defense process its defense.

    Attributes:
        name: the registry name (built-in, entry point or ``module:Class``); a ``module:Class`` the
            sandbox cannot see has its source sent with the cell, like a submission's.
        params: the plugin's parameters.
        submission: a submission folder; the worker reads its ``.py`` files and sends them, and the
            attack process imports them from memory (the folder itself is not in the sandbox).
        entry: ``module:Class`` inside the submission folder.
        imports: installed modules the submission needs, imported before the attack is built.
        declared: the manifest's (parameter, default) pairs and ``version``, which the class must match.
        strategy: the submitted extraction strategy the attack's ``strategy`` parameter names (its
            name, folder, entry, imports, declared parameters and version), or None: its files are
            sent like a submitted attack's and it is registered in the attack process before the
            attack is built.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    submission: str | None = None
    entry: str | None = None
    imports: tuple[str, ...] = ()
    declared: tuple[tuple[str, Any], ...] = ()
    version: str = ""
    strategy: PluginLocator | None = None


FIX_PARAMETERS = "`psml-bench validate --write-parameters` rewrites the manifest's parameters from the class"
"""What a disagreement about parameters between a manifest and its class says to do (after the differences)."""
STRATEGY_PACKAGE = "psml_submitted_strategy"
"""The package a submitted strategy's modules are imported under in the attack process, apart
from the attack's own modules."""


# --- the attack process ---------------------------------------------------------------------------

def plugin_sources(locator: PluginLocator) -> dict[str, str] | None:
    """The plugin code the attack process imports from memory: a submission's files, or a
    ``module:Class`` module the sandbox cannot see (read here, by the worker), and a submitted
    strategy's files under :data:`STRATEGY_PACKAGE`; None when there is none."""
    sources = _attack_sources(locator)
    if locator.strategy is None:
        return sources
    strategy = {f"{STRATEGY_PACKAGE}.{name}": source
                for name, source in read_sources(Path(locator.strategy.submission)).items()}
    return (sources or {}) | strategy | {f"{STRATEGY_PACKAGE}/__init__": ""}


def _attack_sources(locator: PluginLocator) -> dict[str, str] | None:
    if locator.submission:
        return read_sources(Path(locator.submission))
    if ":" not in locator.name:
        return None
    top = locator.name.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin) or visible(spec.origin):
        return None
    if spec.submodule_search_locations:
        package = {f"{top}.{name}": source for name, source in read_sources(Path(spec.origin).parent).items()}
        return package | {f"{top}/__init__": Path(spec.origin).read_text()}
    return {top: Path(spec.origin).read_text()}


def _load_attack_class(locator: PluginLocator, sources: dict[str, str] | None) -> type:
    if sources:
        sys.meta_path.insert(0, MemoryFinder(sources, locator.submission or "plugin"))
    if locator.strategy is not None:
        strategy = submitted_class(locator.strategy, STRATEGY_PACKAGE + ".", STRATEGIES.base)
        STRATEGIES.add(locator.strategy.name, strategy, source=f"submission {locator.strategy.submission}")
    if locator.submission is None:
        return ATTACKS.get(locator.name)
    return submitted_class(locator, "", ATTACKS.base)


def entry_class(locator: PluginLocator, package: str, base: type) -> type:
    """A submission's entry class, imported from memory (its modules under ``package``), a subclass of ``base``."""
    module_name, _, attr = (locator.entry or "").partition(":")
    cls = getattr(importlib.import_module(package + module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"entry '{locator.entry}' of {locator.submission} is not a subclass of "
                        f"psml_bench.{base.__name__}")
    return cls


def submitted_class(locator: PluginLocator, package: str, base: type) -> type:
    """A submission's entry class, imported from memory, checked against its manifest (a disagreement about
    parameters says which command rewrites the manifest's from the class)."""
    cls = entry_class(locator, package, base)
    problems = declaration_mismatches(cls, dict(locator.declared), locator.version)
    if problems:
        fix = [FIX_PARAMETERS] if any(p.startswith("field 'parameters") for p in problems) else []
        raise ConfigError(f"{locator.submission}/manifest.json disagrees with class "
                          f"{(locator.entry or '').partition(':')[2]}: {'; '.join(problems + fix)}")
    return cls


def receive_setup(conn: Connection) -> dict[str, Any] | None:
    """The first message of a process forked by the sandbox (attack or defense) from its worker
    (trusted), None if the worker went away. The process takes on the message's address-space
    limit and runs torch on one thread, as a cell does."""
    torch.set_num_threads(ATTACK_THREADS)
    try:
        setup = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return None
    if setup["memory_limit"][0] != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_AS, setup["memory_limit"])
    return setup


def failure_header(exc: BaseException) -> dict[str, Any]:
    """What a sandboxed process (attack or defense) reports of an exception its plugin raised; the
    worker sanitises and quotes the message."""
    return {"op": "failed", "type": type(exc).__name__, "message": str(exc)[:4 * MAX_ERROR_CHARS]}


def attack_main(conn: Connection) -> None:
    """Entry point of the attack process (forked by the sandbox's zygote)."""
    setup = receive_setup(conn)
    if setup is None:
        return
    locator: PluginLocator = setup["locator"]
    try:
        for module in locator.imports + (locator.strategy.imports if locator.strategy else ()):
            importlib.import_module(module)
        cls = _load_attack_class(locator, setup["sources"])
        attack = cls(**dict(locator.params))
        if setup.get("global_seed") is not None:
            random.seed(setup["global_seed"])
            np.random.seed(setup["global_seed"])
            torch.manual_seed(setup["global_seed"])
        call = caller(conn)
        with training_elsewhere(remote_trainer(call, setup["knowledge"], setup["max_message"])):
            surrogate = attack.run(remote_target(call, setup["budget"]), setup["knowledge"], setup["budget"],
                                   setup["rng"])
        if not isinstance(surrogate, torch.nn.Module):
            raise TypeError(f"attack returned {type(surrogate).__name__}, not a torch.nn.Module")
        if type(surrogate) is not Surrogate:
            raise TypeError(f"attack returned a {type(surrogate).__name__}; an isolated attack must return a "
                            "psml_bench.Surrogate (any timm architecture), the only surrogate the harness rebuilds")
        arch = surrogate.net.pretrained_cfg.get("architecture") if hasattr(surrogate.net, "pretrained_cfg") else None
        if not isinstance(arch, str):
            raise TypeError("the returned Surrogate's network does not name its timm architecture")
        message = pack({"op": "done", "arch": arch}, dict(surrogate.state_dict()))
    except BaseException as exc:  # noqa: BLE001 - everything the plugin does wrong is reported
        message = pack({**failure_header(exc), "traceback": traceback.format_exc()[-4000:]})
    try:
        conn.send_bytes(message)
    except (OSError, ValueError):
        pass


# --- the worker's side ----------------------------------------------------------------------------

_SANDBOXES: dict[tuple[int, bool, bool], Sandbox] = {}
"""This process's sandboxes (zygotes), by (pid, jailed, gpu): a process resource, not a result; kept
process-wide so that every cell a worker runs reuses one started sandbox."""


def _trusted(locator: PluginLocator) -> bool:
    """Built-in attacks may run unsandboxed where bubblewrap cannot; nothing else may."""
    return (locator.submission is None and locator.strategy is None
            and ATTACKS.entry(locator.name).source == "built-in")


SANDBOX_TARGETS = ("psml_bench.isolation.attack_process:attack_main",
                   "psml_bench.isolation.jailed_defense:defense_main",
                   "psml_bench.isolation.declaration:declaration_main")
"""What a process forked by the sandbox's zygote runs: an attack (0), a submitted defense (1), or the reading of a
submission's class (2, :mod:`psml_bench.isolation.declaration`)."""


def _sandbox(locator: PluginLocator, gpu: bool = False) -> Sandbox:
    """This process's sandbox (started on first use; with the GPUs' device files if ``gpu``); raise
    :class:`AttackFailed` if the attack may not run here."""
    problem = sandbox_problem()
    if problem and not _trusted(locator):
        raise AttackFailed(f"refused to run attack '{locator.name}' unsandboxed: {problem}")
    return process_sandbox(gpu)


def process_sandbox(gpu: bool = False) -> Sandbox:
    """This process's sandbox: jailed, or (where bubblewrap cannot run) plain, for built-in attacks only."""
    problem = sandbox_problem()
    key = (os.getpid(), not problem, gpu)
    if key not in _SANDBOXES:
        if problem:
            log.warning("%s; running built-in attacks without it", problem)
        _SANDBOXES[key] = Sandbox(jailed=not problem, preload=PREIMPORTED, targets=SANDBOX_TARGETS, gpu=gpu)
    return _SANDBOXES[key]


def sandbox_available() -> bool:
    """Whether attacks run in the bubblewrap sandbox here."""
    return not sandbox_problem()


def _rebuild_surrogate(header: dict[str, Any], state: dict[str, torch.Tensor], knowledge: Knowledge,
                       trainer: SurrogateTrainer) -> Surrogate:
    """The returned surrogate, rebuilt here; its ``recipe`` is the worker's record of the training that produced
    exactly these weights ('' if it trained none such: own training, whatever the attack says)."""
    arch = header.get("arch")
    if not isinstance(arch, str) or "mean" not in state or "std" not in state:
        raise AttackFailed("the attack returned a surrogate without an architecture or normalisation")
    problem = nonfinite_weights(state)
    if problem:
        raise AttackFailed(f"the attack's surrogate has {problem}: it cannot be scored")
    if not timm.is_model(arch):
        raise AttackFailed(f"the attack's surrogate names '{sanitise(arch, 80)}', which is not a timm architecture "
                           "(surrogates are built locally; hub names are refused)")
    try:
        with torch.random.fork_rng():
            model = Surrogate(arch, knowledge.input_shape[0], knowledge.num_classes, state["mean"].flatten(),
                              state["std"].flatten())
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise AttackFailed(f"the attack's surrogate ({arch}) could not be rebuilt: "
                           f"{sanitise(exc, MAX_ERROR_CHARS)}") from None
    model.recipe = trainer.recipe_of(state)
    return model.eval()


def run_attack(frontend: Frontend | SimulatedService, locator: PluginLocator, knowledge: Knowledge, budget: int,
               rng: np.random.Generator, *, timeout_s: float | None = None,
               memory_mb: int | None = None, global_seed: int | None = None,
               transcript: Any = None, training_cache: Path | None | str = "zoo") -> Surrogate:
    """Run an attack in its own sandboxed process against ``frontend``; return its surrogate.

    The front end's answers and the surrogate trainings are computed in this process on one thread
    (:data:`ATTACK_THREADS`, as in a cell), whatever this process's thread count.

    Args:
        frontend: what the attack queries (the budget is enforced here, in this process): a :class:`Frontend`,
            or a cell's :class:`~psml_bench.serving.service.SimulatedService` on its simulated clock.
        locator: which attack, with its parameters.
        knowledge: what the attacker knows; sent to the attack process.
        budget: the attack's query budget (passed to ``run``; the front end enforces its own).
        rng: the attack's generator, sent with its state.
        timeout_s: wall-clock limit of the attack process (``None``: the executor's cell timeout).
        memory_mb: address-space limit of the attack process (``None``: this process's own limit).
        global_seed: reseed the attack process's global generators (``random``, numpy's, torch's).
        transcript: a ``hashlib`` hash updated with every query (inputs, spec, purpose) and answer, in order.
        training_cache: the directory whose ``surrogates/`` keeps the surrogate trainings this run's workers did
            (``"zoo"``: the directory of ``frontend``'s zoo; ``None``: none on disk).

    Raises:
        AttackFailed: the attack raised, died, timed out, broke the protocol or returned no
            usable surrogate; the message is the cell's error, in the harness's words.
        Exception: whatever the front end (policy, defense) raised while answering.
    """
    sandbox = _sandbox(locator, gpu=knowledge.device != "cpu")
    conn = sandbox.fork()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    max_message = _MESSAGE_SLACK + int(np.prod(knowledge.input_shape)) * 8 * max(budget, 1)
    limit = (memory_mb * 2**20, memory_mb * 2**20) if memory_mb else resource.getrlimit(resource.RLIMIT_AS)
    exchange = _Exchange(frontend, conn, knowledge, transcript)
    # The answers are computed here: on one thread, as in a cell, whatever this process's count. The
    # reductions of a forward pass split that many ways, which changes the answers' last bits (with
    # AVX-512 kernels), and with them the surrogate trained on them.
    threads = torch.get_num_threads()
    torch.set_num_threads(ATTACK_THREADS)
    try:
        conn.send_bytes(pickle.dumps({
            "locator": locator, "sources": plugin_sources(locator), "knowledge": knowledge, "budget": budget,
            "rng": rng, "memory_limit": limit, "global_seed": global_seed, "max_message": max_message,
        }, protocol=pickle.HIGHEST_PROTOCOL))
        exchange.trainer = SurrogateTrainer(knowledge, _training_directory(frontend, training_cache))
        while True:
            header, tensors = unpack(_receive(conn, deadline, timeout_s, max_message))
            op = header.get("op")
            handler = _HANDLERS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ProtocolError(f"ProtocolError: the attack process sent an unknown message "
                                    f"{sanitise(op, 40)!r}")
            surrogate = handler(exchange, header, tensors)
            if surrogate is not None:
                return surrogate
    finally:
        torch.set_num_threads(threads)
        if not (exchange.finished and _exited(conn)):
            sandbox.stop()  # ends the attack process and everything it started
        conn.close()


def _receive(conn: Connection, deadline: float | None, timeout_s: float | None, max_message: int) -> bytes:
    """The attack process's next message, waited for until ``deadline`` (``time.monotonic``; None: no limit).

    Raises:
        AttackFailed: the deadline passed, or the attack process ended without a result.
        ProtocolError: the message is over ``max_message`` bytes.
    """
    while True:
        seconds_left = None if deadline is None else deadline - time.monotonic()
        if seconds_left is not None and seconds_left <= 0:
            raise AttackFailed(f"timed out after {timeout_s:g}s")
        if not conn.poll(seconds_left):
            continue
        try:
            return conn.recv_bytes(max_message)
        except EOFError:
            raise AttackFailed("the attack process ended without a result (crashed, killed for memory, or "
                               "exited)") from None
        except OSError as exc:
            raise ProtocolError(f"ProtocolError: the attack process sent a message over {max_message} bytes "
                                f"({exc})") from None


def _training_directory(frontend: Frontend | SimulatedService, training_cache: Path | None | str) -> Path | None:
    """Where the surrogate trainings are kept: ``training_cache``, or for ``"zoo"`` the directory of ``frontend``'s
    zoo (``None``: nowhere on disk)."""
    if training_cache == "zoo":
        training_cache = getattr(getattr(frontend, "zoo", None), "directory", None)
    return None if training_cache is None else Path(training_cache)


@dataclass
class _Exchange:
    """The worker's side of one attack process's channel, as its messages are handled.

    Attributes:
        trainer: trains the surrogates the attack asks for (set once the attack process has its setup).
        overrun: the front end's own words when it refused the last query for the budget ('' otherwise).
        finished: the attack process sent its last message (its result or its failure).
    """

    frontend: Frontend | SimulatedService
    conn: Connection
    knowledge: Knowledge
    transcript: Any = None
    trainer: SurrogateTrainer | None = None
    overrun: str = ""
    finished: bool = False

    def reply(self, payload: Any) -> None:
        self.conn.send_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def _on_query(exchange: _Exchange, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """A query: answered by the front end (which counts the budget), recorded in the transcript, replied."""
    reply = _answer(exchange.frontend, header, tensors)
    exchange.overrun = reply[2] if reply[:2] == ("error", "BudgetExhausted") else ""
    if exchange.transcript is not None:  # the spec and purpose, then the inputs and the answers
        for part in ([header.get("spec"), header.get("purpose")], tensors.get("inputs"),
                     reply[1][0] if reply[0] == "ok" else reply):
            exchange.transcript.update(part.contiguous().numpy().tobytes() if isinstance(part, torch.Tensor)
                                       else json.dumps(part, default=str).encode())
    exchange.reply(reply)


def _on_train(exchange: _Exchange, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """A surrogate training: trained here, once per identical request (see psml_bench.isolation.trainer)."""
    exchange.reply(exchange.trainer.answer(header, tensors))


def _on_done(exchange: _Exchange, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Surrogate:
    """The attack's result: its surrogate, rebuilt here."""
    exchange.finished = True
    return _rebuild_surrogate(header, tensors, exchange.knowledge, exchange.trainer)


def _on_failed(exchange: _Exchange, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """The attack raised: :class:`AttackFailed`, in the harness's words (a budget overrun is the front end's
    record)."""
    exchange.finished = True
    kind = sanitise(header.get("type", "Error"), 60)
    message = sanitise(header.get("message", ""), MAX_ERROR_CHARS)
    log.debug("attack process failed:\n%s", sanitise(header.get("traceback", ""), 4000))
    if exchange.overrun:  # the front end refused its last query: the harness's record, not the attack's word
        raise AttackFailed(f"budget overrun: {exchange.overrun}")
    raise AttackFailed(f"the attack raised {kind}: {message}")


_HANDLERS: dict[str, Callable[[_Exchange, dict[str, Any], dict[str, torch.Tensor]], Surrogate | None]] = {
    "query": _on_query, "train": _on_train, "done": _on_done, "failed": _on_failed}
"""What the worker does with each message of the attack process, by its ``op``; a handler's surrogate ends the run."""


def _exited(conn: Connection) -> bool:
    """Whether the attack process closed its channel (exited) within :data:`EXIT_GRACE_S`, saying nothing more."""
    try:
        if not conn.poll(EXIT_GRACE_S):
            return False
        conn.recv_bytes(64)
    except (EOFError, OSError):
        return True
    return False


def _answer(frontend: Frontend | SimulatedService, header: dict[str, Any],
            tensors: dict[str, torch.Tensor]) -> tuple:
    inputs = tensors.get("inputs")
    if inputs is None:
        raise ProtocolError("ProtocolError: the attack process sent a query without inputs")
    purpose = header.get("purpose")
    try:
        answers = frontend.query(inputs, spec_from_header(header.get("spec")),
                                 purpose=purpose if isinstance(purpose, str) else "extract")
    except BudgetExhausted as exc:
        return ("error", "BudgetExhausted", str(exc))
    except InvalidQueryError as exc:
        return ("error", "InvalidQueryError", str(exc))
    return ("ok", (answers, frontend.last_refused, frontend.last_latency_ms, frontend.remaining))


def prestart(locator: PluginLocator | None = None, gpu: bool = False) -> None:
    """Start this process's sandbox now, so its zygote's imports overlap the worker's own start-up."""
    sandbox = _sandbox(locator or PluginLocator("naive"), gpu)
    if not sandbox.alive():
        sandbox.start()
