"""Submitted defenses in the sandbox: a stand-in whose hooks the defense's own code answers from a jailed process.

The harness never imports a submitted defense. It registers a stand-in (:class:`SubmittedDefense`,
parameters and identity from the manifest); each instance, when first used, has the worker's
sandbox (:mod:`psml_bench.isolation.sandbox`) fork a *defense process*: fresh user, PID, mount, IPC and
network namespaces, a private ``/tmp``, no capabilities, a filesystem with the Python installation
and the harness's packages only. There the submission's ``.py`` files (read by the worker) are
imported from memory, the class is checked against the manifest and built with the instance's
parameters. Every hook the server calls (``admit``, ``perturb_spec``, ``reroute``, ``answer``,
``client_work_ms``) is a round trip: the worker sends exactly the hook's arguments and the state of the
generator it passes (pickled: the defense process may trust the worker); the defense process answers
with JSON plus safetensors (never unpickled), the generator's new state and its blocked and detected
clients. So the defense sees what the defense API gives it and nothing else: no zoo, no dataset, no
output directory, no network, no repository. The server checks its answers as it checks any defense's.
"""

from __future__ import annotations

import importlib
import pickle
import resource
import sys
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..contract.errors import DefenseError, ProtocolError, sanitise
from .attack_process import (MAX_ERROR_CHARS, PluginLocator, failure_header, process_sandbox, receive_setup,
    submitted_class)
from .channel import pack, unpack
from ..contract.plugins import Defense
from .sandbox import MemoryFinder, read_sources, sandbox_problem

DEFENSE_TARGET = 1
"""Index of :func:`defense_main` in the sandbox's targets (``psml_bench.isolation.attack_process.SANDBOX_TARGETS``)."""
HOOK_TIMEOUT_S = 600.0
"""How long one hook call (or building the defense) may take before the sandbox is ended."""
HOOKS = ("admit", "perturb_spec", "reroute", "answer", "client_work_ms")
"""The hooks the server calls; a hook the class leaves as :class:`Defense` has it is answered here, without a round
trip."""
BUILD_ERROR_CHARS = 1000
"""Longest quotation of why the defense could not be built (every disagreement with its manifest fits)."""
DEFENSE_PACKAGE = "psml_submitted_defense"
"""The package a submitted defense's modules are imported under in its process (so its modules may
import each other relatively, and a module named like an installed one shadows nothing)."""
_REPLY_SLACK = 2**20


class SubmittedDefense(Defense):
    """A submitted defense as the harness holds it: the manifest's parameters, version and folder
    hash; its hooks are answered by the submission's class in a defense process of the sandbox."""

    submission_folder: ClassVar[str] = ""
    submission_entry: ClassVar[str] = ""
    submission_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._conn: Connection | None = None
        self._failure: DefenseError | None = None  # once its process failed, every later use says why
        self._claims_determinism = True
        self._overrides: frozenset[str] = frozenset(HOOKS)
        self._generators: dict[int, tuple[np.random.Generator, int]] = {}

    @property
    def deterministic(self) -> bool:  # the class's own claim, read in its process
        self.start()
        return self._claims_determinism

    def start(self) -> None:
        """Fork this instance's defense process and build the defense there (once).

        Raises:
            DefenseError: bubblewrap cannot run here, or the defense could not be imported, disagrees
                with its manifest, or raised while it was built.
        """
        if self._failure is not None:
            raise self._failure
        if self._conn is not None:
            return
        problem = sandbox_problem()
        if problem:
            raise DefenseError(f"refused to run defense '{self.name}' unsandboxed: {problem}")
        conn = process_sandbox().fork(DEFENSE_TARGET)
        weakref.finalize(self, conn.close)  # its process reads the end of its channel and exits
        self._conn = conn
        locator = PluginLocator(self.name, submission=self.submission_folder, entry=self.submission_entry,
                                imports=self.submission_imports, declared=tuple(self.defaults.items()),
                                version=self.version)
        try:
            header, _ = self._round_trip({"locator": locator, "strength": self.strength, "params": self.params,
                                          "sources": {f"{DEFENSE_PACKAGE}.{name}": source for name, source
                                                      in read_sources(Path(self.submission_folder)).items()}
                                          | {f"{DEFENSE_PACKAGE}/__init__": ""},
                                          "memory_limit": resource.getrlimit(resource.RLIMIT_AS)}, 0,
                                         BUILD_ERROR_CHARS)
        except DefenseError as exc:
            self._failure = exc
            raise
        self._claims_determinism = header.get("deterministic") is not False
        overrides = header.get("overrides")
        self._overrides = (frozenset(h for h in overrides if h in HOOKS) if isinstance(overrides, list)
                           else self._overrides)

    def _round_trip(self, message: Any, values: int, quoted: int = MAX_ERROR_CHARS
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Send ``message``; return the reply (at most 16 bytes per value of the hook's arguments, plus
        slack). A failure's message is quoted, sanitised, up to ``quoted`` characters."""
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            if not self._conn.poll(HOOK_TIMEOUT_S):
                raise DefenseError(f"defense '{self.name}' did not answer within {HOOK_TIMEOUT_S:g}s")
            header, tensors = unpack(self._conn.recv_bytes(_REPLY_SLACK + 16 * values))
        except (EOFError, OSError, ProtocolError) as exc:
            raise self._abandon(DefenseError(f"defense '{self.name}': its process ended or broke the protocol "
                                             f"({sanitise(exc, MAX_ERROR_CHARS)})")) from None
        except DefenseError as exc:
            raise self._abandon(exc) from None
        if header.get("op") == "failed":
            raise DefenseError(f"defense '{self.name}' raised {sanitise(header.get('type', 'Error'), 60)}: "
                               f"{sanitise(header.get('message', ''), quoted)}")
        return header, tensors

    def _abandon(self, failure: DefenseError) -> DefenseError:
        """End the sandbox (and with it this defense's process), so nothing it started outlives
        ``failure``, which every later use of this instance raises again."""
        process_sandbox().stop()
        self._failure = failure
        return failure

    def _call(self, hook: str, values: int, rng: np.random.Generator, *args: Any) -> Any:
        self.start()
        # every generator it was given, held (so its id stays its own) and kept in step both ways: a
        # defense may keep one and draw from it in a later call
        _, tag = self._generators.setdefault(id(rng), (rng, len(self._generators)))
        states = {t: g.bit_generator.state for g, t in self._generators.values()}
        header, tensors = self._round_trip((hook, tag, states, args), values)
        try:
            for generator, t in self._generators.values():
                generator.bit_generator.state = header["rngs"][str(t)]
            for name in ("_blocked", "_detected"):
                self.__dict__[name] = {int(c) for c in header[name[1:]] if isinstance(c, int)}
        except (KeyError, TypeError, ValueError) as exc:
            raise self._abandon(DefenseError(f"defense '{self.name}': its process sent a malformed reply "
                                             f"({sanitise(exc, MAX_ERROR_CHARS)})")) from None
        return _decode(header.get("kind"), tensors)

    def admit(self, requests, rng):
        if "admit" not in self._overrides:
            return super().admit(requests, rng)
        return self._call("admit", len(requests), rng, requests)

    def perturb_spec(self, min_accuracy, max_latency_ms, spec_range, rng):
        if "perturb_spec" not in self._overrides:
            return super().perturb_spec(min_accuracy, max_latency_ms, spec_range, rng)
        return self._call("perturb_spec", len(min_accuracy), rng, min_accuracy, max_latency_ms, spec_range)

    def reroute(self, served, candidates, rng):
        if "reroute" not in self._overrides:
            return super().reroute(served, candidates, rng)
        return self._call("reroute", len(served), rng, served, candidates)

    def answer(self, requests, probabilities, rng):
        if "answer" not in self._overrides:
            return super().answer(requests, probabilities, rng)
        return self._call("answer", probabilities.numel(), rng, requests, probabilities)

    def client_work_ms(self, requests, answers, rng):
        if "client_work_ms" not in self._overrides:
            return super().client_work_ms(requests, answers, rng)
        return self._call("client_work_ms", len(requests), rng, requests, answers)


def _decode(kind: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A hook's result as the server expects it: None, a tensor, a numpy array, or a tuple of arrays."""
    if kind == "tensor":
        return tensors.get("0")
    if kind == "array":
        return tensors["0"].numpy() if "0" in tensors else None
    if kind == "tuple":
        return tuple(tensors[str(i)].numpy() for i in range(len(tensors)) if str(i) in tensors)
    return None


def _encode(result: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if result is None:
        return {"kind": "none"}, {}
    if isinstance(result, torch.Tensor):
        return {"kind": "tensor"}, {"0": result}
    if isinstance(result, tuple):
        return {"kind": "tuple"}, {str(i): torch.from_numpy(np.ascontiguousarray(np.asarray(r, dtype=float)))
                                   for i, r in enumerate(result)}
    return {"kind": "array"}, {"0": torch.from_numpy(np.ascontiguousarray(np.asarray(result)))}


def defense_main(conn: Connection) -> None:
    """Entry point of a defense process (forked by the sandbox's zygote): build the defense, then answer hooks."""
    setup = receive_setup(conn)
    if setup is None:
        return
    locator: PluginLocator = setup["locator"]
    try:
        for module in locator.imports:
            importlib.import_module(module)
        sys.meta_path.insert(0, MemoryFinder(setup["sources"], locator.submission))
        cls = submitted_class(locator, DEFENSE_PACKAGE + ".", Defense)
        if setup["strength"] is not None and cls.strength != setup["strength"]:
            raise DefenseError(f"{locator.submission}/manifest.json: field 'sweep.parameter': expected the class's "
                               f"strength parameter '{cls.strength}', got '{setup['strength']}'")
        defense = cls(**setup["params"])
        overrides = [h for h in HOOKS if getattr(cls, h) is not getattr(Defense, h)]
        if cls.postprocess is not Defense.postprocess and "answer" not in overrides:
            overrides.append("answer")
        reply = pack({"op": "ready", "deterministic": bool(cls.deterministic), "overrides": overrides})
    except BaseException as exc:  # noqa: BLE001 - everything the plugin does wrong is reported
        reply = pack(failure_header(exc))
        defense = None
    conn.send_bytes(reply)
    generators: dict[int, np.random.Generator] = {}
    while defense is not None:
        try:
            hook, tag, states, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        for t, state in states.items():
            if t not in generators:
                generators[t] = np.random.Generator(getattr(np.random, state["bit_generator"])())
            generators[t].bit_generator.state = state
        try:
            header, tensors = _encode(getattr(defense, hook)(*args, generators[tag]))
            header["op"] = "ok"
        except BaseException as exc:  # noqa: BLE001
            header, tensors = failure_header(exc), {}
        header.update(rngs={str(t): g.bit_generator.state for t, g in generators.items()},
                      blocked=sorted(defense.blocked), detected=sorted(defense.detected))
        try:
            message = pack(header, tensors)
        except Exception as exc:  # noqa: BLE001 - e.g. a tensor safetensors cannot hold
            message = pack(failure_header(exc))
        conn.send_bytes(message)
