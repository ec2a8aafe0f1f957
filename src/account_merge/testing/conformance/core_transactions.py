"""Core tier, around units of work: rollback, isolation between threads, the
outbox, idempotency keys, translation of driver errors, attempts that outlive a
host's rollback, and the state machine run on the store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import AccountActivated
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottlePolicy, ThrottleState
from account_merge.exceptions import AccountMergeError, InvalidInput, StorageError
from account_merge.ports.storage import ChangeSet, Fetch, NewAccount, Storage, StoredReceipt
from account_merge.service import MergeService
from account_merge.testing import FakeClock, fast_verifier, race
from account_merge.testing.conformance.harness import (
    HASH,
    SCHOOL,
    STRONG,
    T0,
    StorageHarness,
    _account,
    _child,
    _link,
    _new,
)
from account_merge.testing.state_machine import build_state_machine


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
