"""Races on PostgreSQL through SQLAlchemyStorage: threads of one process, and processes.

The processes run tests/merge_workers.py, each with an engine of its own,
released together by a barrier.
"""

from __future__ import annotations

import multiprocessing
import threading

from account_merge import AccountStatus, MergeService
from account_merge.domain.logins import login_key
from account_merge.domain.throttle import ThrottlePolicy, merge_key, principal_key
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Fetch
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import CountingVerifier
from merge_workers import merge_worker
from sqlalchemy_kit import (
    SCHOOL,
    STRONG,
    T0,
    activated,
    child,
    make_service,
    pg_engine,
    pg_storage,
)

__all__ = ["pg_engine", "pg_storage"]

#: Limits high enough that the race tests measure locking, not throttling.
GENEROUS = ThrottlePolicy(backoff_after=1000, lock_after=1000,
                          principal_per_hour=1000, principal_per_day=1000)


def test_fifty_concurrent_wrong_merge_attempts_at_one_login_are_counted_exactly(
        pg_storage: SQLAlchemyStorage) -> None:
    """No more argon2 verifications run than the throttle allows, whatever the race."""
    verifier = CountingVerifier()
    service = make_service(pg_storage, verifier)
    target = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    principals = [activated(service, f"Parent {i}", [child(10 + i)]) for i in range(5)]
    verifier.reset()
    barrier = threading.Barrier(50)
    codes: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        barrier.wait(30)
        try:
            service.merge(principals[i % 5].id, target.login, "WRONG1234")
        except AccountMergeError as error:
            with lock:
                codes.append(error.code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    allowance = service.throttle.backoff_after
    assert verifier.verifications == allowance
    assert sorted(codes) == sorted(["invalid_credentials"] * allowance
                                   + ["too_many_attempts"] * (50 - allowance))
    keys = [merge_key(login_key(target.login)), *(principal_key(p.id) for p in principals)]
    with pg_storage.unit_of_work(write=False) as uow:
        states = uow.fetch(Fetch(throttles=keys)).throttles
    assert states[keys[0]].consecutive == allowance
    assert sum(len(states[k].recent) for k in keys[1:]) == allowance
    assert service.get_account(target.account_id).status is AccountStatus.PROVISIONAL


def _run_processes(url: str, prefix: str, jobs: list[list[tuple[str, str, str]]], *,
                   throttle: ThrottlePolicy = GENEROUS) -> list[tuple[list[str], int]]:
    """Run one worker process per list of jobs; their rounds start together.

    Each returns its outcomes (the principal id of a receipt, or an error
    code) and the number of verifications it ran.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs))
    results = context.Queue()
    workers = [context.Process(target=merge_worker, args=(url, prefix, barrier, job, results),
                               kwargs={"throttle": throttle, "start": T0})
               for job in jobs]
    for worker in workers:
        worker.start()
    try:
        out = [results.get(timeout=180) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():  # pragma: no cover - a hung worker
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)
    return out


def _all_children(service: MergeService, ids: list[str]) -> set[str]:
    held: set[str] = set()
    for account_id in ids:
        live = service.resolve(account_id)
        held.update(c.id for c in service.children(live.id))
    return held


def test_processes_racing_to_merge_one_account_have_one_winner_and_lose_no_child(
        pg_storage: SQLAlchemyStorage, postgres_url: str) -> None:
    service = make_service(pg_storage, throttle=GENEROUS)
    rounds, racers = 3, 4
    letters = [service.issue_account(SCHOOL, "Claire Robert", [child(100 + r)])
               for r in range(rounds)]
    principals = [[activated(service, f"Parent {r} {i}", [child(200 + 10 * r + i)])
                   for i in range(racers)] for r in range(rounds)]
    jobs = [[(principals[r][i].id, letters[r].login, letters[r].provisional_password.reveal())
             for r in range(rounds)] for i in range(racers)]
    results = _run_processes(postgres_url, pg_storage.prefix, jobs)
    for r in range(rounds):
        outcomes = [outcomes[r] for outcomes, _ in results]
        winners = [o for o in outcomes if o.isalnum() and len(o) == 32]
        assert len(winners) == 1, outcomes
        assert set(outcomes) - set(winners) <= {"invalid_credentials", "concurrent_update"}
        assert service.resolve(letters[r].account_id).id == winners[0]
        ids = [p.id for p in principals[r]] + [letters[r].account_id]
        assert _all_children(service, ids) == {f"ine-{100 + r}"} | {
            f"ine-{200 + 10 * r + i}" for i in range(racers)}


def test_processes_merging_two_accounts_into_each_other_never_deactivate_both(
        pg_storage: SQLAlchemyStorage, postgres_url: str) -> None:
    service = make_service(pg_storage, throttle=GENEROUS)
    pairs = [(activated(service, "Claire Robert", [child(300 + r)]),
              activated(service, "Marc Robert", [child(400 + r)])) for r in range(6)]
    jobs = [[(a.id, b.login, STRONG) for a, b in pairs],
            [(b.id, a.login, STRONG) for a, b in pairs]]
    results = _run_processes(postgres_url, pg_storage.prefix, jobs)
    for r, (a, b) in enumerate(pairs):
        outcomes = [outcomes[r] for outcomes, _ in results]
        assert sum(o in (a.id, b.id) for o in outcomes) == 1, outcomes
        statuses = [service.get_account(x.id).status for x in (a, b)]
        assert AccountStatus.ACTIVE in statuses, statuses
        assert _all_children(service, [a.id, b.id]) == {f"ine-{300 + r}", f"ine-{400 + r}"}


def test_processes_making_wrong_attempts_run_no_more_verifications_than_allowed(
        pg_storage: SQLAlchemyStorage, postgres_url: str) -> None:
    service = make_service(pg_storage)
    target = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    principals = [activated(service, f"Parent {i}", [child(10 + i)]) for i in range(3)]
    jobs = [[(p.id, target.login, "WRONG1234")] * 4 for p in principals]
    results = _run_processes(postgres_url, pg_storage.prefix, jobs, throttle=ThrottlePolicy())
    verifications = sum(count for _, count in results)
    codes = [code for outcomes, _ in results for code in outcomes]
    allowance = ThrottlePolicy().backoff_after
    assert verifications == allowance
    assert codes.count("invalid_credentials") == allowance
    assert codes.count("too_many_attempts") == len(codes) - allowance


def test_concurrent_merges_into_one_principal_keep_every_child(
        pg_storage: SQLAlchemyStorage) -> None:
    """Each merge reads the principal's children after the one before it committed."""
    service = make_service(pg_storage, throttle=GENEROUS)
    principal = activated(service, "Claire Robert", [child(1)])
    letters = [service.issue_account(SCHOOL, "Claire Robert", [child(10 + i), child(50)])
               for i in range(4)]
    receipts = []
    barrier = threading.Barrier(4)

    def merge(i: int) -> None:
        barrier.wait(30)
        receipts.append(service.merge(principal.id, letters[i].login,
                                      letters[i].provisional_password))

    threads = [threading.Thread(target=merge, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(receipts) == 4
    held = service.children(principal.id)
    assert {c.id for c in held} == {"ine-1", "ine-50"} | {f"ine-{10 + i}" for i in range(4)}
    assert sorted(len(r.children) for r in receipts) == [3, 4, 5, 6]
    assert sum(len(r.moved) for r in receipts) == 5  # ine-50 moved once
