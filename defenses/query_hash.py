"""``query-hash``: per-client detection of near-duplicate queries by hashed input windows (Blacklight-style)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from psml_bench import Allowed, ConfigError, Defense, Requests, register_defense

# Blacklight (Li et al., USENIX Security 2022) quantises pixels on the 0-255 scale
PIXEL_SCALE = 255.0
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(values: np.ndarray) -> np.ndarray:
    """Spread the window hashes' bits (a multiply-xorshift finaliser), so that the kept "largest" ones are a
    uniform sample of the windows."""
    values ^= values >> np.uint64(29)
    values *= np.uint64(0xBF58476D1CE4E5B9)
    values ^= values >> np.uint64(32)
    return values


class WindowHasher:
    """Blacklight's probabilistic content fingerprint of one input, vectorised over a batch.

    Each input is read as an 8-bit image (``round(255 x)``), flattened, shifted by a secret
    per-value salt and quantised: ``round(((v + salt) mod 255) / step)``; every window of
    ``window`` consecutive values (``stride`` apart) is hashed (a polynomial hash in a secret odd
    base modulo 2^64, then mixed); windows whose unsalted quantised values are all background (0)
    are skipped when ``skip_background`` (the 28x28 adaptation, see :class:`QueryHash`); and the
    ``hashes`` largest distinct hashes are the input's fingerprint. Two inputs match when their
    fingerprints share at least a threshold of hashes. Each position's 256 possible values are
    tabulated once, so a batch costs one lookup, two cumulative sums and a sort.
    """

    def __init__(self, size: int, step: float, window: int, stride: int, hashes: int, skip_background: bool,
                 seed: int):
        if window > size:
            raise ConfigError(f"defense 'query-hash' parameter 'window' ({window}) is larger than the input "
                              f"({size} values)")
        generator = np.random.default_rng([seed, 11])
        self.size, self.window, self.stride, self.hashes = size, window, stride, hashes
        self.skip_background = skip_background
        salt = generator.random(size) * PIXEL_SCALE
        base = int(generator.integers(2**62, dtype=np.uint64)) * 2 + 1  # odd: invertible modulo 2^64
        inverse = pow(base, -1, 2**64)
        levels = np.arange(256, dtype=np.float64)
        # + 1: a quantised 0 still counts in the polynomial
        quantised = np.round(np.mod(levels[None, :] + salt[:, None], PIXEL_SCALE) / step).astype(np.uint64) + 1
        powers = np.array([pow(base, k, 2**64) for k in range(size)], dtype=np.uint64)
        with np.errstate(over="ignore"):
            self.table = quantised * powers[:, None]  # (position, 8-bit value) -> its term of the polynomial
        self.rows = np.arange(size)
        self.unshift = np.array([pow(inverse, k, 2**64) for k in range(size - window + 1)], dtype=np.uint64)
        self.background = int(np.ceil(step / 2))  # 8-bit values below it quantise to 0 before the salt

    def fingerprints(self, inputs: np.ndarray) -> list[tuple[int, ...]]:
        """The fingerprint of each input row (inputs in [0, 1], any shape): its at most ``hashes`` largest
        distinct window hashes, ascending."""
        pixels = np.rint(np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1) * PIXEL_SCALE).astype(np.uint8)
        span = self.size - self.window + 1
        with np.errstate(over="ignore"):
            prefix = np.zeros((len(pixels), self.size + 1), dtype=np.uint64)
            np.cumsum(self.table[self.rows, pixels], axis=1, out=prefix[:, 1:])
            # sum_j salted[i + j] * base^j for every window start i, wrapping modulo 2^64
            hashed = _mix((prefix[:, self.window:] - prefix[:, :span]) * self.unshift)
        hashed[hashed == 0] = 1  # 0 marks a skipped window below
        if self.skip_background:
            content = np.zeros((len(pixels), self.size + 1), dtype=np.int32)
            np.cumsum(pixels >= self.background, axis=1, out=content[:, 1:])
            hashed[(content[:, self.window:] - content[:, :span]) == 0] = 0
        hashed = hashed[:, ::self.stride]
        hashed.sort(axis=1)
        hashed[:, 1:][hashed[:, 1:] == hashed[:, :-1]] = 0  # a window hash seen twice in one input counts once
        return [tuple(row[row > 0][-self.hashes:].tolist()) for row in hashed]


class _Index:
    """The fingerprints seen so far (of one client, or of all): hash -> the query (or queries) holding it."""

    def __init__(self) -> None:
        self.holders: dict[int, int | list[int]] = {}
        self.seen: set[tuple[int, ...]] = set()
        self.queries = 0

    def observe(self, fingerprint: tuple[int, ...]) -> int:
        """Index a query's ``fingerprint``; return the most hashes it shares with any one earlier query (0 if none).

        An exact repeat shares all its hashes with its first copy and is not indexed again (it
        would match exactly what that copy matches).
        """
        query = self.queries
        self.queries += 1
        if fingerprint in self.seen:
            return len(fingerprint)
        self.seen.add(fingerprint)
        holders = self.holders
        earlier = {value: holders[value] for value in fingerprint if value in holders}
        holders.update(dict.fromkeys(fingerprint, query))  # most hashes are new: indexed at C speed
        if not earlier:
            return 0
        shared: Counter = Counter()
        for value, held in earlier.items():
            if isinstance(held, int):
                shared[held] += 1
                holders[value] = [held, query]
            else:
                shared.update(held)
                holders[value] = held + [query]
        return max(shared.values())


@register_defense("query-hash")
class QueryHash(Defense):
    """Detects a client whose queries repeat (near-)copies of its earlier ones, by hashed input windows.

    Blacklight's similarity engine (Li et al., USENIX Security 2022) with the paper's parameters:
    pixels quantised in steps of ``step`` = 50 on the 0-255 scale after a secret salt, windows of
    ``window`` = 20 consecutive values of the flattened input at ``stride`` 1, the ``hashes`` = 50
    largest window hashes kept per query, and a query *matches* when it shares at least
    ``threshold`` = 25 of them with one earlier query of the same client (``scope = "client"``) or
    of any client (``scope = "global"``). A client is detected at its ``collisions``-th matching
    query (the strength; 1, as in the paper, detects at the first match). The check runs in
    ``admit``, before anything is answered, so ``action = "block"`` refuses the detecting query
    and every later one of the client; ``"reject"`` refuses each matching query of a detected
    client (Blacklight's query rejection) and serves the rest; ``"flag"`` only records the detection.

    Adapted to 28x28 inputs: the window is in values of the flattened input (20 of Fashion-MNIST's
    784, 765 windows at stride 1, as 20 of CIFAR-10's 3072), and windows that are all background
    (every value quantised to 0 before the salt) are not hashed (``skip_background``): two distinct
    Fashion-MNIST images share most of their black border, whose salted windows hash alike and made
    up about half of the kept hashes without it (docs/defenses.md, ``query-hash``).
    ``salt_seed`` seeds the salt and the hash key (the owner's secret).
    """

    strength = "collisions"
    deterministic = False  # a matching query's fate depends on what the client sent before
    defaults = {"collisions": 1, "threshold": 25, "step": 50.0, "window": 20, "stride": 1, "hashes": 50,
                "scope": "client", "action": "block", "skip_background": True, "salt_seed": 0}
    allowed = {"collisions": Allowed(minimum=1, integer=True), "threshold": Allowed(minimum=1, integer=True),
               "step": Allowed(minimum=0, exclusive_minimum=True),
               "window": Allowed(minimum=1, integer=True), "stride": Allowed(minimum=1, integer=True),
               "hashes": Allowed(minimum=1, integer=True), "scope": Allowed(choices=("client", "global")),
               "action": Allowed(choices=("block", "reject", "flag")), "salt_seed": Allowed(minimum=0, integer=True)}

    def __init__(self, **params):
        super().__init__(**params)
        if int(self.params["threshold"]) > int(self.params["hashes"]):
            raise ConfigError(f"defense 'query-hash' parameter 'threshold' ({self.params['threshold']}) must be at most "
                              f"'hashes' ({self.params['hashes']}): a match shares that many kept hashes")
        self._hasher: WindowHasher | None = None
        self._indices: dict[int, _Index] = {}
        self.matches: dict[int, int] = {}  # client -> its matching queries so far
        self.queries: dict[int, int] = {}  # client -> its queries so far

    def hasher(self, size: int) -> WindowHasher:
        """The fingerprinting of inputs of ``size`` values (built at the first request)."""
        if self._hasher is None or self._hasher.size != size:
            p = self.params
            self._hasher = WindowHasher(size, float(p["step"]), int(p["window"]), int(p["stride"]), int(p["hashes"]),
                                        bool(p["skip_background"]), int(p["salt_seed"]))
        return self._hasher

    def admit(self, requests: Requests, rng: np.random.Generator) -> np.ndarray:
        admitted = np.ones(len(requests), dtype=bool)
        blocked = self.blocked
        if blocked:  # a blocked client's requests are refused whatever admit says: not worth hashing
            admitted &= ~np.isin(requests.clients, np.fromiter(blocked, dtype=np.int64, count=len(blocked)))
        rows = np.flatnonzero(admitted)
        if not len(rows):
            return admitted
        inputs = requests.inputs[torch.from_numpy(rows)] if len(rows) < len(requests) else requests.inputs
        inputs = inputs.reshape(len(rows), -1).numpy()
        fingerprints = self.hasher(inputs.shape[1]).fingerprints(inputs)
        threshold, collisions = int(self.params["threshold"]), int(self.params["collisions"])
        action, shared = self.params["action"], self.params["scope"] == "global"
        for row, client, fingerprint in zip(rows.tolist(), requests.clients[rows].tolist(), fingerprints):
            index = self._indices.setdefault(-1 if shared else client, _Index())
            matched = index.observe(fingerprint) >= threshold
            self.queries[client] = self.queries.get(client, 0) + 1
            if matched:
                self.matches[client] = self.matches.get(client, 0) + 1
                if self.matches[client] >= collisions and client not in self.detected:
                    if action == "block":
                        self.block(client)
                    else:
                        self.detect(client)
            if client in self.blocked or (action == "reject" and matched and client in self.detected):
                admitted[row] = False
        return admitted
