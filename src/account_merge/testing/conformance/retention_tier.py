"""Optional tier ``retention``, the tier's own methods: :class:`RetentionTierContract`.

Its helpers and constants serve :mod:`~account_merge.testing.conformance.purge` too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from account_merge.domain.account import AccountStatus, Credential, CredentialKind
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import AccountActivated
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    RetentionPolicy,
    forgotten,
    pseudonymised,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.register import Closure, Register, RegisterChanges
from account_merge.ports.retention import DueKind, DuePage
from account_merge.ports.storage import ChangeSet, Fetch, NewAccount, Storage, StoredReceipt
from account_merge.ports.tiers import EmailIndex, Notices, Retention, require_tier, supports
from account_merge.testing.conformance.harness import (
    HASH,
    OTHER_SCHOOL,
    SCHOOL,
    T0,
    StorageHarness,
    _account,
    _child,
    _link,
    _new,
)

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


class RetentionTierContract(StorageHarness):
    """Tier ``retention``: what is due, found in pages; deleted in bulk, and nothing else."""

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
