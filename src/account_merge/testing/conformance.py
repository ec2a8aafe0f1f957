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
skipped), and the class attribute ``state_machine_examples``.

What the contract covers: round trip of every aggregate; rollback of
everything on an error inside a unit of work; isolation between threads
(reads under lock see committed writes, racing merges have one winner and
lose no child, mutual merges never deactivate both); outbox order and
publish marking; failed-attempt counters exact under concurrent
increments; idempotency keys; translation of driver errors; and the
Hypothesis state machine of :mod:`account_merge.testing.state_machine`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
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
    AccountsMerged,
    EmailChanged,
    Event,
    MergeSplit,
    PasswordChanged,
)
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottlePolicy, ThrottleState
from account_merge.exceptions import AccountMergeError, InvalidInput, StorageError
from account_merge.ports import LoginTaken, Storage, StoredReceipt
from account_merge.service import MergeService
from account_merge.testing import (
    CountingVerifier,
    FakeClock,
    fast_verifier,
    make_establishment,
    race,
)
from account_merge.testing.state_machine import build_state_machine

__all__ = [
    "ErrorTranslationContract",
    "IdempotencyContract",
    "IsolationContract",
    "OutboxContract",
    "RollbackContract",
    "RoundTripContract",
    "StateMachineContract",
    "StorageContract",
    "StorageHarness",
    "ThrottleCounterContract",
]

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
OTHER_SCHOOL = make_establishment(860002, "Lycée Camille Guérin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"


def _account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent Numéro {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def _child(n: int, school: str = SCHOOL.uai) -> Child:
    return Child(f"ine-{n}", f"Enfant{n}", "Robert", school)


def _link(account_id: str, n: int, *, via_merge: bool = False, at: datetime = T0) -> ChildLink:
    return ChildLink(account_id=account_id, child=_child(n), origin_account_id=account_id,
                     origin_establishment_uai=SCHOOL.uai, via_merge=via_merge, linked_at=at)


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
    def family(service: MergeService, name: str = "Claire Robert",
               kids: tuple[int, ...] = (1, 2)) -> tuple[Account, list[Any]]:
        """An activated principal and one more letter per extra child."""
        letters = [service.issue_account(SCHOOL, name, [_child(k)]) for k in kids]
        principal = service.activate(letters[0].login, letters[0].provisional_password, STRONG)
        return principal, letters[1:]


class RoundTripContract(StorageHarness):
    """Every aggregate comes back as it was stored."""

    def test_an_establishment_round_trips_and_its_name_can_change(self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            assert uow.get_establishment(SCHOOL.uai) is None
            uow.put_establishment(SCHOOL)
            uow.commit()
        renamed = attrs.evolve(SCHOOL, name="Collège Jean Moulin (Poitiers)")
        with storage.unit_of_work() as uow:
            assert uow.get_establishment(SCHOOL.uai) == SCHOOL
            uow.put_establishment(renamed)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_establishment(SCHOOL.uai) == renamed

    def test_an_account_round_trips_with_every_field(self, storage: Storage) -> None:
        account = _account(1, email="claire@example.org")
        with storage.unit_of_work() as uow:
            uow.add_account(account, "parent.1")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_account("acc1") == account
            assert uow.get_account_id_by_login("parent.1") == "acc1"
            assert uow.get_account_id_by_login("nobody") is None
            assert uow.get_account("nobody") is None

    def test_an_updated_account_and_the_merged_into_index_round_trip(
            self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            for n in (1, 2, 3):
                uow.add_account(_account(n), f"parent.{n}")
            uow.commit()
        merged = _account(2, status=AccountStatus.MERGED, merged_into="acc1")
        with storage.unit_of_work() as uow:
            uow.update_account(_account(1, status=AccountStatus.ACTIVE))
            uow.update_account(merged)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_account("acc1") == _account(1, status=AccountStatus.ACTIVE)
            assert uow.accounts_merged_into("acc1") == [merged]
            assert uow.accounts_merged_into("acc3") == []
            assert uow.lock_accounts(["acc3", "acc1", "nobody"]) == {
                "acc1": _account(1, status=AccountStatus.ACTIVE), "acc3": _account(3)}

    def test_a_duplicate_login_raises_login_taken_and_the_unit_of_work_goes_on(
            self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
            with pytest.raises(LoginTaken):
                uow.add_account(_account(2), "parent.1")
            uow.add_account(_account(3), "parent.3")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_account("acc2") is None
            assert uow.get_account("acc3") == _account(3)

    def test_credentials_round_trip_replace_and_delete(self, storage: Storage) -> None:
        provisional = Credential("acc1", "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA",
                                 CredentialKind.PROVISIONAL, T0 + timedelta(days=90))
        password = Credential("acc1", "$argon2id$v=19$m=8,t=1,p=1$c2FsdDI$aGFzaDI",
                              CredentialKind.PASSWORD)
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
            uow.put_credential(provisional)
            uow.commit()
        with storage.unit_of_work() as uow:
            assert uow.get_credential("acc1") == provisional
            uow.put_credential(password)
            uow.commit()
        with storage.unit_of_work() as uow:
            assert uow.get_credential("acc1") == password
            uow.delete_credential("acc1")
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_credential("acc1") is None

    def test_links_keep_their_order_origin_and_flag(self, storage: Storage) -> None:
        links = [_link("acc1", 3), _link("acc1", 1, via_merge=True, at=T0 + timedelta(1)),
                 _link("acc1", 2, at=T0 + timedelta(2))]
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
            uow.add_account(_account(2), "parent.2")
            uow.add_links(links)
            uow.add_links([_link("acc2", 1)])
            uow.commit()
        with storage.unit_of_work() as uow:
            assert uow.links("acc1") == links
            assert uow.links("acc2") == [_link("acc2", 1)]
            uow.remove_links([links[1]])
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.links("acc1") == [links[0], links[2]]
            assert uow.links("nobody") == []

    def test_throttle_state_round_trips(self, storage: Storage) -> None:
        state = ThrottleState("login:claire", 3, T0, (T0 - timedelta(hours=2), T0))
        with storage.unit_of_work() as uow:
            assert uow.get_throttle("login:claire") is None
            uow.put_throttle(state)
            uow.commit()
        with storage.unit_of_work() as uow:
            assert uow.get_throttle("login:claire") == state
            uow.put_throttle(ThrottleState("login:claire"))
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_throttle("login:claire") == ThrottleState("login:claire")

    def test_a_receipt_round_trips(self, storage: Storage) -> None:
        receipt = MergeReceipt("acc1", "acc2", (_child(2),), (_child(1), _child(2)))
        stored = StoredReceipt("acc1", "key-1", "parent.2", receipt)
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
            uow.put_receipt(stored)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_receipt("acc1", "key-1") == stored
            assert uow.get_receipt("acc1", "key-2") is None
            assert uow.get_receipt("acc2", "key-1") is None

    def test_every_event_type_round_trips_through_the_outbox(self, storage: Storage) -> None:
        events: list[Event] = [
            AccountIssued(T0, "acc1", SCHOOL.uai, "responsable", ("ine-1", "ine-2")),
            AccountActivated(T0, "acc1"),
            AccountsMerged(T0, "acc1", "acc2", ("ine-3",)),
            MergeSplit(T0, "acc1", "acc4", SCHOOL.uai, ("ine-3",)),
            PasswordChanged(T0, "acc1"),
            EmailChanged(T0 + timedelta(seconds=1), "acc1"),
        ]
        with storage.unit_of_work() as uow:
            for event in events:
                uow.append_event(event)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert [e.event for e in uow.unpublished(100)] == events

    def test_audit_records_round_trip_and_filter_by_account(self, storage: Storage) -> None:
        records = [
            AuditRecord(T0, AuditAction.MERGE, "success", "acc1", "acc2", "parent.2", None),
            AuditRecord(T0, AuditAction.SPLIT, "nothing_to_split",
                        f"establishment:{SCHOOL.uai}", "acc3", None, "détail"),
            AuditRecord(T0, AuditAction.AUTHENTICATE, "invalid_credentials", None, None,
                        "x\\n", None),
        ]
        with storage.unit_of_work() as uow:
            for record in records:
                uow.append_audit(record)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            assert uow.audit_records(None, 100) == records
            assert uow.audit_records(None, 2) == records[1:]
            assert uow.audit_records("acc2", 100) == [records[0]]
            assert uow.audit_records("acc1", 100) == [records[0]]


class RollbackContract(StorageHarness):
    """Nothing written in a unit of work survives unless it is committed."""

    def test_an_error_inside_a_unit_of_work_rolls_back_everything(
            self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
            uow.commit()
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.put_establishment(SCHOOL)
            uow.add_account(_account(2), "parent.2")
            uow.update_account(_account(1, status=AccountStatus.ACTIVE))
            uow.put_credential(Credential("acc1", "h", CredentialKind.PASSWORD))
            uow.add_links([_link("acc1", 1)])
            uow.put_throttle(ThrottleState("login:x", 1, T0, (T0,)))
            uow.append_event(AccountActivated(T0, "acc1"))
            uow.append_audit(AuditRecord(T0, AuditAction.ACTIVATE, "success"))
            uow.put_receipt(StoredReceipt("acc1", "k", "x", MergeReceipt("acc1", "acc2", (), ())))
            raise RuntimeError("boom")
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_establishment(SCHOOL.uai) is None
            assert uow.get_account("acc2") is None
            assert uow.get_account_id_by_login("parent.2") is None
            assert uow.get_account("acc1") == _account(1)
            assert uow.get_credential("acc1") is None
            assert uow.links("acc1") == []
            assert uow.get_throttle("login:x") is None
            assert uow.unpublished(10) == []
            assert uow.audit_records(None, 10) == []
            assert uow.get_receipt("acc1", "k") is None

    def test_leaving_without_commit_rolls_back(self, storage: Storage) -> None:
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
        with storage.unit_of_work(write=False) as uow:
            assert uow.get_account("acc1") is None

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
    """Concurrent units of work serialise where they share rows."""

    def test_a_locked_read_sees_the_write_committed_before_it(self, storage: Storage) -> None:
        """Two writers lock the same account; the second reads the first's change."""
        with storage.unit_of_work() as uow:
            uow.add_account(_account(1), "parent.1")
            uow.commit()
        first_locked = threading.Event()
        seen: list[Account | None] = []

        def first() -> None:
            with storage.unit_of_work() as uow:
                uow.lock_accounts(["acc1"])
                first_locked.set()
                time.sleep(0.2)  # widen the window a non-locking store would leave open
                uow.update_account(_account(1, status=AccountStatus.ACTIVE))
                uow.commit()

        def second() -> None:
            first_locked.wait(5)
            with storage.unit_of_work() as uow:
                seen.append(uow.lock_accounts(["acc1"]).get("acc1"))
                uow.commit()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert seen == [_account(1, status=AccountStatus.ACTIVE)]

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
            with storage.unit_of_work() as uow:
                uow.append_event(AccountActivated(T0, f"acc{n}"))
                uow.commit()
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.append_event(AccountActivated(T0, "rolled-back"))
            raise RuntimeError
        with storage.unit_of_work() as uow:
            entries = uow.unpublished(3)
            assert [e.event for e in entries] == [AccountActivated(T0, f"acc{n}") for n in range(3)]
            positions = [e.position for e in entries]
            assert positions == sorted(positions)
            assert not any(e.published for e in entries)
            uow.mark_published([positions[0], positions[2]])
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


class ThrottleCounterContract(StorageHarness):
    """Failure counters stay exact when many workers add to them at once."""

    def test_concurrent_increments_are_all_counted(self, storage: Storage) -> None:
        policy = ThrottlePolicy()
        workers, each = 6, 5

        def bump(_: int) -> None:
            for _ in range(each):
                with storage.unit_of_work() as uow:
                    state = uow.get_throttle("login:shared")
                    time.sleep(0.001)  # a read-modify-write that a lost update would show
                    uow.put_throttle(policy.record_failure(state, "login:shared", T0))
                    uow.commit()

        race(workers, bump)
        with storage.unit_of_work(write=False) as uow:
            state = uow.get_throttle("login:shared")
        assert state is not None and state.consecutive == workers * each

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


class IdempotencyContract(StorageHarness):
    """A merge retried with the same key returns the first receipt."""

    def test_a_retry_with_the_same_key_returns_the_first_receipt_and_changes_nothing(
            self, service: MergeService) -> None:
        principal, (letter,) = self.family(service)
        first = service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        events = len(service.unpublished_events())
        again = service.merge(principal.id, letter.login, letter.provisional_password, "k-1")
        assert again == first
        assert len(service.unpublished_events()) == events
        assert service.children(principal.id) == first.children

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
                uow.get_account("acc1")
            assert raised.value.code == "storage_error"
            assert raised.value.store
        finally:
            with contextlib.suppress(AccountMergeError):
                broken.close()


class StateMachineContract(StorageHarness):
    """The service against a plain model, on this store."""

    def test_the_state_machine_holds(self) -> None:
        machine = build_state_machine(self.make_storage, close=self.close_storage)
        run_state_machine_as_test(machine, settings=settings(
            max_examples=self.state_machine_examples, stateful_step_count=30, deadline=None,
            suppress_health_check=list(HealthCheck)))


class StorageContract(
    RoundTripContract,
    RollbackContract,
    IsolationContract,
    OutboxContract,
    ThrottleCounterContract,
    IdempotencyContract,
    ErrorTranslationContract,
    StateMachineContract,
):
    """The whole storage contract."""
