"""Core tier, what a store keeps and gives back: round trip of every aggregate,
the order of what lists return, a change set's preconditions and errors, and
counting failed attempts.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import attrs
import pytest

from account_merge.domain.account import AccountStatus, Credential, CredentialKind
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import (
    AccountActivated,
    AccountIssued,
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
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottlePolicy, ThrottleState
from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.storage import (
    ChangeSet,
    Expect,
    Fetch,
    NewAccount,
    SignIn,
    Storage,
    StoredReceipt,
)
from account_merge.service import MergeService
from account_merge.testing import CountingVerifier, FakeClock, race
from account_merge.testing.conformance.harness import (
    HASH,
    OTHER_HASH,
    OTHER_SCHOOL,
    SCHOOL,
    T0,
    StorageHarness,
    _account,
    _child,
    _link,
    _new,
)


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
