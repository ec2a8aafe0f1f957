"""Concurrency across processes: several processes share one SQLite file.

Four worker processes (started with 'spawn', each with its own
SQLiteStorage on the file) are released together by a barrier for every
round, so that their merges really race: several principals claiming the
same account, two accounts merging into each other, and wrong passwords
typed at one login, each counted exactly once.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from account_merge import AccountStatus, Child, MergeService, SQLiteStorage
from account_merge.domain.account import Account
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import AccountMergeError
from account_merge.testing import fast_verifier, make_establishment

pytestmark = pytest.mark.slow

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
WORKERS = 4
#: How long a round may take before the test gives up waiting (not a measure).
PATIENCE = 120


#: The workers' limits: a back-off so long that, past ``backoff_after`` failures
#: at one login, every further attempt in the test is refused, however slow
#: the machine.
THROTTLE = ThrottlePolicy(backoff_base=timedelta(hours=1))


def worker(path: str, barrier: Barrier, tasks: Queue[Any], results: Queue[Any]) -> None:
    """Run merges on the file: wait at the barrier, merge, report; until told to stop."""
    service = MergeService(SQLiteStorage(path), fast_verifier(), throttle=THROTTLE)
    try:
        while (task := tasks.get()) is not None:
            barrier.wait()
            if task == "idle":
                results.put(("idle", None))
                continue
            principal_id, login, password = task
            try:
                receipt = service.merge(principal_id, login, password)
            except AccountMergeError as error:
                results.put((error.code, principal_id))
            else:
                results.put(("merged", receipt.principal_id))
    finally:
        service.storage.close()


class Pool:
    """The worker processes, and one round at a time for them."""

    def __init__(self, path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.barrier = context.Barrier(WORKERS)
        self.results: Queue[Any] = context.Queue()
        self.queues: list[Queue[Any]] = [context.Queue() for _ in range(WORKERS)]
        self.processes = [
            context.Process(target=worker, args=(str(path), self.barrier, q, self.results),
                            daemon=True)
            for q in self.queues
        ]
        for process in self.processes:
            process.start()

    def round(self, tasks: list[Any]) -> list[tuple[str, str | None]]:
        """Give each worker its task (or none), release them together, gather the outcomes."""
        tasks = tasks + ["idle"] * (WORKERS - len(tasks))
        for queue, task in zip(self.queues, tasks, strict=True):
            queue.put(task)
        outcomes = [self.results.get(timeout=PATIENCE) for _ in tasks]
        return [o for o in outcomes if o[0] != "idle"]

    def stop(self) -> None:
        for queue in self.queues:
            queue.put(None)
        for process in self.processes:
            process.join(PATIENCE)
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("processes") / "shared.sqlite3"


@pytest.fixture(scope="module")
def service(path: Path) -> Iterator[MergeService]:
    storage = SQLiteStorage(path)
    yield MergeService(storage, fast_verifier())
    storage.close()


@pytest.fixture(scope="module")
def pool(path: Path, service: MergeService) -> Iterator[Pool]:
    """The workers, started once for the module (starting a process is slow)."""
    with service.storage.unit_of_work(write=False):
        pass  # the file exists before the workers start
    workers = Pool(path)
    yield workers
    workers.stop()


def child(tag: str) -> Child:
    return Child(f"ine-{tag}", "Dylan", "Robert", SCHOOL.uai)


def active_parent(service: MergeService, name: str, tag: str) -> Account:
    letter = service.issue_account(SCHOOL, name, [child(tag)])
    return service.activate(letter.login, letter.provisional_password, STRONG)


def test_processes_racing_to_absorb_one_account_have_one_winner_and_lose_no_child(
        service: MergeService, pool: Pool) -> None:
    for round_ in range(3):
        contested = service.issue_account(SCHOOL, f"Claire R{round_}", [child(f"{round_}-x")])
        principals = [active_parent(service, f"Parent R{round_} N{i}", f"{round_}-{i}")
                      for i in range(WORKERS)]
        outcomes = pool.round([(p.id, contested.login, contested.provisional_password.reveal())
                               for p in principals])
        winners = [who for what, who in outcomes if what == "merged" and who is not None]
        assert len(winners) == 1, outcomes
        assert sorted(what for what, _ in outcomes) == ["invalid_credentials"] * (
            WORKERS - 1) + ["merged"]
        absorbed = service.get_account(contested.account_id)
        assert absorbed.status is AccountStatus.MERGED
        assert absorbed.merged_into == winners[0]
        assert child(f"{round_}-x") in service.children(winners[0])
        for i, principal in enumerate(principals):
            assert service.get_account(principal.id).status is AccountStatus.ACTIVE
            assert child(f"{round_}-{i}") in service.children(principal.id)


def test_processes_merging_two_accounts_into_each_other_never_deactivate_both(
        service: MergeService, pool: Pool) -> None:
    for round_ in range(3):
        pairs = [(active_parent(service, f"Claire M{round_} P{k}", f"m{round_}-{k}-a"),
                  active_parent(service, f"Marc M{round_} P{k}", f"m{round_}-{k}-b"))
                 for k in range(WORKERS // 2)]
        tasks = []
        for a, b in pairs:
            tasks += [(a.id, b.login, STRONG), (b.id, a.login, STRONG)]
        outcomes = pool.round(tasks)
        assert sum(what == "merged" for what, _ in outcomes) == len(pairs), outcomes
        assert {what for what, _ in outcomes} <= {
            "merged", "principal_not_active", "invalid_credentials"}
        for k, (a, b) in enumerate(pairs):
            after = {x.id: service.get_account(x.id) for x in (a, b)}
            live = [x for x in after.values() if x.is_live]
            assert len(live) == 1, after
            merged = next(x for x in after.values() if not x.is_live)
            assert merged.merged_into == live[0].id
            assert set(service.children(live[0].id)) == {
                child(f"m{round_}-{k}-a"), child(f"m{round_}-{k}-b")}


def test_wrong_passwords_from_several_processes_are_each_counted_once(
        service: MergeService, pool: Pool) -> None:
    """An attempt is counted as it is read, under the file's write lock: none is lost.

    Two rounds of four wrong passwords at one login, each from another
    principal: exactly ``backoff_after`` of them are verified (and fail),
    every later one is refused before any verification.
    """
    target = service.issue_account(SCHOOL, "Claire Throttled", [child("t-x")])
    principals = [active_parent(service, f"Parent T N{i}", f"t-{i}") for i in range(2 * WORKERS)]
    outcomes = []
    for round_ in range(2):
        outcomes += pool.round([(p.id, target.login, "WRONG-PASSWORD")
                                for p in principals[round_ * WORKERS:(round_ + 1) * WORKERS]])
    codes = sorted(what for what, _ in outcomes)
    assert codes == sorted(["invalid_credentials"] * THROTTLE.backoff_after
                           + ["too_many_attempts"] * (2 * WORKERS - THROTTLE.backoff_after))
    assert service.get_account(target.account_id).status is AccountStatus.PROVISIONAL


def _issue_in_child(storage: SQLiteStorage, results: Queue[Any]) -> None:
    letter = MergeService(storage, fast_verifier()).issue_account(
        SCHOOL, "Claire Forked", [child("forked")])
    storage.close()
    results.put(letter.account_id)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs fork")
def test_a_forked_process_opens_its_own_connections(tmp_path: Path) -> None:
    """A store used before a fork works in the child, and the parent's connection still works."""
    storage = SQLiteStorage(tmp_path / "forked.sqlite3")
    service = MergeService(storage, fast_verifier())
    before = service.issue_account(SCHOOL, "Claire Parent", [child("parent")])
    context = multiprocessing.get_context("fork")
    results: Queue[Any] = context.Queue()
    process = context.Process(target=_issue_in_child, args=(storage, results))
    process.start()
    forked_id = results.get(timeout=PATIENCE)
    process.join(PATIENCE)
    assert process.exitcode == 0
    assert service.children(forked_id) == (child("forked"),)
    assert service.children(before.account_id) == (child("parent"),)
    storage.close()
