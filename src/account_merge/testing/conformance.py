"""The storage contract, as mixin classes an adapter's test suite subclasses.

Every storage adapter in this package runs these tests, and so should
yours.  The mixins are not named ``Test*``, so pytest does not collect
them on their own; subclass one (or :class:`StorageContract`, which has
them all) in a class whose name starts with ``Test`` and implement the one
hook, :meth:`StorageHarness.make_storage`::

    from account_merge.testing.conformance import StorageContract

    class TestMyStorage(StorageContract):
        def make_storage(self):
            return MyStorage(...)          # a fresh, empty store

Optional hooks: ``close_storage(storage)`` (default ``storage.close()``),
``make_broken_storage()`` (a store whose backend cannot be used, to check
that driver errors come out as ``StorageError``; by default that test is
skipped), ``hosted_storage(storage)`` (a store on the same database whose
units of work run inside a host transaction that is rolled back at the
end; by default that test is skipped), ``dump_storage(storage)`` (every
row the store holds, as text, for the retention contract's test of what
deleting an account leaves; by default that test is skipped), and the
class attribute ``state_machine_examples``.

Each numbered rule of :mod:`account_merge.ports.storage` has its tests
here: round trip of every aggregate and the order of what comes back
(:class:`RoundTripContract`, :class:`OrderContract`), the change set's
preconditions and errors (:class:`ChangeSetContract`), counting attempts
(:class:`CountingContract`), rollback (:class:`RollbackContract`),
isolation between threads (:class:`IsolationContract`), the outbox
(:class:`OutboxContract`), idempotency keys (:class:`IdempotencyContract`),
translation of driver errors (:class:`ErrorTranslationContract`),
attempts that outlive a host's rollback (:class:`HostRollbackContract`),
and the Hypothesis state machine of :mod:`account_merge.testing.state_machine`
(:class:`StateMachineContract`).  Optional tiers have their own mixins,
which skip on a store without the tier (:class:`BulkLoadContract`,
:class:`EmailIndexContract`, :class:`NoticesContract`,
:class:`RegisterContract`, :class:`RetentionContract`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from account_merge.domain.account import (
    Account,
    AccountStatus,
    Credential,
    CredentialKind,
    Role,
)
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.events import (
    AccountActivated,
    AccountIssued,
    AccountPurged,
    AccountsMerged,
    EmailChanged,
    EmailVerificationRequested,
    Event,
    LetterReissued,
    LoginReminderRequested,
    MergeSplit,
    PasswordChanged,
    PasswordReset,
    PasswordResetRequested,
)
from account_merge.domain.notices import Notice, NoticeKind, NoticeState, NoticeStatus
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.register import RegisterEntry, RegisterRecord
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    RetentionPolicy,
    forgotten,
    pseudonymised,
)
from account_merge.domain.throttle import ThrottlePolicy, ThrottleState
from account_merge.exceptions import (
    AccountMergeError,
    AccountNotFound,
    ExpectationFailed,
    InvalidInput,
    LoginTaken,
    StorageError,
)
from account_merge.ports.register import (
    Closure,
    Register,
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
)
from account_merge.ports.retention import DueKind, DuePage
from account_merge.ports.storage import (
    ChangeSet,
    Expect,
    Fetch,
    NewAccount,
    SignIn,
    Storage,
    StoredReceipt,
)
from account_merge.ports.tiers import (
    BulkLoad,
    EmailIndex,
    Notices,
    Retention,
    require_tier,
    supports,
)
from account_merge.service import MergeService
from account_merge.testing import (
    CapturingMailer,
    CountingVerifier,
    FakeClock,
    fast_verifier,
    make_establishment,
    race,
)
from account_merge.testing.state_machine import build_state_machine

__all__ = [
    "BulkLoadContract",
    "ChangeSetContract",
    "CountingContract",
    "EmailIndexContract",
    "ErrorTranslationContract",
    "HostRollbackContract",
    "IdempotencyContract",
    "IsolationContract",
    "NoticesContract",
    "OrderContract",
    "OutboxContract",
    "RegisterContract",
    "RetentionContract",
    "RollbackContract",
    "RoundTripContract",
    "StateMachineContract",
    "StorageContract",
    "StorageHarness",
]

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
OTHER_SCHOOL = make_establishment(860002, "Lycée Camille Guérin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"
HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"
OTHER_HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdDI$aGFzaDI"


def _account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent Numéro {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def _new(*numbers: int, **changes: Any) -> ChangeSet:
    return ChangeSet(new_accounts=tuple(NewAccount(_account(n, **changes), f"parent.{n}")
                                        for n in numbers))


def _child(n: int, school: str = SCHOOL.uai, first: str | None = None) -> Child:
    return Child(f"ine-{n}", first or f"Enfant{n}", "Robert", school)


def _link(account_id: str, n: int, *, via_merge: bool = False, at: datetime = T0,
          school: str = SCHOOL.uai, first: str | None = None) -> ChildLink:
    return ChildLink(account_id=account_id, child=_child(n, school, first),
                     origin_account_id=account_id, origin_establishment_uai=school,
                     via_merge=via_merge, linked_at=at)


class StorageHarness:
    """The hook every contract needs, and the fixtures built on it."""

    #: Examples the state machine runs; raise it for a nightly run.
    state_machine_examples = 25

    def make_storage(self) -> Storage:
        """A fresh, empty store.  Every subclass implements this."""
        raise NotImplementedError("implement make_storage() to run the storage contract")

    def close_storage(self, storage: Storage) -> None:
        """Release a store made by :meth:`make_storage`."""
        storage.close()

    def make_broken_storage(self) -> Storage | None:
        """A store whose backend cannot be used (corrupt file, no server), or None."""
        return None

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage] | None:
        """A store on *storage*'s database inside a host transaction rolled back at exit.

        None (the default) when the store has no such mode.
        """
        return None

    def dump_storage(self, storage: Storage) -> str | None:
        """Every row *storage* holds, in every table it has (and any file beside it), as text.

        None (the default) when the store offers no such view.  Read the
        tables the database has, not those the store knows, so that a table
        added later is dumped too.
        """
        return None

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        store = self.make_storage()
        try:
            yield store
        finally:
            self.close_storage(store)

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(T0)

    @pytest.fixture
    def service(self, storage: Storage, clock: FakeClock) -> MergeService:
        return MergeService(storage, fast_verifier(), clock)

    @staticmethod
    def apply(storage: Storage, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own."""
        with storage.unit_of_work() as uow:
            uow.apply(changes)
            uow.commit()

    @staticmethod
    def fetch(storage: Storage, request: Fetch) -> Any:
        """Read *request* in a read-only unit of work."""
        with storage.unit_of_work(write=False) as uow:
            return uow.fetch(request)

    @staticmethod
    def family(service: MergeService, name: str = "Claire Robert",
               kids: tuple[int, ...] = (1, 2)) -> tuple[Account, list[Any]]:
        """An activated principal and one more letter per extra child."""
        letters = [service.issue_account(SCHOOL, name, [_child(k)]) for k in kids]
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        return principal, letters[1:]


class RoundTripContract(StorageHarness):
    """Every aggregate comes back as it was stored."""

    def test_an_establishment_round_trips_and_its_name_can_change(self, storage: Storage) -> None:
        assert self.fetch(storage, Fetch(establishments=[SCHOOL.uai])).establishments == {}
        self.apply(storage, ChangeSet(establishments=[SCHOOL]))
        renamed = attrs.evolve(SCHOOL, name="Collège Jean Moulin (Poitiers)")
        assert self.fetch(storage, Fetch(establishments=[SCHOOL.uai])).establishments == {
            SCHOOL.uai: SCHOOL}
        self.apply(storage, ChangeSet(establishments=[renamed]))
        assert self.fetch(storage, Fetch(establishments=[SCHOOL.uai, "0000000A"])
                          ).establishments == {SCHOOL.uai: renamed}

    def test_an_account_round_trips_by_id_and_by_login_with_its_credential(
            self, storage: Storage) -> None:
        account = _account(1, email="claire@example.org", status=AccountStatus.ACTIVE,
                           last_signed_in_at=T0 + timedelta(hours=1))
        credential = Credential("acc1", HASH, CredentialKind.PASSWORD)
        self.apply(storage, ChangeSet(new_accounts=[NewAccount(account, "parent.1")],
                                      credentials=[credential]))
        self.apply(storage, _new(2))
        fetched = self.fetch(storage, Fetch(accounts=["acc1", "acc2", "nobody"],
                                            logins=["parent.1", "nobody"]))
        assert set(fetched.accounts) == {"acc1", "acc2"}
        assert fetched.accounts["acc1"].account == account
        assert fetched.accounts["acc1"].credential == credential
        assert fetched.accounts["acc2"].credential is None
        assert set(fetched.by_login) == {"parent.1"}
        assert fetched.by_login["parent.1"] == fetched.accounts["acc1"]
        assert fetched.record("acc1") == fetched.accounts["acc1"]

    def test_a_replaced_account_and_a_sign_in_round_trip(self, storage: Storage) -> None:
        self.apply(storage, _new(1, 2))
        active = _account(1, status=AccountStatus.ACTIVE, email="c@example.org")
        self.apply(storage, ChangeSet(accounts=[active],
                                      sign_ins=[SignIn("acc2", T0 + timedelta(days=1))]))
        fetched = self.fetch(storage, Fetch(accounts=["acc1", "acc2"]))
        assert fetched.accounts["acc1"].account == active
        assert fetched.accounts["acc2"].account == _account(
            2, last_signed_in_at=T0 + timedelta(days=1))

    def test_credentials_are_replaced_and_dropped(self, storage: Storage) -> None:
        provisional = Credential("acc1", HASH, CredentialKind.PROVISIONAL, T0 + timedelta(90))
        password = Credential("acc1", OTHER_HASH, CredentialKind.PASSWORD)
        self.apply(storage, _new(1) + ChangeSet(credentials=[provisional]))
        assert self.fetch(storage, Fetch(accounts=["acc1"])).accounts["acc1"].credential == \
            provisional
        self.apply(storage, ChangeSet(credentials=[password]))
        assert self.fetch(storage, Fetch(accounts=["acc1"])).accounts["acc1"].credential == \
            password
        self.apply(storage, ChangeSet(drop_credentials=["acc1", "nobody"]))
        assert self.fetch(storage, Fetch(accounts=["acc1"])).accounts["acc1"].credential is None

    def test_a_link_keeps_the_child_as_its_letter_named_it(self, storage: Storage) -> None:
        """Rule 5: the same child id on letters of two establishments reads back twice as written.

        A pupil who moves from collège to lycée keeps the INE; each letter
        names the child as its establishment knows it.
        """
        college = _link("acc1", 7, first="Dylan")
        lycee = _link("acc2", 7, school=OTHER_SCHOOL.uai, first="Dylan-Léo")
        self.apply(storage, _new(1, 2) + ChangeSet(link=[college, lycee]))
        links = self.fetch(storage, Fetch(links=["acc1", "acc2", "nobody"])).links
        assert links == {"acc1": (college,), "acc2": (lycee,), "nobody": ()}

    def test_counters_round_trip_and_unknown_ones_read_empty(self, storage: Storage) -> None:
        state = ThrottleState("merge:claire", 3, T0, (T0 - timedelta(hours=2), T0))
        assert self.fetch(storage, Fetch(throttles=["merge:claire"])).throttles == {
            "merge:claire": ThrottleState("merge:claire")}
        self.apply(storage, ChangeSet(throttles=[state]))
        assert self.fetch(storage, Fetch(throttles=["merge:claire"])).throttles == {
            "merge:claire": state}
        self.apply(storage, ChangeSet(throttles=[ThrottleState("merge:claire")]))
        assert self.fetch(storage, Fetch(throttles=["merge:claire"])).throttles == {
            "merge:claire": ThrottleState("merge:claire")}

    def test_a_receipt_round_trips(self, storage: Storage) -> None:
        receipt = MergeReceipt("acc1", "acc2", (_child(2),), (_child(1), _child(2)))
        stored = StoredReceipt("acc1", "key-1", "parent.2", receipt)
        self.apply(storage, _new(1) + ChangeSet(receipts=[stored]))
        found = self.fetch(storage, Fetch(receipts=[("acc1", "key-1"), ("acc1", "key-2"),
                                                    ("acc2", "key-1")])).receipts
        assert found == {("acc1", "key-1"): stored}

    def test_every_event_type_round_trips_through_the_outbox(self, storage: Storage) -> None:
        events: list[Event] = [
            AccountIssued(T0, "acc1", SCHOOL.uai, "responsable", ("ine-1", "ine-2")),
            AccountActivated(T0, "acc1"),
            AccountsMerged(T0, "acc1", "acc2", ("ine-3",)),
            MergeSplit(T0, "acc1", "acc4", SCHOOL.uai, ("ine-3",)),
            PasswordChanged(T0, "acc1"),
            EmailChanged(T0 + timedelta(seconds=1), "acc1"),
            EmailChanged(T0, "acc1", "old@example.org", "new@example.org"),
            PasswordResetRequested(T0, ("acc1", "acc2"), ("b" * 32, "c" * 32)),
            PasswordResetRequested(T0, (), ()),
            PasswordReset(T0, "acc1"),
            LoginReminderRequested(T0, ()),
            EmailVerificationRequested(T0, "acc1", "new@example.org", "b" * 32),
            LetterReissued(T0, "acc1", SCHOOL.uai, None),
        ]
        self.apply(storage, ChangeSet(events=events))
        with storage.unit_of_work(write=False) as uow:
            assert [e.event for e in uow.unpublished(100)] == events

    def test_audit_records_round_trip_and_filter_by_account_or_actor(
            self, storage: Storage) -> None:
        records = [
            AuditRecord(T0, AuditAction.MERGE, "success", "acc1", "acc2", "parent.2", None),
            AuditRecord(T0, AuditAction.SPLIT, "nothing_to_split",
                        f"establishment:{SCHOOL.uai}", "acc3", None, "détail"),
            AuditRecord(T0, AuditAction.AUTHENTICATE, "invalid_credentials", None, None,
                        "x\\n", None),
        ]
        self.apply(storage, ChangeSet(audit=records))
        with storage.unit_of_work(write=False) as uow:
            assert uow.audit_records(None, 100) == records
            assert uow.audit_records(None, 2) == records[1:]
            assert uow.audit_records("acc2", 100) == [records[0]]
            assert uow.audit_records("acc1", 100) == [records[0]]
            assert uow.audit_records("nobody", 100) == []


class OrderContract(StorageHarness):
    """Rule 4: what comes back in lists, comes back in the contract's order."""

    def test_links_come_in_link_order_and_a_relinked_child_keeps_its_place(
            self, storage: Storage) -> None:
        links = [_link("acc1", 3), _link("acc1", 1, via_merge=True, at=T0 + timedelta(1)),
                 _link("acc1", 2, at=T0 + timedelta(2))]
        self.apply(storage, _new(1) + ChangeSet(link=links))
        again = attrs.evolve(links[1], via_merge=False, linked_at=T0 + timedelta(5))
        self.apply(storage, ChangeSet(link=[again], unlink=[links[0]]))
        self.apply(storage, ChangeSet(link=[links[0]]))
        assert self.fetch(storage, Fetch(links=["acc1"])).links["acc1"] == (
            again, links[2], links[0])

    def test_a_link_unlinked_and_linked_again_in_one_change_set_moves_to_the_end(
            self, storage: Storage) -> None:
        links = [_link("acc1", 1), _link("acc1", 2)]
        self.apply(storage, _new(1) + ChangeSet(link=links))
        again = attrs.evolve(links[0], via_merge=True, linked_at=T0 + timedelta(3))
        self.apply(storage, ChangeSet(unlink=[links[0]], link=[again]))
        assert self.fetch(storage, Fetch(links=["acc1"])).links["acc1"] == (links[1], again)

    def test_absorbed_accounts_come_in_the_order_they_were_absorbed_not_by_id(
            self, storage: Storage) -> None:
        self.apply(storage, _new(1, 2, 3, 4, 9))
        for n in (4, 2, 3):
            self.apply(storage, ChangeSet(accounts=[
                _account(n, status=AccountStatus.MERGED, merged_into="acc9")]))
        absorbed = self.fetch(storage, Fetch(absorbed=["acc9", "acc1"])).absorbed
        assert [a.id for a in absorbed["acc9"]] == ["acc4", "acc2", "acc3"]
        assert absorbed["acc1"] == ()
        # acc9 is absorbed into acc1, its own absorbed accounts follow it there.
        self.apply(storage, ChangeSet(accounts=[
            _account(9, status=AccountStatus.MERGED, merged_into="acc1"),
            *(_account(n, status=AccountStatus.MERGED, merged_into="acc1") for n in (4, 2, 3)),
        ]))
        absorbed = self.fetch(storage, Fetch(absorbed=["acc9", "acc1"])).absorbed
        assert [a.id for a in absorbed["acc1"]] == ["acc9", "acc4", "acc2", "acc3"]
        assert absorbed["acc9"] == ()

    def test_outbox_positions_increase_without_gaps_even_after_a_rollback(
            self, storage: Storage) -> None:
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a"),
                                              AccountActivated(T0, "b")]))
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.apply(ChangeSet(events=[AccountActivated(T0, "rolled back")]))
            raise RuntimeError
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "c")]))
        with storage.unit_of_work(write=False) as uow:
            entries = uow.unpublished(10)
        positions = [e.position for e in entries]
        assert [e.event.account_id for e in entries] == ["a", "b", "c"]  # type: ignore[attr-defined]
        assert positions == list(range(positions[0], positions[0] + 3))


class ChangeSetContract(StorageHarness):
    """Rule 3: a change set's preconditions and errors."""

    def test_a_login_or_id_in_use_raises_login_taken(self, storage: Storage) -> None:
        self.apply(storage, _new(1))
        for clash in (NewAccount(_account(2), "parent.1"),
                      NewAccount(_account(1, login="other"), "other")):
            with pytest.raises(LoginTaken), storage.unit_of_work() as uow:
                uow.apply(ChangeSet(new_accounts=[clash]))
        assert set(self.fetch(storage, Fetch(accounts=["acc1", "acc2"])).accounts) == {"acc1"}

    def test_replacing_an_account_that_is_not_stored_is_an_expectation_failure(
            self, storage: Storage) -> None:
        with pytest.raises(ExpectationFailed), storage.unit_of_work() as uow:
            uow.apply(ChangeSet(accounts=[_account(5)]))
        with pytest.raises(ExpectationFailed), storage.unit_of_work() as uow:
            uow.apply(ChangeSet(sign_ins=[SignIn("acc5", T0)]))

    @pytest.mark.parametrize("wrong", ["status", "hash", "no credential", "no account"])
    def test_a_failed_expectation_writes_nothing(self, storage: Storage, wrong: str) -> None:
        self.apply(storage, _new(1) + ChangeSet(
            credentials=[Credential("acc1", HASH, CredentialKind.PROVISIONAL, T0)]))
        expect = {
            "status": Expect("acc1", AccountStatus.ACTIVE, HASH),
            "hash": Expect("acc1", AccountStatus.PROVISIONAL, OTHER_HASH),
            "no credential": Expect("acc1", AccountStatus.PROVISIONAL, None),
            "no account": Expect("acc7", AccountStatus.PROVISIONAL, HASH),
        }[wrong]
        with pytest.raises(ExpectationFailed), storage.unit_of_work() as uow:
            uow.apply(ChangeSet(expect=[expect], establishments=[SCHOOL],
                                throttles=[ThrottleState("signin:x", 1, T0, (T0,))],
                                audit=[AuditRecord(T0, AuditAction.AUTHENTICATE, "success")]))
        fetched = self.fetch(storage, Fetch(establishments=[SCHOOL.uai], throttles=["signin:x"]))
        assert fetched.establishments == {}
        assert fetched.throttles["signin:x"] == ThrottleState("signin:x")

    def test_a_met_expectation_lets_the_change_set_through(self, storage: Storage) -> None:
        self.apply(storage, _new(1) + ChangeSet(
            credentials=[Credential("acc1", HASH, CredentialKind.PROVISIONAL, T0)]))
        self.apply(storage, ChangeSet(expect=[Expect("acc1", AccountStatus.PROVISIONAL, HASH)],
                                      sign_ins=[SignIn("acc1", T0)]))
        found = self.fetch(storage, Fetch(accounts=["acc1"])).accounts["acc1"]
        assert found.account.last_signed_in_at == T0

    def test_storage_write_applies_a_change_set_alone(self, storage: Storage) -> None:
        storage.write(_new(1) + ChangeSet(audit=[AuditRecord(T0, AuditAction.ISSUE, "success",
                                                             account_id="acc1")]))
        assert set(self.fetch(storage, Fetch(accounts=["acc1"])).accounts) == {"acc1"}
        with pytest.raises(LoginTaken):
            storage.write(_new(1))
        with storage.unit_of_work(write=False) as uow:
            assert len(uow.audit_records("acc1", 10)) == 1


class CountingContract(StorageHarness):
    """Fetch.count: one more failure, atomically with the read."""

    def test_a_counted_key_comes_back_as_before_and_is_stored_as_the_policy_counts(
            self, storage: Storage) -> None:
        policy = ThrottlePolicy()
        times = [T0 + timedelta(minutes=i) for i in range(policy.keep + 3)]
        expected: ThrottleState | None = None
        for at in times:
            with storage.unit_of_work() as uow:
                before = uow.fetch(Fetch(count=["merge:x"], at=at, keep=policy.keep)).throttles
                uow.commit()
            assert before["merge:x"] == (expected or ThrottleState("merge:x"))
            expected = policy.count(expected, "merge:x", at)
        assert self.fetch(storage, Fetch(throttles=["merge:x"])).throttles["merge:x"] == expected
        assert expected is not None and len(expected.recent) == policy.keep

    def test_a_count_is_rolled_back_with_its_unit_of_work(self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            uow.fetch(Fetch(count=["signin:y:-", "principal:p"], at=T0))
        assert self.fetch(storage, Fetch(throttles=["signin:y:-", "principal:p"])).throttles == {
            "signin:y:-": ThrottleState("signin:y:-"), "principal:p": ThrottleState("principal:p")}

    def test_a_count_needs_the_time_of_the_attempt_and_names_each_key_once(self) -> None:
        with pytest.raises(ValueError):
            Fetch(count=["merge:x"])
        with pytest.raises(ValueError):
            Fetch(count=["merge:x", "merge:x"], at=T0)
        with pytest.raises(ValueError):
            Fetch(count=["merge:x"], at=T0, keep=0)

    def test_concurrent_counts_are_all_counted_and_each_sees_its_own_before(
            self, storage: Storage) -> None:
        workers, each = 6, 5
        seen: list[int] = []
        lock = threading.Lock()

        def bump(_: int) -> None:
            for _ in range(each):
                with storage.unit_of_work() as uow:
                    before = uow.fetch(Fetch(count=["merge:shared"], at=T0)).throttles
                    time.sleep(0.001)  # a lost update would show here
                    uow.commit()
                with lock:
                    seen.append(before["merge:shared"].consecutive)

        race(workers, bump)
        state = self.fetch(storage, Fetch(throttles=["merge:shared"])).throttles["merge:shared"]
        assert state.consecutive == workers * each
        assert sorted(seen) == list(range(workers * each))

    def test_wrong_merge_attempts_at_one_login_are_throttled_across_threads(
            self, storage: Storage, clock: FakeClock) -> None:
        verifier = CountingVerifier()
        service = MergeService(storage, verifier, clock)
        letter = service.issue_account(SCHOOL, "Claire Robert", [_child(1)])
        principals = [self.family(service, f"Parent {i}", (10 + i,))[0] for i in range(10)]
        verifier.reset()
        results = race(10, lambda i: service.merge(principals[i].id, letter.login, "WRONG123"))
        codes = sorted(r.code for r in results)
        policy = service.throttle
        # Only the attempts before the back-off starts run a verification.
        assert verifier.verifications == policy.backoff_after
        assert codes.count("invalid_credentials") == policy.backoff_after
        assert codes.count("too_many_attempts") == 10 - policy.backoff_after


class RollbackContract(StorageHarness):
    """Rule 1: nothing written in a unit of work survives unless it is committed."""

    def test_an_error_inside_a_unit_of_work_rolls_back_everything(
            self, storage: Storage) -> None:
        self.apply(storage, _new(1))
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.fetch(Fetch(count=["merge:x"], at=T0))
            uow.apply(ChangeSet(
                establishments=[SCHOOL], new_accounts=[NewAccount(_account(2), "parent.2")],
                accounts=[_account(1, status=AccountStatus.ACTIVE)],
                credentials=[Credential("acc1", HASH, CredentialKind.PASSWORD)],
                link=[_link("acc1", 1)], throttles=[ThrottleState("signin:x:-", 1, T0, (T0,))],
                receipts=[StoredReceipt("acc1", "k", "x", MergeReceipt("acc1", "acc2", (), ()))],
                events=[AccountActivated(T0, "acc1")],
                audit=[AuditRecord(T0, AuditAction.ACTIVATE, "success")],
            ))
            raise RuntimeError("boom")
        fetched = self.fetch(storage, Fetch(
            establishments=[SCHOOL.uai], accounts=["acc1", "acc2"], logins=["parent.2"],
            links=["acc1"], throttles=["signin:x:-", "merge:x"], receipts=[("acc1", "k")]))
        assert fetched.establishments == {}
        assert set(fetched.accounts) == {"acc1"} and fetched.by_login == {}
        assert fetched.accounts["acc1"].account == _account(1)
        assert fetched.accounts["acc1"].credential is None
        assert fetched.links == {"acc1": ()}
        assert fetched.throttles == {"signin:x:-": ThrottleState("signin:x:-"),
                                     "merge:x": ThrottleState("merge:x")}
        assert fetched.receipts == {}
        with storage.unit_of_work(write=False) as uow:
            assert uow.unpublished(10) == []
            assert uow.audit_records(None, 10) == []

    def test_leaving_without_commit_rolls_back(self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            uow.apply(_new(1))
        assert self.fetch(storage, Fetch(accounts=["acc1"])).accounts == {}

    def test_a_unit_of_work_goes_on_after_a_commit(self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            uow.apply(_new(1))
            uow.commit()
            uow.apply(_new(2))
        assert set(self.fetch(storage, Fetch(accounts=["acc1", "acc2"])).accounts) == {"acc1"}

    def test_a_failed_merge_changes_nothing_but_counters_and_audit(
            self, service: MergeService) -> None:
        principal, (letter,) = self.family(service)
        before = (service.children(principal.id), service.get_account(letter.account_id))
        with pytest.raises(AccountMergeError) as raised:
            service.merge(principal.id, letter.login, "WRONG123")
        assert raised.value.code == "invalid_credentials"
        assert (service.children(principal.id),
                service.get_account(letter.account_id)) == before
        assert service.audit_trail(principal.id)[-1].outcome == "invalid_credentials"


class IsolationContract(StorageHarness):
    """Rule 2: concurrent units of work serialise where they share rows."""

    def test_a_locked_read_sees_the_write_committed_before_it(self, storage: Storage) -> None:
        """Two writers lock the same account; the second reads the first's change."""
        self.apply(storage, _new(1))
        first_locked = threading.Event()
        seen: list[Any] = []

        def first() -> None:
            with storage.unit_of_work() as uow:
                uow.fetch(Fetch(accounts=["acc1"], lock=True))
                first_locked.set()
                time.sleep(0.2)  # widen the window a non-locking store would leave open
                uow.apply(ChangeSet(accounts=[_account(1, status=AccountStatus.ACTIVE)]))
                uow.commit()

        def second() -> None:
            first_locked.wait(5)
            with storage.unit_of_work() as uow:
                found = uow.fetch(Fetch(accounts=["acc1"], lock=True)).accounts
                seen.append(found["acc1"].account)
                uow.commit()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert seen == [_account(1, status=AccountStatus.ACTIVE)]

    def test_a_locked_fetch_sees_everything_the_lock_holder_committed(
            self, storage: Storage) -> None:
        """Not only the locked row: the links, absorbed accounts and receipts written with it.

        A store that reads them in the snapshot taken before it waited for
        the lock would hand a merge a stale list of children.
        """
        self.apply(storage, _new(1, 2) + ChangeSet(link=[_link("acc1", 1)]))
        first_locked = threading.Event()
        seen: list[Any] = []
        receipt = StoredReceipt("acc1", "k", "parent.2", MergeReceipt("acc1", "acc2", (), ()))

        def first() -> None:
            with storage.unit_of_work() as uow:
                uow.fetch(Fetch(accounts=["acc1"], lock=True))
                first_locked.set()
                time.sleep(0.2)
                uow.apply(ChangeSet(
                    accounts=[_account(2, status=AccountStatus.MERGED, merged_into="acc1")],
                    link=[_link("acc1", 2)], receipts=[receipt]))
                uow.commit()

        def second() -> None:
            first_locked.wait(5)
            with storage.unit_of_work() as uow:
                seen.append(uow.fetch(Fetch(accounts=["acc1"], links=["acc1"],
                                            absorbed=["acc1"], receipts=[("acc1", "k")],
                                            lock=True)))
                uow.commit()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        [fetched] = seen
        assert fetched.links["acc1"] == (_link("acc1", 1), _link("acc1", 2))
        assert [a.id for a in fetched.absorbed["acc1"]] == ["acc2"]
        assert fetched.receipts == {("acc1", "k"): receipt}

    def test_a_locked_counter_loses_no_update(self, storage: Storage) -> None:
        policy = ThrottlePolicy()

        def bump(_: int) -> None:
            for _ in range(5):
                with storage.unit_of_work() as uow:
                    state = uow.fetch(Fetch(throttles=["principal:p"], lock=True)).throttles
                    time.sleep(0.001)
                    uow.apply(ChangeSet(throttles=[
                        policy.count(state["principal:p"], "principal:p", T0)]))
                    uow.commit()

        race(6, bump)
        assert self.fetch(storage, Fetch(throttles=["principal:p"])).throttles[
            "principal:p"].consecutive == 30

    def test_racing_merges_of_one_account_have_one_winner_and_lose_no_child(
            self, service: MergeService) -> None:
        for _ in range(3):
            letter = service.issue_account(SCHOOL, "Claire Robert", [_child(9)])
            principals = [self.family(service, f"Parent {i}", (10 + i,))[0] for i in range(4)]

            def attempt(i: int, principals: list[Account] = principals,
                        letter: Any = letter) -> MergeReceipt:
                return service.merge(principals[i].id, letter.login,
                                     letter.provisional_password)

            results = race(4, attempt)
            winners = [r for r in results if isinstance(r, MergeReceipt)]
            assert len(winners) == 1, results
            assert all(isinstance(r, AccountMergeError) for r in results if r not in winners)
            holder = service.resolve(letter.account_id)
            assert holder.id == winners[0].principal_id
            assert _child(9) in service.children(holder.id)
            for p in principals:
                assert _child(10 + principals.index(p)) in service.children(p.id)

    def test_mutual_merges_never_deactivate_both(self, service: MergeService) -> None:
        for round_ in range(4):
            a_letter = service.issue_account(SCHOOL, "Claire Robert", [_child(20 + round_)])
            b_letter = service.issue_account(SCHOOL, "Marc Robert", [_child(30 + round_)])
            a = service.activate(a_letter.login, a_letter.provisional_password, STRONG)
            b = service.activate(b_letter.login, b_letter.provisional_password, STRONG)
            pairs = [(a.id, b.login), (b.id, a.login)]
            race(2, lambda i: service.merge(pairs[i][0], pairs[i][1], STRONG))  # noqa: B023
            statuses = {service.get_account(x.id).status for x in (a, b)}
            assert AccountStatus.ACTIVE in statuses
            live = a if service.get_account(a.id).is_live else b
            assert {c.id for c in service.children(live.id)} == {
                f"ine-{20 + round_}", f"ine-{30 + round_}"}


class OutboxContract(StorageHarness):
    """Events come out in the order they went in; publishing marks them."""

    def test_unpublished_events_come_in_order_and_marking_removes_them(
            self, storage: Storage) -> None:
        for n in range(5):
            self.apply(storage, ChangeSet(events=[AccountActivated(T0, f"acc{n}")]))
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.apply(ChangeSet(events=[AccountActivated(T0, "rolled-back")]))
            raise RuntimeError
        with storage.unit_of_work() as uow:
            entries = uow.unpublished(3)
            assert [e.event for e in entries] == [AccountActivated(T0, f"acc{n}")
                                                  for n in range(3)]
            positions = [e.position for e in entries]
            assert positions == sorted(positions)
            assert not any(e.published for e in entries)
            uow.apply(ChangeSet(published=[positions[0], positions[2], 10**9]))
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            rest = uow.unpublished(10)
        assert [e.event.account_id for e in rest] == [  # type: ignore[attr-defined]
            "acc1", "acc3", "acc4"]

    def test_the_service_writes_one_event_per_change_in_the_same_transaction(
            self, service: MergeService) -> None:
        principal, (letter,) = self.family(service)
        service.merge(principal.id, letter.login, letter.provisional_password)
        names = [e.event.name for e in service.unpublished_events()]
        assert names == ["account_issued", "account_issued", "account_activated",
                         "accounts_merged"]


class IdempotencyContract(StorageHarness):
    """A merge retried with the same key returns the first receipt, once proven again."""

    def test_a_retry_with_the_same_key_returns_the_first_receipt_and_changes_nothing(
            self, service: MergeService) -> None:
        principal, (letter,) = self.family(service)
        first = service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        events = len(service.unpublished_events())
        again = service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        assert again == first
        assert len(service.unpublished_events()) == events
        assert service.children(principal.id) == first.children

    def test_a_retry_with_a_wrong_password_is_refused(self, service: MergeService) -> None:
        principal, (letter,) = self.family(service)
        service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        with pytest.raises(AccountMergeError) as raised:
            service.merge(principal.id, letter.login, "WRONG-PASSWORD", "k-1")
        assert raised.value.code == "invalid_credentials"

    def test_a_retry_after_a_split_does_not_list_the_children_that_left(
            self, service: MergeService) -> None:
        principal, (letter,) = self.family(service)
        service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        service.split(SCHOOL, principal.id)
        again = service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        assert again.children == service.children(principal.id) == (_child(1),)
        assert again.moved == ()

    def test_a_key_reused_for_another_login_is_refused(self, service: MergeService) -> None:
        principal, (letter, other) = self.family(service, kids=(1, 2, 3))
        service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        with pytest.raises(InvalidInput):
            service.merge(principal.id, other.login, other.provisional_password, "k-1")
        assert service.get_account(other.account_id).status is AccountStatus.PROVISIONAL


class ErrorTranslationContract(StorageHarness):
    """Driver errors come out as the library's own."""

    def test_an_unusable_backend_raises_storage_error(self) -> None:
        broken = self.make_broken_storage()
        if broken is None:
            pytest.skip("make_broken_storage() not implemented for this store")
        try:
            with pytest.raises(StorageError) as raised, broken.unit_of_work() as uow:
                uow.fetch(Fetch(accounts=["acc1"]))
            assert raised.value.code == "storage_error"
            assert raised.value.store
        finally:
            with contextlib.suppress(AccountMergeError):
                broken.close()


class HostRollbackContract(StorageHarness):
    """Rule 6: failed attempts outlive the rollback of a host's transaction."""

    def test_failed_attempts_survive_the_hosts_rollback(self, storage: Storage,
                                                        clock: FakeClock) -> None:
        service = MergeService(storage, fast_verifier(), clock)
        principal, (letter,) = self.family(service)
        hosted = self.hosted_storage(storage)
        if hosted is None:
            pytest.skip("hosted_storage() not implemented for this store")
        policy = service.throttle
        attempts = policy.backoff_after + 2
        with hosted as inside:
            in_host = MergeService(inside, fast_verifier(), clock)
            codes = []
            for _ in range(attempts):
                try:
                    in_host.merge(principal.id, letter.login, "WRONG-PASSWORD")
                except AccountMergeError as error:
                    codes.append(error.code)
        assert codes.count("invalid_credentials") == policy.backoff_after
        assert codes.count("too_many_attempts") == 2
        with pytest.raises(AccountMergeError) as raised:
            service.merge(principal.id, letter.login, letter.provisional_password)
        assert raised.value.code == "too_many_attempts"
        failures = [r for r in service.audit_trail(principal.id, limit=100)
                    if r.action is AuditAction.MERGE and r.outcome != "success"]
        assert len(failures) == attempts + 1


class StateMachineContract(StorageHarness):
    """The service against a plain model, on this store."""

    def test_the_state_machine_holds(self) -> None:
        machine = build_state_machine(self.make_storage, close=self.close_storage)
        run_state_machine_as_test(machine, settings=settings(
            max_examples=self.state_machine_examples, stateful_step_count=30, deadline=None,
            suppress_health_check=list(HealthCheck)))


class BulkLoadContract(StorageHarness):
    """Tier ``bulk_load``: many accounts in one transaction, all or none."""

    def test_bulk_rows_read_back_as_issued_accounts_and_a_clash_stores_none(
            self, storage: Storage) -> None:
        if not supports(storage, BulkLoad):
            pytest.skip("this store lacks the bulk_load tier")
        bulk: BulkLoad = require_tier(storage, BulkLoad)
        from account_merge.storage.bulk import BulkAccount  # noqa: PLC0415

        def row(n: int, login: str | None = None) -> BulkAccount:
            return BulkAccount(f"b{n}", login or f"bulk.{n}", login or f"bulk.{n}",
                               AccountStatus.PROVISIONAL, f"Parent {n}", SCHOOL.uai, T0, HASH,
                               T0 + timedelta(days=90), f"ine-b{n}", "Enfant", "Bulk")

        bulk.bulk_insert([row(1), row(2)])
        fetched = self.fetch(storage, Fetch(accounts=["b1", "b2"], links=["b1"]))
        assert fetched.accounts["b1"].account.login == "bulk.1"
        assert fetched.accounts["b1"].credential == Credential(
            "b1", HASH, CredentialKind.PROVISIONAL, T0 + timedelta(days=90))
        assert [link.child.id for link in fetched.links["b1"]] == ["ine-b1"]
        with pytest.raises(LoginTaken):
            bulk.bulk_insert([row(3), row(4, login="bulk.1")])
        assert set(self.fetch(storage, Fetch(accounts=["b3", "b4"])).accounts) == set()


# -- the way back: tiers email_index and notices -------------------------------------------
class EmailIndexContract(StorageHarness):
    """Tier ``email_index``: accounts found by the key of their address, in the unit of work."""

    @staticmethod
    def _index(storage: Storage) -> Any:
        with storage.unit_of_work() as uow:
            if not supports(uow, EmailIndex):
                pytest.skip("this store lacks the email_index tier")

    def test_accounts_are_found_by_key_whatever_their_status_in_id_order(
            self, storage: Storage) -> None:
        self._index(storage)
        self.apply(storage, _new(1, 2, 3) + ChangeSet(
            accounts=[_account(2, status=AccountStatus.ACTIVE, email="c@example.org")]))
        with storage.unit_of_work() as uow:
            index: EmailIndex = require_tier(uow, EmailIndex)
            for n in (3, 1, 2):
                index.index_email(f"acc{n}", "c@example.org")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            index = require_tier(uow, EmailIndex)
            found = index.accounts_by_email("c@example.org", 10)
            assert [r.account.id for r in found] == ["acc1", "acc2", "acc3"]
            assert found[1].account.email == "c@example.org"
            assert [r.account.id for r in index.accounts_by_email("c@example.org", 2)] == [
                "acc1", "acc2"]
            assert index.accounts_by_email("nobody@example.org", 10) == []

    def test_an_entry_is_replaced_removed_and_rolled_back(self, storage: Storage) -> None:
        self._index(storage)
        self.apply(storage, _new(1, 2))
        with storage.unit_of_work() as uow:
            index: EmailIndex = require_tier(uow, EmailIndex)
            index.index_email("acc1", "old@example.org")
            index.index_email("acc2", "old@example.org")
            uow.commit()
            index.index_email("acc1", "new@example.org")
            index.index_email("acc2", None)
            uow.commit()
            index.index_email("acc1", "rolled.back@example.org")
        with storage.unit_of_work(write=False) as uow:
            index = require_tier(uow, EmailIndex)
            assert index.accounts_by_email("old@example.org", 10) == []
            assert [r.account.id for r in index.accounts_by_email("new@example.org", 10)] == [
                "acc1"]
            assert index.accounts_by_email("rolled.back@example.org", 10) == []

    def test_a_parent_recovers_a_password_by_address_on_this_store(
            self, storage: Storage, clock: FakeClock) -> None:
        self._index(storage)
        service = MergeService(storage, fast_verifier(), clock, secret_key=_KEY, links=_LINKS)
        mailer = CapturingMailer()
        letter = service.issue_account(SCHOOL, "Claire Robert", [_child(1)])
        service.activate(letter.login, letter.provisional_password, STRONG,
                         email="claire@example.org")
        _deliver_notices_or_skip(service, storage, mailer)
        service.confirm_email(_token(mailer.last(NoticeKind.EMAIL_VERIFICATION)))
        service.request_password_reset("CLAIRE@example.org")
        service.deliver_notices(mailer)
        notice = mailer.last(NoticeKind.PASSWORD_RESET)
        assert notice.to == "claire@example.org"
        service.reset_password(_token(notice), "Tournesol-Bleu-Vif-2028")
        assert service.authenticate(letter.login, "Tournesol-Bleu-Vif-2028")


_KEY = "a secret key of the conformance suite"
_LINKS = {"password_reset": "https://ent.example/mot-de-passe/{token}",
          "email_verification": "https://ent.example/courriel/{token}"}


def _token(notice: Notice) -> str:
    assert notice.url is not None
    return notice.url.rsplit("/", 1)[1]


def _deliver_notices_or_skip(service: MergeService, storage: Storage,
                             mailer: CapturingMailer) -> None:
    with storage.unit_of_work(write=False) as uow:
        if not supports(uow, Notices):
            pytest.skip("this store lacks the notices tier")
    service.deliver_notices(mailer)


class NoticesContract(StorageHarness):
    """Tier ``notices``: the delivery state of notices, apart from the host's outbox reading."""

    @staticmethod
    def _tier(storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            if not supports(uow, Notices):
                pytest.skip("this store lacks the notices tier")

    @staticmethod
    def _state(position: int, role: str, **changes: Any) -> NoticeState:
        return attrs.evolve(NoticeState(f"{position}.{role}", position, role), **changes)

    def test_the_outbox_reads_after_a_position_published_or_not(self, storage: Storage) -> None:
        self._tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, f"acc{n}")
                                              for n in range(1, 5)]))
        self.apply(storage, ChangeSet(published=[1, 2]))
        with storage.unit_of_work(write=False) as uow:
            notices: Notices = require_tier(uow, Notices)
            assert notices.notice_cursor() == 0
            entries = notices.outbox_after(1, 2)
            assert [(e.position, e.published) for e in entries] == [(2, True), (3, False)]
            assert [e.event for e in entries] == [AccountActivated(T0, "acc2"),
                                                  AccountActivated(T0, "acc3")]
            assert notices.outbox_after(4, 10) == []

    def test_notices_are_added_once_and_the_cursor_only_rises(self, storage: Storage) -> None:
        self._tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a"),
                                              AccountActivated(T0, "b")]))
        with storage.unit_of_work() as uow:
            notices: Notices = require_tier(uow, Notices)
            notices.add_notices([self._state(2, "owner"), self._state(1, "owner"),
                                 self._state(1, "other")], 2)
            uow.commit()
            # A second delivery adds the same notices: the stored ones are left as they are.
            notices.update_notices([self._state(1, "owner", status=NoticeStatus.SENT,
                                                attempts=1, updated_at=T0)])
            notices.add_notices([self._state(1, "owner")], 1)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            notices = require_tier(uow, Notices)
            assert notices.notice_cursor() == 2
            pending = notices.pending_notices(10)
            assert [(s.id, e.position) for s, e in pending] == [("1.other", 1), ("2.owner", 2)]
            assert pending[1][1].event == AccountActivated(T0, "b")
            assert [s.id for s, _ in notices.pending_notices(1)] == ["1.other"]

    def test_states_are_updated_unknown_ones_ignored_and_all_rolled_back(
            self, storage: Storage) -> None:
        self._tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a")]))
        with storage.unit_of_work() as uow:
            notices: Notices = require_tier(uow, Notices)
            notices.add_notices([self._state(1, "owner")], 1)
            uow.commit()
            failed = self._state(1, "owner", attempts=2, updated_at=T0 + timedelta(minutes=5))
            notices.update_notices([failed, self._state(9, "ghost")])
            uow.commit()
            notices.update_notices([self._state(1, "owner", status=NoticeStatus.DROPPED)])
            notices.add_notices([self._state(1, "late")], 5)
        with storage.unit_of_work(write=False) as uow:
            notices = require_tier(uow, Notices)
            assert [s for s, _ in notices.pending_notices(10)] == [failed]
            assert notices.notice_cursor() == 1

    def test_notices_are_delivered_from_this_store(self, storage: Storage,
                                                   clock: FakeClock) -> None:
        self._tier(storage)
        service = MergeService(storage, fast_verifier(), clock, secret_key=_KEY, links=_LINKS)
        failed: list[Notice] = []

        def fail_once(notice: Notice) -> bool:
            first = not failed
            failed.append(notice)
            return first

        mailer = CapturingMailer(fail=fail_once)
        letter = service.issue_account(SCHOOL, "Claire Robert", [_child(1)])
        service.activate(letter.login, letter.provisional_password, STRONG,
                         email="claire@example.org")
        assert service.deliver_notices(mailer) == 0
        assert service.deliver_notices(mailer) == 1
        assert service.deliver_notices(mailer) == 0
        (notice,) = mailer.sent
        assert [n.id for n in failed] == [notice.id] * 2
        assert (notice.to, notice.kind) == ("claire@example.org", NoticeKind.EMAIL_VERIFICATION)
class RegisterContract(StorageHarness):
    """Tier ``register`` (:mod:`account_merge.ports.register`): the school's register."""

    @staticmethod
    def tier(uow: Any) -> Register:
        if not supports(uow, Register):
            pytest.skip("this store lacks the register tier")
        tier: Register = uow
        return tier

    def put(self, storage: Storage, changes: ChangeSet | None = None,
            register: RegisterChanges | None = None) -> None:
        with storage.unit_of_work() as uow:
            uow.apply(changes or ChangeSet())
            self.tier(uow).register_apply(register or RegisterChanges())
            uow.commit()

    def register_fetch(self, storage: Storage, request: RegisterFetch) -> RegisterFetched:
        with storage.unit_of_work(write=False) as uow:
            return self.tier(uow).register_fetch(request)

    @staticmethod
    def record(n: int, account: str, school: str = SCHOOL.uai, *kids: int,
               name: str = "Claire Robert", email: str | None = None) -> RegisterRecord:
        return RegisterRecord(school, f"R{n}", account, name, email,
                              tuple(_child(k, school) for k in kids))

    def test_records_round_trip_by_key_and_by_account_in_every_establishment(
            self, storage: Storage) -> None:
        helene = RegisterRecord(SCHOOL.uai, "294435", "acc1", "Hélène Lefèvre-Nguyễn",
                                "h@example.org", (_child(2, first="Zoé"), _child(1)))
        lycee = self.record(1, "acc1", OTHER_SCHOOL.uai, 7)
        gone = self.record(3, "acc2", SCHOOL.uai)  # listed no more: no children
        self.put(storage, register=RegisterChanges(put=[helene, lycee, gone]))
        found = self.register_fetch(storage, RegisterFetch(
            entries=[helene.key, lycee.key, gone.key, (SCHOOL.uai, "nobody")],
            accounts=["acc1", "acc2", "nobody"]))
        assert found.entries == {helene.key: helene, lycee.key: lycee, gone.key: gone}
        assert [c.id for c in helene.children] == ["ine-1", "ine-2"]  # sorted by id
        assert set(found.by_account["acc1"]) == {helene, lycee}
        assert found.by_account["acc2"] == (gone,) and found.by_account["nobody"] == ()

    def test_a_record_is_replaced_by_key_and_leaves_its_old_account(
            self, storage: Storage) -> None:
        first = self.record(1, "acc1", SCHOOL.uai, 1)
        moved = attrs.evolve(first, account_id="acc9", display_name="Claire Durand",
                             children=(_child(1), _child(3)))
        self.put(storage, register=RegisterChanges(put=[first]))
        self.put(storage, register=RegisterChanges(put=[moved]))
        found = self.register_fetch(storage, RegisterFetch(entries=[first.key],
                                                           accounts=["acc1", "acc9"]))
        assert found.entries == {first.key: moved}
        assert found.by_account == {"acc1": (), "acc9": (moved,)}
        self.put(storage, register=RegisterChanges(drop=[first.key, (SCHOOL.uai, "R404")]))
        assert self.register_fetch(storage, RegisterFetch(entries=[first.key])).entries == {}

    def test_register_writes_roll_back_with_their_unit_of_work(self, storage: Storage) -> None:
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.apply(_new(1))
            self.tier(uow).register_apply(RegisterChanges(
                put=[self.record(1, "acc1", SCHOOL.uai, 1)],
                close=[Closure("acc1", SCHOOL.uai, T0)]))
            raise RuntimeError("boom")
        found = self.register_fetch(storage, RegisterFetch(entries=[(SCHOOL.uai, "R1")],
                                                           closures=["acc1"]))
        assert found.entries == {} and found.closures == {}

    def test_a_closed_account_and_its_closure_round_trip_and_reopen(
            self, storage: Storage) -> None:
        closed = _account(1, status=AccountStatus.CLOSED)
        self.put(storage, _new(1), RegisterChanges(close=[Closure("acc1", SCHOOL.uai, T0)]))
        self.apply(storage, ChangeSet(accounts=[closed]))
        assert self.fetch(storage, Fetch(accounts=["acc1"])).accounts["acc1"].account == closed
        found = self.register_fetch(storage, RegisterFetch(closures=["acc1", "acc2"]))
        assert found.closures == {"acc1": Closure("acc1", SCHOOL.uai, T0)}
        self.put(storage, register=RegisterChanges(reopen=["acc1", "acc2"]))
        assert self.register_fetch(storage, RegisterFetch(closures=["acc1"])).closures == {}

    def test_a_pass_over_the_records_sees_each_once_a_page_at_a_time(
            self, storage: Storage) -> None:
        records = [self.record(n, f"acc{n}", SCHOOL.uai, n) for n in range(23)]
        self.put(storage, register=RegisterChanges(
            put=[*records, self.record(99, "acc99", OTHER_SCHOOL.uai, 99)]))
        seen: list[RegisterRecord] = []
        cursor: str | None = None
        pages = 0
        while True:
            with storage.unit_of_work(write=False) as uow:
                page = self.tier(uow).register_page(SCHOOL.uai, cursor, 5)
            assert len(page.items) <= 5
            seen.extend(page.items)
            pages += 1
            if pages == 2:  # a record added during the pass may or may not be seen
                self.put(storage, register=RegisterChanges(
                    put=[self.record(50, "acc50", SCHOOL.uai, 50)]))
            cursor = page.cursor
            if cursor is None:
                break
        keys = [r.key for r in seen]
        assert len(keys) == len(set(keys))
        assert set(keys) - {(SCHOOL.uai, "R50")} == {r.key for r in records}
        with storage.unit_of_work(write=False) as uow:
            assert self.tier(uow).register_page("0860404C", None, 5).items == ()

    def test_a_pass_over_linked_children_lists_the_establishments_responsables_children(
            self, storage: Storage) -> None:
        pupil = _account(9, role=Role.ELEVE)
        links = [_link(f"acc{n}", n % 7) for n in range(12)]  # children 0-6, some twice
        links += [_link("acc12", 30, school=OTHER_SCHOOL.uai), _link("acc9", 40)]
        self.apply(storage, _new(*range(13)) + ChangeSet(accounts=[pupil], link=links))
        ids: list[str] = []
        cursor: str | None = None
        while True:
            with storage.unit_of_work(write=False) as uow:
                page = self.tier(uow).linked_children_page(SCHOOL.uai, cursor, 3)
            ids.extend(page.items)
            cursor = page.cursor
            if cursor is None:
                break
        assert sorted(ids) == [f"ine-{n}" for n in range(7)]  # each once, no pupil's own
        found = self.register_fetch(storage, RegisterFetch(
            origin_links=["ine-0", "ine-30", "ine-40", "ine-99"], establishment=SCHOOL.uai))
        assert {lk.account_id for lk in found.origin_links["ine-0"]} == {"acc0", "acc7"}
        assert found.origin_links["ine-30"] == found.origin_links["ine-40"] == ()
        assert found.origin_links["ine-99"] == ()

    def test_a_sync_twice_changes_nothing_and_a_new_child_joins_the_account(
            self, service: MergeService) -> None:
        with service.storage.unit_of_work(write=False) as uow:
            self.tier(uow)
        claire = RegisterEntry("R1", "Claire Robert", [_child(1)])
        first = service.sync_register(SCHOOL, [claire], workers=1)
        assert not service.sync_register(SCHOOL, [claire], workers=1).changed
        september = service.sync_register(
            SCHOOL, [RegisterEntry("R1", "Claire Robert", [_child(1), _child(2)])], workers=1)
        account_id = first.letters[0].account_id
        assert [(c.account_id, c.child) for c in september.attached] == [
            (account_id, _child(2))]
        assert service.children(account_id) == (_child(1), _child(2))
        left = service.sync_register(SCHOOL, [RegisterEntry("R2", "Paul Martin", [_child(3)])],
                                     workers=1)
        assert [c.account_id for c in left.closed] == [account_id]
        assert service.get_account(account_id).status is AccountStatus.CLOSED


# -- retention: what is due found through indexes, deleted in bulk --------------------------
_RETENTION_KEY = "a secret key of the conformance suite"
_DAY = timedelta(days=1)
#: A policy that keeps audit records, events and counters long: what goes is what
#: deleting an account deletes, not what their own limits would.
_KEEP_THE_REST = RetentionPolicy(audit=timedelta(days=3 * 365), published_events=timedelta(
    days=3 * 365), unpublished_events=None, counters=timedelta(days=3 * 365))


def _retention_tier(storage: Storage) -> None:
    with storage.unit_of_work(write=False) as uow:
        if not supports(uow, Retention):
            pytest.skip("this store lacks the retention tier")


def _in_tier(storage: Storage, call: Callable[[Retention], Any], *, commit: bool = True) -> Any:
    """*call* on the tier of a writing unit of work, committed (or left to roll back)."""
    with storage.unit_of_work() as uow:
        result = call(require_tier(uow, Retention))
        if commit:
            uow.commit()
    return result


class RetentionContract(StorageHarness):
    """Tier ``retention``: what is due, found in pages; deleted in bulk, and nothing else.

    :meth:`test_a_purged_account_leaves_nothing_that_names_it` reads every
    row the store holds, through :meth:`StorageHarness.dump_storage` (it is
    skipped when the hook gives None), so that a table added later is
    looked at too.
    """

    # -- the tier ---------------------------------------------------------------------------
    def test_accounts_due_come_by_their_time_then_id_a_page_at_a_time(
            self, storage: Storage) -> None:
        _retention_tier(storage)

        def letter(n: int, expires: datetime) -> Credential:
            return Credential(f"acc{n}", HASH, CredentialKind.PROVISIONAL, expires)

        active = AccountStatus.ACTIVE
        self.apply(storage, _new(1, 2, 3, 4, 5) + ChangeSet(
            new_accounts=[
                NewAccount(_account(6, status=active, last_signed_in_at=T0 + _DAY), "parent.6"),
                NewAccount(_account(7, status=active, last_signed_in_at=T0), "parent.7"),
                NewAccount(_account(8, status=active), "parent.8"),
                NewAccount(_account(9, status=AccountStatus.MERGED, merged_into="acc6"),
                           "parent.9")],
            credentials=[letter(3, T0 + _DAY), letter(2, T0 + _DAY), letter(1, T0),
                         letter(4, T0 + 30 * _DAY), letter(9, T0),
                         Credential("acc5", HASH, CredentialKind.PASSWORD)]))
        with storage.unit_of_work(write=False) as uow:
            tier: Retention = require_tier(uow, Retention)
            first = tier.accounts_due(DueKind.UNACTIVATED, T0 + 2 * _DAY, None, 2)
            assert [r.account.id for r in first.records] == ["acc1", "acc2"]
            assert first.records[1].credential == letter(2, T0 + _DAY)
            assert first.after == (T0 + _DAY, "acc2")
            last = tier.accounts_due(DueKind.UNACTIVATED, T0 + 2 * _DAY, first.after, 2)
            assert [r.account.id for r in last.records] == ["acc3"]
            assert last.after is None
            unused = tier.accounts_due(DueKind.UNUSED, T0 + _DAY, None, 10)
            assert [r.account.id for r in unused.records] == ["acc7", "acc6"]
            assert [r.account.id for r in tier.accounts_due(
                DueKind.UNUSED, T0, None, 10).records] == ["acc7"]

    def test_closed_accounts_are_due_by_their_closure_then_id_a_page_at_a_time(
            self, storage: Storage) -> None:
        """Only CLOSED accounts with a closure are listed (a store without the register
        tier lists none)."""
        _retention_tier(storage)
        with storage.unit_of_work(write=False) as uow:
            if not supports(uow, Register):
                assert require_tier(uow, Retention).accounts_due(
                    DueKind.CLOSED, T0 + 365 * _DAY, None, 10) == DuePage((), None)
                return
        closed = AccountStatus.CLOSED
        self.apply(storage, _new(1, 2, 3, 4, status=closed) + _new(5, status=AccountStatus.ACTIVE)
                   + ChangeSet(credentials=[Credential("acc1", HASH, CredentialKind.PASSWORD)]))
        with storage.unit_of_work() as uow:
            require_tier(uow, Register).register_apply(RegisterChanges(close=[
                Closure("acc3", SCHOOL.uai, T0 + _DAY), Closure("acc1", SCHOOL.uai, T0 + _DAY),
                Closure("acc2", OTHER_SCHOOL.uai, T0), Closure("acc5", SCHOOL.uai, T0)]))
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            tier: Retention = require_tier(uow, Retention)
            first = tier.accounts_due(DueKind.CLOSED, T0 + _DAY, None, 2)
            assert [r.account.id for r in first.records] == ["acc2", "acc1"]
            assert first.records[1].credential == Credential("acc1", HASH,
                                                             CredentialKind.PASSWORD)
            assert first.records[0].account.status is closed
            assert first.after == (T0 + _DAY, "acc1")
            last = tier.accounts_due(DueKind.CLOSED, T0 + _DAY, first.after, 2)
            assert [r.account.id for r in last.records] == ["acc3"]
            assert last.after is None
            assert [r.account.id for r in tier.accounts_due(
                DueKind.CLOSED, T0, None, 10).records] == ["acc2"]

    def test_expired_hashes_are_erased_once_and_keep_their_expiry(self, storage: Storage) -> None:
        """An absorbed account's expired letter goes whole: nothing needs its date."""
        _retention_tier(storage)
        expiries = {1: T0, 2: T0 + _DAY, 4: T0 - _DAY, 5: T0}
        self.apply(storage, _new(1, 2, 3, 4) + ChangeSet(
            new_accounts=[NewAccount(_account(6, status=AccountStatus.ACTIVE), "parent.6"),
                          NewAccount(_account(5, status=AccountStatus.MERGED,
                                              merged_into="acc6"), "parent.5")],
            credentials=[*(Credential(f"acc{n}", HASH, CredentialKind.PROVISIONAL, at)
                           for n, at in expiries.items()),
                         Credential("acc3", HASH, CredentialKind.PASSWORD)]))
        assert _in_tier(storage, lambda tier: tier.erase_hashes(T0, 1)) == 1
        assert _in_tier(storage, lambda tier: tier.erase_hashes(T0, 10)) == 2
        assert _in_tier(storage, lambda tier: tier.erase_hashes(T0, 10)) == 0
        assert _in_tier(storage, lambda tier: tier.erase_hashes(T0 + _DAY, 10),
                        commit=False) == 1  # rolled back
        found = self.fetch(storage, Fetch(accounts=["acc1", "acc2", "acc3", "acc4",
                                                    "acc5"])).accounts
        for n in (1, 4):
            assert found[f"acc{n}"].credential == Credential(
                f"acc{n}", ERASED_HASH, CredentialKind.PROVISIONAL, expiries[n])
        assert found["acc5"].credential is None
        assert found["acc2"].credential.password_hash == HASH
        assert found["acc3"].credential.password_hash == HASH

    def test_forget_deletes_the_accounts_and_what_names_them_and_nothing_else(
            self, storage: Storage) -> None:
        _retention_tier(storage)
        claire = _account(1, status=AccountStatus.ACTIVE, email="claire@example.org")
        absorbed = _account(2, status=AccountStatus.MERGED, merged_into="acc1")
        kept = _account(3, status=AccountStatus.ACTIVE, email="marc@example.org")
        gone = forgotten([claire, absorbed])
        counters = [ThrottleState(key, 1, T0, (T0,)) for key in (
            *gone.counter_keys, "signin:parent.1:-", "signin:parent.1:a1b2",
            "signin:parent.10:-", "merge:parent.3", "principal:acc3")]
        receipt = MergeReceipt("acc1", "acc2", (_child(2),), (_child(1), _child(2)))
        split = f"establishment:{OTHER_SCHOOL.uai}"
        records = [
            AuditRecord(T0, AuditAction.AUTHENTICATE, "success", "acc1", "acc1"),
            AuditRecord(T0, AuditAction.AUTHENTICATE, "invalid_credentials", login="PARENT.1"),
            AuditRecord(T0, AuditAction.REQUEST_PASSWORD_RESET, "success",
                        login="Claire@Example.org"),
            AuditRecord(T0, AuditAction.ISSUE, "success", f"establishment:{SCHOOL.uai}",
                        "acc2", "parent.2"),
            AuditRecord(T0, AuditAction.SPLIT, "success", split, "acc3", None,
                        "new account acc1"),
            AuditRecord(T0, AuditAction.AUTHENTICATE, "invalid_credentials", login="parent.10"),
            AuditRecord(T0, AuditAction.MERGE, "success", "acc3", "acc3", "parent.3"),
        ]
        self.apply(storage, ChangeSet(
            new_accounts=[NewAccount(a, a.login) for a in (claire, absorbed, kept)],
            credentials=[Credential(i, HASH, CredentialKind.PASSWORD)
                         for i in ("acc1", "acc2", "acc3")],
            link=[_link("acc1", 1), _link("acc1", 2), _link("acc3", 2), _link("acc3", 3)],
            throttles=counters,
            receipts=[StoredReceipt("acc1", "k1", "parent.2", receipt),
                      StoredReceipt("acc3", "k2", "parent.9", receipt)],
            audit=records))
        with storage.unit_of_work() as uow:
            if supports(uow, EmailIndex):
                index: EmailIndex = require_tier(uow, EmailIndex)
                index.index_email("acc1", "claire@example.org")
                index.index_email("acc3", "marc@example.org")
                uow.commit()
        with storage.unit_of_work(write=False) as uow:
            held = require_tier(uow, Retention).held_about(gone)
        assert list(held.audit) == records[:5]  # the split's names acc1, made then
        assert {c.key for c in held.counters} == {
            *gone.counter_keys, "signin:parent.1:-", "signin:parent.1:a1b2"}
        assert list(held.receipts) == [("acc1", "k1", receipt)]

        _in_tier(storage, lambda tier: tier.forget(gone))

        fetched = self.fetch(storage, Fetch(
            accounts=["acc1", "acc2", "acc3"], logins=["parent.1", "parent.2"],
            links=["acc1", "acc3"], absorbed=["acc1"],
            throttles=[c.key for c in counters], receipts=[("acc1", "k1"), ("acc3", "k2")]))
        assert set(fetched.accounts) == {"acc3"}
        assert fetched.by_login == {}
        assert fetched.links == {"acc1": (), "acc3": (_link("acc3", 2), _link("acc3", 3))}
        assert fetched.absorbed == {"acc1": ()}
        assert {k for k, state in fetched.throttles.items() if state.consecutive} == {
            "signin:parent.10:-", "merge:parent.3", "principal:acc3"}
        assert set(fetched.receipts) == {("acc3", "k2")}
        with storage.unit_of_work(write=False) as uow:
            if supports(uow, EmailIndex):
                index = require_tier(uow, EmailIndex)
                assert index.accounts_by_email("claire@example.org", 10) == []
                assert len(index.accounts_by_email("marc@example.org", 10)) == 1
            held = require_tier(uow, Retention).held_about(gone)
            trail = uow.audit_records(None, 100)
        assert held.audit == held.counters == held.receipts == ()
        assert trail == [
            pseudonymised(records[0], SCHOOL.uai),
            pseudonymised(records[1], None),
            pseudonymised(records[2], None),
            pseudonymised(records[3], SCHOOL.uai),
            attrs.evolve(records[4], detail=f"new account {DELETED_ACCOUNT}"),
            records[5], records[6],
        ]
        assert trail[3].actor == f"establishment:{SCHOOL.uai}"
        assert trail[0].detail == f"pseudonymised; establishment {SCHOOL.uai}"

    def test_forget_is_rolled_back_with_its_unit_of_work(self, storage: Storage) -> None:
        _retention_tier(storage)
        self.apply(storage, _new(1) + ChangeSet(
            link=[_link("acc1", 1)],
            audit=[AuditRecord(T0, AuditAction.ISSUE, "success", None, "acc1", "parent.1")]))
        _in_tier(storage, lambda tier: tier.forget(forgotten([_account(1)])), commit=False)
        assert set(self.fetch(storage, Fetch(accounts=["acc1"])).accounts) == {"acc1"}
        with storage.unit_of_work(write=False) as uow:
            assert uow.audit_records("acc1", 10)[0].login == "parent.1"

    def test_audit_records_end_oldest_first_deleted_or_pseudonymised(
            self, storage: Storage) -> None:
        _retention_tier(storage)
        records = [
            AuditRecord(T0, AuditAction.SPLIT, "nothing_to_split",
                        f"establishment:{SCHOOL.uai}"),
            AuditRecord(T0 + _DAY, AuditAction.AUTHENTICATE, "success", "acc1", "acc1"),
            AuditRecord(T0 + 2 * _DAY, AuditAction.AUTHENTICATE, "invalid_credentials",
                        login="parent.1"),
            AuditRecord(T0 + 3 * _DAY, AuditAction.AUTHENTICATE, "success", "acc1", "acc1"),
        ]
        self.apply(storage, _new(1) + ChangeSet(audit=records))
        before = T0 + 3 * _DAY
        assert _in_tier(storage, lambda t: t.end_audit(before, 1, pseudonymise=True)) == 1
        with storage.unit_of_work(write=False) as uow:  # the oldest that names someone first
            assert uow.audit_records(None, 10)[1:3] == [pseudonymised(records[1], SCHOOL.uai),
                                                        records[2]]
        assert _in_tier(storage, lambda t: t.end_audit(before, 10, pseudonymise=True)) == 1
        assert _in_tier(storage, lambda t: t.end_audit(before, 10, pseudonymise=True)) == 0
        pseudonymous = [records[0], pseudonymised(records[1], SCHOOL.uai),
                        pseudonymised(records[2], None), records[3]]
        with storage.unit_of_work(write=False) as uow:
            assert uow.audit_records(None, 10) == pseudonymous
        assert _in_tier(storage, lambda t: t.end_audit(before, 2, pseudonymise=False)) == 2
        with storage.unit_of_work(write=False) as uow:
            assert uow.audit_records(None, 10) == pseudonymous[2:]
        assert _in_tier(storage, lambda t: t.end_audit(before, 10, pseudonymise=False)) == 1
        with storage.unit_of_work(write=False) as uow:
            assert uow.audit_records(None, 10) == records[3:]

    def test_the_outbox_is_read_by_position_and_a_deleted_position_is_never_given_again(
            self, storage: Storage) -> None:
        _retention_tier(storage)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, f"a{n}")
                                              for n in range(1, 6)]))
        with storage.unit_of_work(write=False) as uow:
            first = uow.unpublished(1)[0].position
        positions = list(range(first, first + 5))
        self.apply(storage, ChangeSet(published=positions[1:3]))
        with storage.unit_of_work(write=False) as uow:
            tier: Retention = require_tier(uow, Retention)
            assert [e.position for e in tier.outbox_page(0, 10)] == positions
            assert [e.position for e in tier.outbox_page(0, 10, published=True)] == \
                positions[1:3]
            assert [e.position for e in tier.outbox_page(0, 10, published=False)] == [
                positions[0], *positions[3:]]
            page = tier.outbox_page(positions[1], 2)
            assert [(e.position, e.event) for e in page] == [
                (positions[2], AccountActivated(T0, "a3")),
                (positions[3], AccountActivated(T0, "a4"))]
        with storage.unit_of_work() as uow:
            notices = supports(uow, Notices)
            if notices:
                tier_notices: Notices = require_tier(uow, Notices)
                tier_notices.add_notices([
                    NoticeState(f"{positions[3]}.owner", positions[3], "owner"),
                    NoticeState(f"{positions[2]}.owner", positions[2], "owner",
                                NoticeStatus.SENT)], positions[-1])
                uow.commit()
        assert _in_tier(storage, lambda t: t.delete_outbox(
            [positions[2], positions[3], positions[4], 10**9])) == (2 if notices else 3)
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a6")]))
        with storage.unit_of_work(write=False) as uow:
            left = require_tier(uow, Retention).outbox_page(0, 10)
            if notices:
                pending = require_tier(uow, Notices).pending_notices(10)
                assert [s.position for s, _ in pending] == [positions[3]]
        assert [e.position for e in left] == [
            *positions[:2], *([positions[3]] if notices else []), positions[4] + 1]
        everything = [e.position for e in left]
        self.apply(storage, ChangeSet(published=everything))
        with storage.unit_of_work() as uow:
            if notices:
                require_tier(uow, Notices).update_notices([NoticeState(
                    f"{positions[3]}.owner", positions[3], "owner", NoticeStatus.SENT)])
            require_tier(uow, Retention).delete_outbox(everything)
            uow.commit()
        self.apply(storage, ChangeSet(events=[AccountActivated(T0, "a7")]))
        with storage.unit_of_work(write=False) as uow:
            assert [e.position for e in uow.unpublished(10)] == [positions[4] + 2]

    def test_counters_at_rest_are_deleted(self, storage: Storage) -> None:
        _retention_tier(storage)
        old, recent = T0 - 31 * _DAY, T0 - _DAY
        self.apply(storage, ChangeSet(throttles=[
            ThrottleState("signin:old:-", 3, old, (old,)),
            ThrottleState("signin:older:-", 1, old - _DAY, (old - _DAY,)),
            ThrottleState("signin:recent:-", 1, recent, (recent,)),
            ThrottleState("signin:cleared:-")]))
        assert _in_tier(storage, lambda t: t.delete_counters(T0 - 30 * _DAY, 2)) == 2
        assert _in_tier(storage, lambda t: t.delete_counters(T0 - 30 * _DAY, 10)) == 1
        keys = ["signin:old:-", "signin:older:-", "signin:recent:-", "signin:cleared:-"]
        found = self.fetch(storage, Fetch(throttles=keys)).throttles
        assert [k for k in keys if found[k].consecutive] == ["signin:recent:-"]

    # -- the purge on this store --------------------------------------------------------------
    def _service(self, storage: Storage, clock: FakeClock,
                 retention: RetentionPolicy | None = None) -> MergeService:
        made = MergeService(storage, fast_verifier(), clock, secret_key=_RETENTION_KEY,
                            links=_LINKS, retention=retention)
        for school in (SCHOOL, OTHER_SCHOOL):
            made.register_establishment(school)
        return made

    def test_a_purge_deletes_each_account_when_the_policy_says(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock)
        never = service.issue_account(SCHOOL, "Paul Martin", [_child(1)])
        used_once = self.family(service, "Inès Durand", kids=(2,))[0]
        principal, (letter,) = self.family(service, "Claire Robert", kids=(3, 4))
        service.merge(principal.id, letter.login, letter.provisional_password)
        clock.advance(days=89)
        service.authenticate(principal.login, STRONG)
        assert service.purge().accounts == 0
        clock.advance(days=1)  # the letters expire: 90 days after their issue
        report = service.purge()
        assert report.deleted == {"unactivated": 1}
        assert report.account_ids == (never.account_id,)
        assert report.erased_hashes == 2  # the letter never used, and the merged one's
        with pytest.raises(AccountMergeError):
            service.get_account(never.account_id)
        clock.set(T0 + 365 * _DAY - timedelta(seconds=1))
        assert service.purge().accounts == 0
        clock.set(T0 + 365 * _DAY)  # used_once signed in last at its activation
        assert service.purge().deleted == {"unused": 1}
        assert service.resolve(letter.account_id).id == principal.id  # the redirect stays
        clock.set(T0 + (89 + 365) * _DAY)
        report = service.purge()
        assert report.deleted == {"unused": 1, "absorbed": 1}
        assert set(report.account_ids) == {principal.id, letter.account_id}
        for gone in (used_once.id, principal.id, letter.account_id):
            with pytest.raises(AccountMergeError):
                service.get_account(gone)
        assert service.purge().accounts == 0

    def test_a_dry_run_reports_what_the_purge_deletes_and_changes_nothing(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock)
        letters = [service.issue_account(SCHOOL, f"Parent Numéro {n}", [_child(n)])
                   for n in range(1, 4)]
        principal = self.family(service, kids=(4,))[0]
        service.merge(principal.id, letters[0].login, letters[0].provisional_password)
        clock.advance(days=400)
        before = self.dump_storage(storage)
        dry = service.purge(dry_run=True)
        assert dry.dry_run
        if before is not None:
            assert self.dump_storage(storage) == before
        assert service.get_account(letters[1].account_id)
        done = service.purge()
        assert attrs.evolve(dry, dry_run=False) == done
        assert done.deleted == {"unactivated": 2, "unused": 1, "absorbed": 1}

    def test_two_purges_at_once_delete_each_account_once(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock, RetentionPolicy(batch=2))
        ids = [service.issue_account(SCHOOL, f"Parent Numéro {n}", [_child(n)]).account_id
               for n in range(1, 8)]
        clock.advance(days=91)
        reports = race(2, lambda _: service.purge(), catch=())
        assert sorted(i for r in reports for i in r.account_ids) == sorted(ids), reports
        assert service.purge().accounts == 0

    def test_the_parents_data_lists_everything_the_store_holds_about_the_account(
            self, storage: Storage, clock: FakeClock) -> None:
        _retention_tier(storage)
        service = self._service(storage, clock)
        principal, (letter,) = self.family(service, kids=(1, 2))
        service.authenticate(principal.login, STRONG, client="203.0.113.7")
        with contextlib.suppress(AccountMergeError):
            service.authenticate(principal.login.upper(), "WRONG-password-1", client="x")
        service.merge(principal.id, letter.login, letter.provisional_password, "idem-1")
        data = service.export_personal_data(principal.id)
        assert json.loads(json.dumps(data)) == data
        assert data["format"] == "account_merge.personal_data/1"
        assert data["account"]["login"] == principal.login
        assert data["credential"] == {"kind": "password", "expires_at": None,
                                      "letter_issued_at": None}
        assert [c["id"] for c in data["children"]] == ["ine-1", "ine-2"]
        assert data["children"][1]["origin_account_id"] == letter.account_id
        assert [a["id"] for a in data["absorbed_accounts"]] == [letter.account_id]
        assert data["establishments"] == {SCHOOL.uai: SCHOOL.name}
        actions = [(r["action"], r["outcome"]) for r in data["audit"]]
        assert ("activate", "success") in actions
        assert ("authenticate", "invalid_credentials") in actions  # found by the login typed
        assert ("merge", "success") in actions
        assert {c["key"].split(":")[0] for c in data["counters"]} <= {"signin", "principal"}
        assert [c["consecutive"] for c in data["counters"] if c["consecutive"]] == [1]
        assert data["merge_receipts"][0]["idempotency_key"] == "idem-1"
        assert [e["name"] for e in data["events"]] == [
            "account_issued", "account_activated", "accounts_merged"]
        absorbed = service.export_personal_data(letter.account_id)
        assert absorbed["account"]["merged_into"] == principal.id
        assert absorbed["credential"]["kind"] == "provisional"

    def _register_or_skip(self, storage: Storage) -> None:
        _retention_tier(storage)
        with storage.unit_of_work(write=False) as uow:
            if not supports(uow, Register):
                pytest.skip("this store lacks the register tier")

    def test_a_closed_account_goes_three_months_after_its_closure_and_its_entry_is_new_again(
            self, storage: Storage, clock: FakeClock) -> None:
        """The export lists the register entries and the closure; the purge deletes the
        closed account with its records and closure; listed again, the responsable gets
        a new letter."""
        self._register_or_skip(storage)
        service = self._service(storage, clock)
        helene = RegisterEntry("PERSONNE-4242", "Hélène Lefèvre", [_child(1)],
                               email="helene@example.org")
        marc = RegisterEntry("PERSONNE-77", "Marc Martin", [_child(2)])
        letters = {l.display_name: l for l in service.sync_register(
            SCHOOL, [helene, marc], workers=1).letters}
        for letter in letters.values():
            service.activate(letter.login, letter.provisional_password, STRONG)
        account_id = letters["Hélène Lefèvre"].account_id
        data = service.export_personal_data(account_id)
        assert data["register"] == [{
            "establishment_uai": SCHOOL.uai, "external_id": "PERSONNE-4242",
            "account_id": account_id, "display_name": "Hélène Lefèvre",
            "email": "helene@example.org", "children": [{
                "id": "ine-1", "first_name": "Enfant1", "last_name": "Robert",
                "establishment_uai": SCHOOL.uai}]}]
        assert data["closure"] is None
        clock.advance(days=10)
        closed_at = clock()
        assert [c.account_id for c in service.sync_register(
            SCHOOL, [marc], workers=1).closed] == [account_id]
        data = service.export_personal_data(account_id)
        assert data["closure"] == {"establishment_uai": SCHOOL.uai,
                                   "closed_at": closed_at.isoformat()}
        assert data["register"][0]["children"] == []
        assert json.loads(json.dumps(data)) == data
        clock.advance(days=90, seconds=-1)
        assert service.purge().accounts == 0
        clock.advance(seconds=1)  # 90 days after the closure
        report = service.purge()
        assert report.deleted == {"closed": 1}
        assert report.account_ids == (account_id,)
        purged = [e.event for e in service.unpublished_events(1000)
                  if isinstance(e.event, AccountPurged)]
        assert [(e.reason, e.establishment_uai) for e in purged] == [("closed", SCHOOL.uai)]
        with pytest.raises(AccountNotFound):
            service.get_account(account_id)
        with storage.unit_of_work(write=False) as uow:
            found = require_tier(uow, Register).register_fetch(RegisterFetch(
                entries=[(SCHOOL.uai, "PERSONNE-4242")], accounts=[account_id],
                closures=[account_id]))
        assert found.entries == {} and found.by_account == {account_id: ()}
        assert found.closures == {}
        again = service.sync_register(SCHOOL, [helene, marc], workers=1)
        assert [(i.external_id, i.letter is not None) for i in again.issued] == [
            ("PERSONNE-4242", True)]
        assert again.letters[0].account_id != account_id
        assert service.purge().accounts == 0

    def test_a_due_account_holding_an_enrolled_childs_only_link_is_kept(
            self, storage: Storage, clock: FakeClock) -> None:
        """A never-activated letter goes when another account holds its children, and
        stays while it holds the only link of a child the register lists."""
        self._register_or_skip(storage)
        service = self._service(storage, clock)
        entries = [RegisterEntry("R1", "Claire Robert", [_child(1)]),
                   RegisterEntry("R2", "Marc Robert", [_child(1), _child(2)]),
                   RegisterEntry("R3", "Paul Martin", [_child(3)])]
        letters = {l.display_name: l for l in service.sync_register(
            SCHOOL, entries, workers=1).letters}
        marc = letters["Marc Robert"]
        service.activate(marc.login, marc.provisional_password, STRONG)
        clock.advance(days=91)
        dry = service.purge(dry_run=True)
        report = service.purge()
        assert attrs.evolve(dry, dry_run=False) == report
        assert report.deleted == {"unactivated": 1}
        assert report.account_ids == (letters["Claire Robert"].account_id,)
        assert report.kept_for_children == 1
        assert service.children(letters["Paul Martin"].account_id) == (_child(3),)
        again = service.sync_register(SCHOOL, entries, workers=1)
        assert [i.external_id for i in again.issued] == ["R1"]
        assert [c.id for c in service.children(again.letters[0].account_id)] == ["ine-1"]

    def test_a_purged_accounts_register_entries_leave_nothing_that_names_it(
            self, storage: Storage, clock: FakeClock) -> None:
        """The register's records, closures and indexes are searched too."""
        self._register_or_skip(storage)
        if self.dump_storage(storage) is None:
            pytest.skip("dump_storage() not implemented for this store")
        service = self._service(storage, clock, _KEEP_THE_REST)
        helene = RegisterEntry("PERSONNE-4242", "Hélène Lefèvre", [_child(1)],
                               email="helene@example.org")
        marc = RegisterEntry("PERSONNE-77", "Marc Martin", [_child(2)])
        letters = {l.display_name: l for l in service.sync_register(
            SCHOOL, [helene, marc], workers=1).letters}
        for letter in letters.values():
            service.activate(letter.login, letter.provisional_password, STRONG)
        gone = letters["Hélène Lefèvre"]
        service.sync_register(SCHOOL, [helene, marc], workers=1)  # nothing changes
        clock.advance(days=10)
        service.sync_register(SCHOOL, [marc], workers=1)  # closes Hélène's account
        names = [gone.account_id, gone.login, "Hélène Lefèvre", "helene@example.org",
                 "PERSONNE-4242"]
        before = self.dump_storage(storage)
        assert before is not None
        assert all(name.casefold() in before.casefold() for name in names)
        clock.advance(days=90)
        assert service.purge().deleted == {"closed": 1}
        after = self.dump_storage(storage)
        assert after is not None
        left = [name for name in names if name.casefold() in after.casefold()]
        assert not left, f"{left} still in the store:\n{after}"
        for kept in (letters["Marc Martin"].account_id, "Marc Martin", "PERSONNE-77"):
            assert kept.casefold() in after.casefold()

    def test_a_purged_account_leaves_nothing_that_names_it(
            self, storage: Storage, clock: FakeClock) -> None:
        """After a purge no row holds the deleted accounts' ids, logins, names or address.

        The parent's history touches every table: a letter given with an
        address, activation, the address confirmed, sign-ins right and
        wrong from two clients, the way back's requests, notices sent, a
        merge with an idempotency key, a failed merge, a split by another
        school (whose new account is never activated), events published or
        not.  Audit records, events and counters are kept long here, so
        that what goes is what deleting the accounts deletes.  Only
        pseudonymised audit records remain.
        """
        _retention_tier(storage)
        if self.dump_storage(storage) is None:
            pytest.skip("dump_storage() not implemented for this store")
        service = self._service(storage, clock, _KEEP_THE_REST)
        mailer = CapturingMailer()
        first = service.issue_account(SCHOOL, "Claire Robert", [_child(1, first="Dylan")],
                                      email="Claire.Robert@Example.org")
        service.activate(first.login, first.provisional_password, STRONG)
        _deliver_notices_or_skip(service, storage, mailer)
        link = _token(mailer.last(NoticeKind.EMAIL_VERIFICATION))
        service.confirm_email(link)
        second = service.issue_account(SCHOOL, "Claire Robert", [_child(2, first="Florian")])
        lycee = service.issue_account(OTHER_SCHOOL, "Claire Robert",
                                      [_child(3, OTHER_SCHOOL.uai, first="Lucie")])
        for login, client in ((first.login, None), (first.login.upper(), "198.51.100.4")):
            with contextlib.suppress(AccountMergeError):
                service.authenticate(login, "Wrong-Password-2026", client=client)
        service.authenticate(first.login, STRONG, client="198.51.100.4")
        with contextlib.suppress(AccountMergeError):
            service.merge(first.account_id, second.login, "WRONGPW9")
        service.merge(first.account_id, second.login, second.provisional_password, "idem")
        service.merge(first.account_id, lycee.login, lycee.provisional_password)
        service.request_password_reset("claire.robert@example.org", client="198.51.100.4")
        service.request_login_reminder("CLAIRE.ROBERT@EXAMPLE.ORG")
        service.deliver_notices(mailer)
        split = service.split(OTHER_SCHOOL, first.account_id)
        service.mark_published([e.position for e in service.unpublished_events(3)])
        marc = self.family(service, "Marc Martin", kids=(9,))[0]
        names = [first.account_id, second.account_id, lycee.account_id,
                 split.new_account_id, first.login, second.login, lycee.login,
                 split.letter.login, "Claire Robert", "claire.robert@example.org",
                 "Dylan", "Florian", "Lucie", "ine-1", "ine-2", "ine-3"]
        before = self.dump_storage(storage)
        assert before is not None
        assert all(name.casefold() in before.casefold() for name in names)
        # Never stored at all: the client's address (a digest only), the links' tokens.
        assert "198.51.100.4" not in before and link not in before

        clock.advance(days=91)  # the split's letter is never used
        service.authenticate(marc.login, STRONG)
        assert service.purge().deleted == {"unactivated": 1}
        clock.advance(days=365)  # the principal is not used for a year
        service.authenticate(marc.login, STRONG)
        assert service.purge().deleted == {"unused": 1, "absorbed": 2}

        after = self.dump_storage(storage)
        assert after is not None
        left = [name for name in names if name.casefold() in after.casefold()]
        assert not left, f"{left} still in the store:\n{after}"
        for kept in (marc.id, marc.login, "Marc Martin", "ine-9"):
            assert kept.casefold() in after.casefold()
        with storage.unit_of_work(write=False) as uow:
            trail = uow.audit_records(None, 1000)
        merges = [r for r in trail if r.action is AuditAction.MERGE and r.outcome == "success"]
        # Each keeps the establishment of the account it was about (the absorbed one).
        assert sorted(r.detail or "" for r in merges) == [
            f"pseudonymised; establishment {SCHOOL.uai}",
            f"pseudonymised; establishment {OTHER_SCHOOL.uai}"]


class StorageContract(
    RoundTripContract,
    OrderContract,
    ChangeSetContract,
    CountingContract,
    RollbackContract,
    IsolationContract,
    OutboxContract,
    IdempotencyContract,
    ErrorTranslationContract,
    HostRollbackContract,
    StateMachineContract,
    BulkLoadContract,
    EmailIndexContract,
    NoticesContract,
    RegisterContract,
    RetentionContract,
):
    """The whole storage contract (core tier and every optional tier)."""
