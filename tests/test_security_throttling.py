"""Throttling of failed attempts: the defaults, their configuration, and their atomicity.

Every test runs on every store.  Attempts are counted in the store: the
merge form's per target login (whether it exists or not) and per
principal, sign-in's (with activation and change of password) per login
and client; and each attempt is counted before its password is checked:
concurrent attempts, from threads or from processes, cannot run more
argon2 verifications than the limits allow.  No stranger's failures, from
another client or from the merge form, slow the owner's sign-in.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from account_merge import Child, MergeService, NotificationLetter
from account_merge.domain.account import Account
from account_merge.domain.throttle import ThrottlePolicy, merge_key
from account_merge.exceptions import AccountMergeError, InvalidInput, TooManyAttempts
from account_merge.ports import Fetch, Storage
from account_merge.testing import CountingVerifier, FakeClock, make_establishment
from naive_storage import NaiveStorage
from security_kit import InstrumentedStorage, race

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Mot-de-passe-Sûr-2026"
WRONG = "WRONG234"
HOUR, DAY = 3600, 86400


def make(storage: Storage, **options: Any) -> MergeService:
    return MergeService(storage, CountingVerifier(), FakeClock(), **options)


def letter(service: MergeService, n: int) -> NotificationLetter:
    return service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                 [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])


def principal(service: MergeService, n: int) -> Account:
    issued = letter(service, n)
    return service.activate(issued.login, issued.provisional_password, STRONG)


def outcome(call: Callable[[], object]) -> str | int:
    """``"ok"``, an error code, or the ``retry_after`` of ``too_many_attempts``."""
    try:
        call()
    except TooManyAttempts as error:
        return error.retry_after
    except AccountMergeError as error:
        return error.code
    return "ok"


def verifications(service: MergeService) -> int:
    assert isinstance(service.verifier, CountingVerifier)
    return service.verifier.verifications


def clock(service: MergeService) -> FakeClock:
    assert isinstance(service.clock, FakeClock)
    return service.clock


def strangers_then_owner(service: MergeService) -> tuple[str | int, str | int]:
    """1,000 wrong sign-ins from one client and 1,000 at the merge form, over a day.

    Returns what the owner then gets signing in from another client, and
    without a client; each runs one verification at most.
    """
    owner = principal(service, 1)
    attackers = [principal(service, n) for n in range(2, 12)]
    for i in range(1000):
        outcome(lambda: service.authenticate(owner.login, WRONG, client="203.0.113.9"))
        outcome(lambda i=i: service.merge(attackers[i % 10].id, owner.login, WRONG))
        clock(service).advance(seconds=86)
    service.verifier.reset()  # type: ignore[attr-defined]
    results = (outcome(lambda: service.authenticate(owner.login, STRONG, client="198.51.100.7")),
               outcome(lambda: service.authenticate(owner.login, STRONG)))
    assert verifications(service) <= 2
    return results


class TestDefaults:
    def test_after_five_failures_each_merge_attempt_waits_twice_as_long_then_ten_lock_it(
            self, instrumented: InstrumentedStorage) -> None:
        service = make(instrumented)
        parent, target = principal(service, 1), letter(service, 2)
        service.verifier.reset()  # type: ignore[attr-defined]

        def attempt(password: str = WRONG) -> str | int:
            return outcome(lambda: service.merge(parent.id, target.login, password))

        assert [attempt() for _ in range(5)] == ["invalid_credentials"] * 5
        waits = []
        for _ in range(5):
            waits.append(attempt())
            clock(service).advance(seconds=int(waits[-1]))
            assert attempt() == "invalid_credentials"
        assert waits == [1, 2, 4, 8, 16]
        # Ten failures: merging with that login is locked for 24 hours, whatever the password.
        assert attempt(target.provisional_password.reveal()) == DAY
        clock(service).advance(hours=23)
        assert attempt(target.provisional_password.reveal()) == HOUR
        assert verifications(service) == 10
        clock(service).advance(hours=1)
        assert attempt(target.provisional_password.reveal()) == "ok"

    def test_the_merge_lock_never_slows_the_owners_sign_in(
            self, instrumented: InstrumentedStorage) -> None:
        """Nobody can lock a parent out of their own account from the merge form."""
        service = make(instrumented)
        owner = principal(service, 1)
        attackers = [principal(service, n) for n in range(2, 12)]
        for attacker in attackers:
            assert outcome(lambda a=attacker: service.merge(a.id, owner.login, WRONG)) == (
                "invalid_credentials")
            clock(service).advance(seconds=16)
        assert outcome(lambda: service.merge(attackers[0].id, owner.login, STRONG)) == DAY - 16
        # The owner signs in at once, with or without a client...
        assert outcome(lambda: service.authenticate(owner.login, STRONG)) == "ok"
        assert outcome(lambda: service.authenticate(owner.login, STRONG,
                                                    client="198.51.100.7")) == "ok"
        # ... and that lifts nothing: merging with that login stays locked.
        assert outcome(lambda: service.merge(attackers[1].id, owner.login, WRONG)) == DAY - 16

    def test_failures_count_alike_whether_the_login_exists_or_not(
            self, instrumented: InstrumentedStorage) -> None:
        service = make(instrumented)
        target = letter(service, 1)
        seen = {}
        for n, login in enumerate((target.login, "nobody.here"), start=2):
            parent = principal(service, n)
            seen[login] = [outcome(lambda p=parent, login=login: service.merge(p.id, login, WRONG))
                           for _ in range(6)]
        assert seen[target.login] == seen["nobody.here"] == ["invalid_credentials"] * 5 + [1]
        keys = [merge_key(target.login), merge_key("nobody.here")]
        with instrumented.inner.unit_of_work(write=False) as uow:
            known, unknown = (uow.fetch(Fetch(throttles=keys)).throttles[k] for k in keys)
        assert (known.consecutive, len(known.recent)) == (unknown.consecutive,
                                                          len(unknown.recent)) == (5, 5)

    def test_a_principal_may_fail_ten_times_an_hour_and_thirty_times_a_day(
            self, instrumented: InstrumentedStorage) -> None:
        service = make(instrumented)
        parent = principal(service, 1)
        logins = (f"nobody.{n}" for n in range(100))

        def attempt() -> str | int:
            return outcome(lambda: service.merge(parent.id, next(logins), WRONG))

        for _ in range(2):
            assert [attempt() for _ in range(10)] == ["invalid_credentials"] * 10
            assert attempt() == HOUR
            clock(service).advance(hours=1)
        assert [attempt() for _ in range(10)] == ["invalid_credentials"] * 10
        assert attempt() == 22 * HOUR  # thirty failures in the day; the first ten leave at 24 h
        clock(service).advance(hours=22)
        assert attempt() == "invalid_credentials"

    def test_the_owners_sign_in_backs_off_up_to_an_hour_and_is_never_locked(
            self, instrumented: InstrumentedStorage) -> None:
        service = make(instrumented)
        owner = principal(service, 1)
        waits: list[int] = []
        while len(waits) < 15:
            result = outcome(lambda: service.authenticate(owner.login, WRONG))
            if isinstance(result, int):
                waits.append(result)
                clock(service).advance(seconds=result)
        assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, HOUR, HOUR, HOUR]
        # Nineteen failures, and the owner's sign-in still goes through.
        assert outcome(lambda: service.authenticate(owner.login, STRONG)) == "ok"

    def test_activation_failures_count_per_client_and_never_lock_the_merge_form(
            self, instrumented: InstrumentedStorage) -> None:
        """Guessing a letter's password by activation slows that client only."""
        service = make(instrumented)
        parent, target = principal(service, 1), letter(service, 2)
        guesses = [outcome(lambda: service.activate(target.login, WRONG, STRONG + "!",
                                                    client="203.0.113.9"))
                   for _ in range(7)]
        assert guesses == ["invalid_credentials"] * 5 + [1, 1]
        # The letter's holder activates from elsewhere at once, or merges it.
        assert outcome(lambda: service.merge(parent.id, target.login,
                                             target.provisional_password)) == "ok"

    def test_a_thousand_failures_from_one_client_and_at_the_merge_form_leave_the_owner_in(
            self, instrumented: InstrumentedStorage) -> None:
        """Defect 12.1: strangers could keep a parent out of sign-in all day; no more."""
        assert strangers_then_owner(make(instrumented)) == ("ok", "ok")

    def test_the_test_above_fails_when_every_failure_shares_one_counter(
            self, instrumented: InstrumentedStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        """Teeth: with the old single counter per login, the owner is refused."""
        from account_merge.service import merging, own_account

        shared = "login:{}".format
        monkeypatch.setattr(own_account, "signin_key", lambda key, client: shared(key))
        monkeypatch.setattr(merging, "merge_key", shared)
        assert strangers_then_owner(make(instrumented)) != ("ok", "ok")

    def test_a_success_from_one_client_leaves_another_clients_count_alone(
            self, instrumented: InstrumentedStorage) -> None:
        """A guesser cannot learn from their own counter that the owner signed in."""
        service = make(instrumented)
        owner = principal(service, 1)
        assert [outcome(lambda: service.authenticate(owner.login, WRONG, client="attacker"))
                for _ in range(6)] == ["invalid_credentials"] * 5 + [1]
        assert outcome(lambda: service.authenticate(owner.login, STRONG, client="home")) == "ok"
        assert outcome(lambda: service.authenticate(owner.login, WRONG, client="attacker")) == 1

    def test_calls_without_a_client_share_one_bucket_per_login(
            self, instrumented: InstrumentedStorage) -> None:
        service = make(instrumented)
        owner = principal(service, 1)
        assert [outcome(lambda: service.authenticate(owner.login, WRONG))
                for _ in range(6)] == ["invalid_credentials"] * 5 + [1]
        assert outcome(lambda: service.authenticate(owner.login, STRONG)) == 1
        assert outcome(lambda: service.authenticate(owner.login, STRONG, client="home")) == "ok"

    def test_a_long_back_off_never_overflows(self, instrumented: InstrumentedStorage) -> None:
        """Defect 12.7: a base of about 79 s overflowed ``timedelta`` after 45 failures."""
        policy = ThrottlePolicy(backoff_base=timedelta(seconds=80),
                                backoff_max=timedelta(days=30))
        service = make(instrumented, throttle=policy)
        owner = principal(service, 1)
        waits = []
        for _ in range(60):
            result = outcome(lambda: service.authenticate(owner.login, WRONG))
            if isinstance(result, int):
                waits.append(result)
                clock(service).advance(seconds=result)
        assert max(waits) == 30 * DAY

    def test_too_many_attempts_is_audited_and_carries_retry_after(
            self, instrumented: InstrumentedStorage) -> None:
        service = make(instrumented)
        parent = principal(service, 1)
        for _ in range(5):
            outcome(lambda: service.merge(parent.id, "nobody", WRONG))
        with pytest.raises(TooManyAttempts) as raised:
            service.merge(parent.id, "nobody", WRONG)
        assert raised.value.code == "too_many_attempts"
        assert raised.value.retry_after == 1
        assert "retry in 1 s" in str(raised.value)
        assert service.audit_trail(parent.id)[-1].outcome == "too_many_attempts"


class TestConfiguration:
    def test_every_limit_can_be_changed(self, instrumented: InstrumentedStorage) -> None:
        policy = ThrottlePolicy(backoff_after=2, backoff_base=timedelta(seconds=10),
                                backoff_max=timedelta(seconds=30), lock_after=5,
                                lock_for=timedelta(hours=2), principal_per_hour=3,
                                principal_per_day=4)
        service = make(instrumented, throttle=policy)
        parents = iter([principal(service, n) for n in range(1, 10)])
        target = letter(service, 9)

        def attempt() -> str | int:
            parent = next(parents)
            return outcome(lambda: service.merge(parent.id, target.login, WRONG))

        assert [attempt(), attempt()] == ["invalid_credentials"] * 2
        for wait in (10, 20, 30):  # twice as long each time, at most 30 s
            assert attempt() == wait
            clock(service).advance(seconds=wait)
            assert attempt() == "invalid_credentials"
        assert attempt() == 2 * HOUR  # five failures lock merging for two hours
        # The principal limit: three failures an hour, four a day.
        third = principal(service, 4)
        assert [outcome(lambda n=n: service.merge(third.id, f"x.{n}", WRONG))
                for n in range(4)] == ["invalid_credentials"] * 3 + [HOUR]
        clock(service).advance(hours=1)
        assert outcome(lambda: service.merge(third.id, "x.9", WRONG)) == "invalid_credentials"
        assert outcome(lambda: service.merge(third.id, "x.10", WRONG)) == 23 * HOUR

    @pytest.mark.parametrize("field", ["backoff_after", "backoff_base", "backoff_max",
                                       "lock_after", "lock_for", "principal_per_hour",
                                       "principal_per_day"])
    @pytest.mark.parametrize("value", [0, -1, timedelta(0), "5", None, True, 1.5])
    def test_a_limit_must_be_positive(self, field: str, value: object) -> None:
        with pytest.raises(InvalidInput):
            ThrottlePolicy(**{field: value})


class TestWorkersShareTheCounters:
    def test_two_services_on_one_store_count_together(
            self, instrumented: InstrumentedStorage) -> None:
        """Two app workers: each sees the failures the other recorded."""
        clock_ = FakeClock()
        workers = [MergeService(instrumented, CountingVerifier(), clock_) for _ in range(2)]
        parent, target = principal(workers[0], 1), letter(workers[0], 2)
        workers[0].verifier.reset()  # type: ignore[attr-defined]
        results = [outcome(lambda w=workers[i % 2]: w.merge(parent.id, target.login, WRONG))
                   for i in range(7)]
        assert results == ["invalid_credentials"] * 5 + [1, 1]
        assert sum(verifications(w) for w in workers) == 5

    def test_two_sqlite_stores_on_one_file_count_together(self, tmp_path: Path) -> None:
        from account_merge import SQLiteStorage

        clock_ = FakeClock()
        stores = [SQLiteStorage(tmp_path / "shared.sqlite3") for _ in range(2)]
        workers = [MergeService(store, CountingVerifier(), clock_) for store in stores]
        try:
            parent, target = principal(workers[0], 1), letter(workers[0], 2)
            results = [outcome(lambda w=workers[i % 2]: w.merge(parent.id, target.login, WRONG))
                       for i in range(7)]
        finally:
            for store in stores:
                store.close()
        assert results == ["invalid_credentials"] * 5 + [1, 1]


# -- atomicity ------------------------------------------------------------------------
ATTEMPTS = 50
#: Slept inside each read of a counter: a store that does not serialise the
#: read-modify-write of a counter loses updates in this window.
WIDEN = {"fetch(count)": 0.002}


def concurrent_wrong_merges(storage: Storage) -> tuple[int, list[Any]]:
    """ATTEMPTS principals try a wrong password at one login at once.

    Returns the argon2 verifications run and the outcomes.
    """
    store = InstrumentedStorage(storage)
    service = make(store)
    target = letter(service, 0)
    parents = [principal(service, n) for n in range(1, ATTEMPTS + 1)]
    service.verifier.reset()  # type: ignore[attr-defined]
    store.delays = dict(WIDEN)
    results = race(ATTEMPTS, lambda i: service.merge(parents[i].id, target.login, WRONG))
    return verifications(service), results


def test_fifty_concurrent_wrong_merges_run_five_verifications(
        instrumented: InstrumentedStorage) -> None:
    count, results = concurrent_wrong_merges(instrumented.inner)
    assert count == ThrottlePolicy().backoff_after == 5
    codes = sorted(getattr(r, "code", repr(r)) for r in results)
    assert codes == ["invalid_credentials"] * 5 + ["too_many_attempts"] * 45


def test_fifty_concurrent_wrong_sign_ins_run_five_verifications(
        instrumented: InstrumentedStorage) -> None:
    service = make(instrumented)
    owner = principal(service, 1)
    service.verifier.reset()  # type: ignore[attr-defined]
    instrumented.delays = dict(WIDEN)
    results = race(ATTEMPTS, lambda i: service.authenticate(owner.login, WRONG))
    assert verifications(service) == 5
    assert sorted(r.code for r in results) == (
        ["invalid_credentials"] * 5 + ["too_many_attempts"] * 45)


def test_one_principal_trying_fifty_logins_at_once_runs_ten_verifications(
        instrumented: InstrumentedStorage) -> None:
    service = make(instrumented)
    parent = principal(service, 1)
    service.verifier.reset()  # type: ignore[attr-defined]
    instrumented.delays = dict(WIDEN)
    results = race(ATTEMPTS, lambda i: service.merge(parent.id, f"nobody.{i}", WRONG))
    assert verifications(service) == 10
    assert sorted(r.code for r in results) == (
        ["invalid_credentials"] * 10 + ["too_many_attempts"] * 40)


def test_a_store_without_locking_lets_concurrent_attempts_through() -> None:
    """The atomicity test has teeth: on the naive store, more than five verifications run."""
    count, _ = concurrent_wrong_merges(NaiveStorage())
    assert count > 5


# -- across processes ------------------------------------------------------------------
PROCESSES = 4
PATIENCE = 120
#: The worker processes' clock: one instant, so that no back-off expires
#: however long the processes take.
FIXED_NOW = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    return FIXED_NOW


def attack_from_a_process(path: str, barrier: Barrier, login: str, principal_ids: list[str],
                          results: Queue[Any]) -> None:
    """Wait for the others, then try *login* with a wrong password from each principal."""
    from account_merge import SQLiteStorage

    storage = SQLiteStorage(path)
    verifier = CountingVerifier()
    service = MergeService(storage, verifier, fixed_clock)
    try:
        barrier.wait(PATIENCE)
        outcomes = race(len(principal_ids),
                        lambda i: service.merge(principal_ids[i], login, WRONG))
        results.put((verifier.verifications, [getattr(o, "code", repr(o)) for o in outcomes]))
    finally:
        storage.close()


def test_processes_attacking_one_login_on_one_sqlite_file_run_five_verifications(
        tmp_path: Path) -> None:
    from account_merge import SQLiteStorage

    path = tmp_path / "shared.sqlite3"
    storage = SQLiteStorage(path)
    service = make(storage)
    target = letter(service, 0)
    parents = [principal(service, n).id for n in range(1, ATTEMPTS + 1)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results: Queue[Any] = context.Queue()
    share = [parents[i::PROCESSES] for i in range(PROCESSES)]
    processes = [context.Process(target=attack_from_a_process,
                                 args=(str(path), barrier, target.login, mine, results),
                                 daemon=True) for mine in share]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=PATIENCE) for _ in processes]
    finally:
        for process in processes:
            process.join(PATIENCE)
            if process.is_alive():
                process.kill()
    assert sum(count for count, _ in reports) == 5
    codes = sorted(code for _, outcomes in reports for code in outcomes)
    assert codes == ["invalid_credentials"] * 5 + ["too_many_attempts"] * (ATTEMPTS - 5)
    # The audit trail, written by the processes, tells the same.
    trail = service.audit_trail(limit=1000)
    merges = [r.outcome for r in trail if r.action.value == "merge"]
    assert sorted(merges) == codes
    storage.close()
