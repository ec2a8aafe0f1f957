"""P1 and P2: the cost of merge, authenticate, activate and split.

Each store is filled with :func:`account_merge.testing.bulk_load` (no
hashing: the accounts share a few hashes computed once with the
verifier's parameters), then each operation runs once per round on
accounts of its own.  Rounds interleave the operations with bare argon2
calls (P1) or with the same operation on the other store (P2), so that a
drift of the shared machine touches both sides of a ratio alike.

P1 runs twice per store: at argon2-cffi's defaults (the operation as a
parent feels it, beside the same argon2 work done bare) and with argon2's
cheapest parameters, where the argon2 work timed inside each call is
subtracted: what is left is the library's own work, which the verdict
compares with one bare verification at the defaults.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import argon2

from account_merge import AccountStatus, Argon2Verifier, MergeService
from account_merge.ports import Storage
from account_merge.testing import BulkAccounts, bulk_load, make_establishment

PROVISIONAL_PASSWORD = "2BUYJ9C8"
PASSWORD = "Mot-de-passe-Sûr-2026"
NEW_PASSWORD = "Un-Mot-De-Passe-42!"

ESTABLISHMENT = make_establishment(860001, "Collège des Trois Rivières")

#: The operations, and the argon2 work each does by design.
OPERATIONS: dict[str, tuple[int, int]] = {
    # name: (verifications, hashes)
    "merge": (1, 0),
    "authenticate": (1, 0),
    "activate": (1, 1),
    "split": (0, 1),
}


def argon2_cost(op: str) -> str:
    """The denominator of an operation, in words."""
    verifications, hashes = OPERATIONS[op]
    parts = []
    if verifications:
        parts.append(f"{verifications} verify")
    if hashes:
        parts.append(f"{hashes} hash")
    return " + ".join(parts)


def describe(h: argon2.PasswordHasher) -> str:
    """The parameters of *h*, in a few words."""
    return f"argon2id t={h.time_cost} m={h.memory_cost} KiB p={h.parallelism}"


def verifier_for(hasher: argon2.PasswordHasher) -> Argon2Verifier:
    return Argon2Verifier(hasher, warn_if_weak=False)


def fill(storage: Storage, count: int, password_hash: str, prefix: str = "f") -> float:
    """Put *count* accounts nobody uses in *storage*; return the seconds it took."""
    started = time.perf_counter()
    bulk_load(storage, ESTABLISHMENT, count, password_hash=password_hash, prefix=prefix)
    return time.perf_counter() - started


class Workload:
    """Accounts for *rounds* runs of each operation, in one store.

    Round *i* merges absorbed account *i* into principal *i*, authenticates
    principal *i*, activates newcomer *i*, and splits principal *i* (its
    merged child goes back to a new account).
    """

    def __init__(self, service: MergeService, rounds: int, hashes: tuple[str, str]) -> None:
        provisional_hash, password_hash = hashes
        self.service = service
        storage = service.storage
        self.principals = bulk_load(storage, ESTABLISHMENT, rounds, password_hash=password_hash,
                                    status=AccountStatus.ACTIVE, prefix="p")
        self.absorbed = bulk_load(storage, ESTABLISHMENT, rounds,
                                  password_hash=provisional_hash, prefix="a")
        self.newcomers = bulk_load(storage, ESTABLISHMENT, rounds,
                                   password_hash=provisional_hash, prefix="n")

    def run(self, op: str, i: int) -> None:
        p: BulkAccounts = self.principals
        if op == "merge":
            self.service.merge(p.account_id(i), self.absorbed.login(i), PROVISIONAL_PASSWORD)
        elif op == "authenticate":
            self.service.authenticate(p.login(i), PASSWORD)
        elif op == "activate":
            self.service.activate(self.newcomers.login(i), PROVISIONAL_PASSWORD, NEW_PASSWORD)
        elif op == "split":
            self.service.split(ESTABLISHMENT, p.account_id(i))
        else:  # pragma: no cover
            raise ValueError(op)


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def make_hashes(verifier: Argon2Verifier) -> tuple[str, str]:
    """The provisional and the chosen password hashed once, shared by every account."""
    return verifier.hash(PROVISIONAL_PASSWORD), verifier.hash(PASSWORD)


class TimingVerifier:
    """A verifier that times the argon2 work it does, so that an operation's own work shows.

    It wraps the service's :class:`Argon2Verifier`; ``spent`` adds up the
    seconds spent in its ``verify`` and ``hash`` since the last ``reset()``.
    """

    def __init__(self, inner: Argon2Verifier) -> None:
        self.inner = inner
        self.spent = 0.0

    def reset(self) -> None:
        self.spent = 0.0

    def hash(self, password: str) -> str:
        started = time.perf_counter()
        try:
            return self.inner.hash(password)
        finally:
            self.spent += time.perf_counter() - started

    def verify(self, password_hash: str | None, password: str) -> bool:
        started = time.perf_counter()
        try:
            return self.inner.verify(password_hash, password)
        finally:
            self.spent += time.perf_counter() - started

    def needs_rehash(self, password_hash: str) -> bool:
        return self.inner.needs_rehash(password_hash)


#: One P1 round: each operation between bare argon2 calls of its own kind, so
#: that the bare work is timed as often, and as near, as the operations.
P1_ROUND: tuple[str, ...] = (
    "verify", "merge", "verify", "authenticate", "verify", "hash", "activate", "verify", "hash",
    "split", "hash",
)


@dataclass
class P1Result:
    store: str
    hasher: str  # describes the parameters
    samples: dict[str, list[float]]  # op or "verify"/"hash" -> seconds
    own: dict[str, list[float]]  # op -> op - the argon2 work timed inside it
    #: op -> CPU time of this process during the op - the argon2 work timed inside it
    own_cpu: dict[str, list[float]]

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def denominator(self, op: str) -> float:
        verifications, hashes = OPERATIONS[op]
        return verifications * self.median("verify") + hashes * self.median("hash")

    def ratio(self, op: str) -> float:
        """Median operation / median of its bare argon2 work."""
        return self.median(op) / self.denominator(op)

    def median_own(self, op: str) -> float:
        """Median, over rounds, of the operation's time outside argon2."""
        return statistics.median(self.own[op])

    def median_own_cpu(self, op: str) -> float:
        """Median, over rounds, of the CPU time this process spent on it outside argon2.

        (A PostgreSQL server's work is not in it, nor any wait: for the
        disk, the server, or a core the machine's other programs hold.)
        """
        return statistics.median(self.own_cpu[op])


def measure_p1(storage: Storage, store: str, hasher: argon2.PasswordHasher, rounds: int,
               filler: int) -> P1Result:
    """Time each operation, the argon2 work inside it, and bare argon2 work beside it."""
    verifier = TimingVerifier(verifier_for(hasher))
    service = MergeService(storage, verifier)
    hashes = make_hashes(verifier.inner)
    fill(storage, filler, hashes[0])
    workload = Workload(service, rounds + 1, hashes)
    bare_hash = hasher.hash(PROVISIONAL_PASSWORD)
    bare: dict[str, Callable[[], object]] = {
        "verify": lambda: hasher.verify(bare_hash, PROVISIONAL_PASSWORD),
        "hash": lambda: hasher.hash(NEW_PASSWORD),
    }
    samples: dict[str, list[float]] = {k: [] for k in ("verify", "hash", *OPERATIONS)}
    own: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    own_cpu: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    for i in range(rounds + 1):
        steps = []
        for kind in P1_ROUND:
            verifier.reset()
            cpu = time.process_time()
            elapsed = timed(bare[kind] if kind in bare
                            else lambda: workload.run(kind, i))  # noqa: B023
            steps.append((kind, elapsed, time.process_time() - cpu, verifier.spent))
        if i == 0:
            continue  # warm-up: connections, caches
        for kind, elapsed, cpu, spent in steps:
            samples[kind].append(elapsed)
            if kind in OPERATIONS:
                own[kind].append(elapsed - spent)
                own_cpu[kind].append(cpu - spent)
    return P1Result(store, describe(hasher), samples, own, own_cpu)


@dataclass
class P2Result:
    store: str
    small: int
    large: int
    fill_seconds: float
    #: pass -> op -> (small, large) seconds
    passes: list[dict[str, tuple[list[float], list[float]]]]

    def medians(self, op: str) -> tuple[float, float]:
        """The median operation on each store, over every pass."""
        small = [t for p in self.passes for t in p[op][0]]
        large = [t for p in self.passes for t in p[op][1]]
        return statistics.median(small), statistics.median(large)

    def pass_ratios(self, op: str) -> list[float]:
        """Each pass's median on the large store / its median on the small one."""
        return [statistics.median(p[op][1]) / statistics.median(p[op][0]) for p in self.passes]

    def ratio(self, op: str) -> float:
        """The median of the passes' ratios."""
        return statistics.median(self.pass_ratios(op))


def measure_p2(small_store: Storage, large_store: Storage, store: str,
               hasher: argon2.PasswordHasher, rounds: int, small: int, large: int,
               passes: int = 1) -> P2Result:
    """The same operations on a store of *small* accounts and one of *large*, alternately.

    *passes* measurements of *rounds* rounds each, one after the other on
    the same stores (fresh accounts each round): a pass that a burst of
    the machine's other work spoiled shows beside the others.
    """
    verifier = verifier_for(hasher)
    hashes = make_hashes(verifier)
    fill(small_store, small, hashes[0])
    fill_seconds = fill(large_store, large, hashes[0])
    workloads = [Workload(MergeService(s, verifier), rounds * passes + 1, hashes)
                 for s in (small_store, large_store)]
    results: list[dict[str, tuple[list[float], list[float]]]] = []
    i = 0
    for n in range(passes):
        samples: dict[str, tuple[list[float], list[float]]] = {op: ([], []) for op in OPERATIONS}
        for _ in range(rounds + (1 if n == 0 else 0)):
            order = (0, 1) if i % 2 else (1, 0)
            for op in OPERATIONS:
                for side in order:
                    elapsed = timed(lambda: workloads[side].run(op, i))  # noqa: B023
                    if i:  # the first round warms up
                        samples[op][side].append(elapsed)
            i += 1
        results.append(samples)
    return P2Result(store, small, large, fill_seconds, results)
