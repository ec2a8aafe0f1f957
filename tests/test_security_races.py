"""Concurrent operations on shared accounts serialise (rules I8 and ASVS 11.1.6).

Threads, released together, race merges of one account, merge two
accounts into each other, and merge an account while its establishment
splits it.  After every round the invariants I1, I2, I4 and I8 must hold
(security_kit.violations), on every store, and on SQLite across
processes too.  During the race, a delay before the first write of a unit
of work widens the window between checking the accounts and changing
them: a store that serialises its units of work does not mind, while the
naive store (no locking) breaks the invariants, which shows that these
tests catch what they claim to.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from account_merge import Child, Establishment, MergeReceipt, MergeService, NotificationLetter
from account_merge.domain.account import Account
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Storage
from account_merge.testing import CountingVerifier, fast_verifier, make_establishment
from naive_storage import NaiveStorage
from security_kit import InstrumentedStorage, race, violations

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
LYCEE = make_establishment(860002, "Lycée Camille Guérin")
STRONG = "Mot-de-passe-Sûr-2026"
WORKERS = 4
ROUNDS = 3
#: Slept before the change set of a merge or a split is applied.
WIDEN = {"apply": 0.02}


class Families:
    """Letters and accounts with children of their own, new for every call."""

    def __init__(self, service: MergeService) -> None:
        self.service = service
        self.count = 0

    def letter(self, school: Establishment = SCHOOL) -> NotificationLetter:
        self.count += 1
        n = self.count
        return self.service.issue_account(school, f"Parent Numéro {n}",
                                          [Child(f"ine-{n}", "Enfant", "Robert", school.uai)])

    def active(self) -> tuple[Account, NotificationLetter]:
        letter = self.letter()
        return self.service.activate(letter.login, letter.provisional_password, STRONG), letter


def widened(store: InstrumentedStorage, workers: int,
            call: Callable[[int], object]) -> list[Any]:
    """Race *call* with the window widened; an error other than the library's own fails."""
    store.delays = dict(WIDEN)
    try:
        results = race(workers, call)
    finally:
        store.delays = {}
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, AccountMergeError):
            raise result
    return results


def racing_merges_of_one_account(store: InstrumentedStorage) -> list[str]:
    service = MergeService(store, CountingVerifier())
    families, found = Families(service), []
    for _ in range(ROUNDS):
        contested = families.letter()
        principals = [families.active()[0] for _ in range(WORKERS)]
        results = widened(store, WORKERS, lambda i, p=principals, c=contested: service.merge(
            p[i].id, c.login, c.provisional_password))
        found += violations(store, exclusive_children=True)
        winners = [r for r in results if isinstance(r, MergeReceipt)]
        if len(winners) != 1:
            found.append(f"I8: {len(winners)} merges of one account succeeded")
    return found


def mutual_merges(store: InstrumentedStorage) -> list[str]:
    service = MergeService(store, CountingVerifier())
    families, found = Families(service), []
    for _ in range(ROUNDS):
        pairs = [(families.active()[0], families.active()[0]) for _ in range(WORKERS // 2)]
        tasks = [(a.id, b.login) for a, b in pairs] + [(b.id, a.login) for a, b in pairs]
        widened(store, len(tasks), lambda i, t=tasks: service.merge(t[i][0], t[i][1], STRONG))
        found += violations(store, exclusive_children=True)
    return found


def merge_racing_a_split(store: InstrumentedStorage) -> list[str]:
    """The lycée splits an account while another parent absorbs it."""
    service = MergeService(store, CountingVerifier())
    families, found = Families(service), []
    for _ in range(ROUNDS):
        tasks: list[Callable[[], object]] = []
        for _ in range(WORKERS // 2):
            holder, _ = families.active()
            joined = families.letter(LYCEE)
            service.merge(holder.id, joined.login, joined.provisional_password)
            absorber, _ = families.active()
            tasks += [lambda h=holder: service.split(LYCEE, h.id),
                      lambda a=absorber, h=holder: service.merge(a.id, h.login, STRONG)]
        widened(store, len(tasks), lambda i, t=tasks: t[i]())
        found += violations(store, exclusive_children=True)
    return found


SCENARIOS = {
    "racing merges of one account": racing_merges_of_one_account,
    "mutual merges": mutual_merges,
    "a merge racing a split": merge_racing_a_split,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_invariants_hold_after_every_round(
        make_storage: Callable[[], Storage], scenario: str) -> None:
    store = InstrumentedStorage(make_storage())
    assert SCENARIOS[scenario](store) == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_store_without_locking_breaks_them(scenario: str) -> None:
    """The test above has teeth: without locks, the same rounds break the invariants."""
    store = InstrumentedStorage(NaiveStorage())
    try:
        found = SCENARIOS[scenario](store)
    except Exception as error:  # a torn store may also fail outright
        found = [repr(error)]
    assert found, "the naive store kept every invariant"


# -- across processes, on one SQLite file ---------------------------------------------
PATIENCE = 120


def process_worker(path: str, barrier: Barrier, tasks: Queue[Any], results: Queue[Any]) -> None:
    """Run one task per round, released with the other processes."""
    from account_merge import SQLiteStorage

    storage = SQLiteStorage(path)
    service = MergeService(storage, fast_verifier())
    try:
        while (task := tasks.get()) is not None:
            barrier.wait(PATIENCE)
            kind, *args = task
            try:
                if kind == "merge":
                    service.merge(*args)
                elif kind == "split":
                    uai, name, account_id = args
                    service.split(Establishment(uai, name), account_id)
            except AccountMergeError as error:
                results.put(error.code)
            else:
                results.put("ok" if kind != "idle" else "idle")
    finally:
        storage.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    path = tmp_path_factory.mktemp("races") / "shared.sqlite3"
    from account_merge import SQLiteStorage

    SQLiteStorage(path).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results: Queue[Any] = context.Queue()
    queues: list[Queue[Any]] = [context.Queue() for _ in range(WORKERS)]
    processes = [context.Process(target=process_worker, args=(str(path), barrier, q, results),
                                 daemon=True) for q in queues]
    for process in processes:
        process.start()

    def round_(tasks: list[tuple[Any, ...]]) -> list[str]:
        tasks = tasks + [("idle",)] * (WORKERS - len(tasks))
        for queue, task in zip(queues, tasks, strict=True):
            queue.put(task)
        return [results.get(timeout=PATIENCE) for _ in tasks]

    yield path, round_
    for queue in queues:
        queue.put(None)
    for process in processes:
        process.join(PATIENCE)
        if process.is_alive():
            process.kill()


def test_processes_racing_on_one_sqlite_file_keep_the_invariants(
        pool: tuple[Path, Callable[[list[tuple[Any, ...]]], list[str]]]) -> None:
    from account_merge import SQLiteStorage

    path, round_ = pool
    store = InstrumentedStorage(SQLiteStorage(path))
    service = MergeService(store, fast_verifier())
    families = Families(service)
    try:
        for _ in range(2):
            contested = families.letter()
            outcomes = round_([("merge", families.active()[0].id, contested.login,
                                contested.provisional_password.reveal())
                               for _ in range(WORKERS)])
            assert sorted(outcomes).count("ok") == 1, outcomes
            assert violations(store, exclusive_children=True) == []

            (a, _), (b, _) = families.active(), families.active()
            (c, _), (d, _) = families.active(), families.active()
            round_([("merge", a.id, b.login, STRONG), ("merge", b.id, a.login, STRONG),
                    ("merge", c.id, d.login, STRONG), ("merge", d.id, c.login, STRONG)])
            assert violations(store, exclusive_children=True) == []

            tasks: list[tuple[Any, ...]] = []
            for _ in range(2):
                holder, _ = families.active()
                joined = families.letter(LYCEE)
                service.merge(holder.id, joined.login, joined.provisional_password)
                absorber, _ = families.active()
                tasks += [("split", LYCEE.uai, LYCEE.name, holder.id),
                          ("merge", absorber.id, holder.login, STRONG)]
            round_(tasks)
            assert violations(store, exclusive_children=True) == []
    finally:
        store.close()
