"""The retention contract catches what it claims to catch.

Each store below is the in-memory store with one retention bug; the
contract's test named beside it must fail on it, while the in-memory store
itself passes the whole contract (tests/test_conformance_memory.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
import pytest

from account_merge import MergeService
from account_merge.domain.retention import Forgotten, RetentionPolicy
from account_merge.ports.retention import DueKind, DuePage
from account_merge.ports.storage import Storage
from account_merge.storage.memory import InMemoryStorage, _InMemoryUnitOfWork
from account_merge.testing import FakeClock, fast_verifier
from account_merge.testing.conformance import SCHOOL, T0, RetentionContract, _child


class _Broken(InMemoryStorage):
    unit: type[_InMemoryUnitOfWork]

    def unit_of_work(self, *, write: bool = True) -> _InMemoryUnitOfWork:
        return self.unit(self._tables, self._lock)


class _GivesPositionsAgain(_InMemoryUnitOfWork):
    """Deleting the last events lets the next event take their positions."""

    def delete_outbox(self, positions: Sequence[int]) -> int:
        deleted = super().delete_outbox(positions)
        while self._t.outbox and self._t.outbox[-1] is None:
            self._t.outbox.pop()
        return deleted


class _KeepsTheSignInCounters(_InMemoryUnitOfWork):
    """Deletes the counters of a forgotten account by exact key only."""

    def forget(self, forgotten: Forgotten) -> None:
        super().forget(attrs.evolve(forgotten, counter_prefixes=()))


class _KeepsEmptyAddressKeys(_InMemoryUnitOfWork):
    """The address index keeps the key of an address nobody has any more."""

    def index_email(self, account_id: str, key: str | None) -> None:
        old = self._t.email_of.get(account_id)
        super().index_email(account_id, key)
        if old is not None and old != key and old not in self._t.emails:
            self._set(self._t.emails, old, frozenset())


class _DeletesWhatItShouldPseudonymise(_InMemoryUnitOfWork):
    """Deletes the audit records of forgotten accounts instead of pseudonymising them."""

    def forget(self, forgotten: Forgotten) -> None:
        for index, record in enumerate(self._t.audit):
            if record is not None and forgotten.names_record(record):
                self._replace_audit(index, None)
        super().forget(forgotten)


class _EndsTheNewestFirst(_InMemoryUnitOfWork):
    """Ends audit records from the newest."""

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        self._t.audit.reverse()
        try:
            return super().end_audit(before, limit, pseudonymise=pseudonymise)
        finally:
            self._t.audit.reverse()


class _IgnoresPendingNotices(_InMemoryUnitOfWork):
    """Deletes events whose notice is still to send."""

    def delete_outbox(self, positions: Sequence[int]) -> int:
        saved = dict(self._t.notices)
        self._t.notices.clear()
        try:
            return super().delete_outbox(positions)
        finally:
            self._t.notices.update(saved)


class _PagesDoNotAdvance(_InMemoryUnitOfWork):
    """Gives the first page of due accounts whatever the cursor."""

    def accounts_due(self, kind: Any, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        return super().accounts_due(kind, before, None, limit)


class _KeepsTheRegisterRecords(_InMemoryUnitOfWork):
    """Leaves the register's records and closure of a forgotten account."""

    def _forget_in_register(self, account_id: str) -> None:
        return None


class _KeepsTheOriginIndex(_InMemoryUnitOfWork):
    """Leaves the index of links by origin establishment naming a forgotten account."""

    def _forget_in_register(self, account_id: str) -> None:
        links = self._t.links.pop(account_id, None)  # unseen: their index entries stay
        try:
            super()._forget_in_register(account_id)
        finally:
            if links is not None:
                self._t.links[account_id] = links


class _ListsNoClosedAccount(_InMemoryUnitOfWork):
    """Pages closed accounts as if the store had no register tier."""

    def accounts_due(self, kind: Any, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        if kind is DueKind.CLOSED:
            return DuePage((), None)
        return super().accounts_due(kind, before, after, limit)


BUGS = [
    (_GivesPositionsAgain,
     "test_the_outbox_is_read_by_position_and_a_deleted_position_is_never_given_again"),
    (_KeepsTheSignInCounters,
     "test_forget_deletes_the_accounts_and_what_names_them_and_nothing_else"),
    (_KeepsTheSignInCounters, "test_a_purged_account_leaves_nothing_that_names_it"),
    (_KeepsEmptyAddressKeys, "test_a_purged_account_leaves_nothing_that_names_it"),
    (_DeletesWhatItShouldPseudonymise,
     "test_forget_deletes_the_accounts_and_what_names_them_and_nothing_else"),
    (_EndsTheNewestFirst, "test_audit_records_end_oldest_first_deleted_or_pseudonymised"),
    (_IgnoresPendingNotices,
     "test_the_outbox_is_read_by_position_and_a_deleted_position_is_never_given_again"),
    (_PagesDoNotAdvance, "test_accounts_due_come_by_their_time_then_id_a_page_at_a_time"),
    (_KeepsTheRegisterRecords,
     "test_a_purged_accounts_register_entries_leave_nothing_that_names_it"),
    (_KeepsTheRegisterRecords,
     "test_a_closed_account_goes_three_months_after_its_closure_and_its_entry_is_new_again"),
    (_KeepsTheOriginIndex, "test_a_purged_account_leaves_nothing_that_names_it"),
    (_ListsNoClosedAccount,
     "test_closed_accounts_are_due_by_their_closure_then_id_a_page_at_a_time"),
    (_ListsNoClosedAccount,
     "test_a_closed_account_goes_three_months_after_its_closure_and_its_entry_is_new_again"),
]


class _Harness(RetentionContract):
    def __init__(self, unit: type[_InMemoryUnitOfWork]) -> None:
        self.unit = unit

    def make_storage(self) -> Storage:
        store = _Broken()
        store.unit = self.unit
        return store

    def dump_storage(self, storage: Storage) -> str:
        assert isinstance(storage, InMemoryStorage)
        return repr(vars(storage._tables))


def _run(harness: _Harness, test: str) -> None:
    method = getattr(harness, test)
    arguments = {"storage": harness.make_storage(), "clock": FakeClock(T0)}
    wanted = inspect.signature(method).parameters
    method(**{name: value for name, value in arguments.items() if name in wanted})


@pytest.mark.parametrize(("bug", "test"), BUGS, ids=[f"{b.__name__}-{t}" for b, t in BUGS])
def test_the_contract_fails_on_a_store_with_this_bug(bug: type[_InMemoryUnitOfWork],
                                                    test: str) -> None:
    _run(_Harness(_InMemoryUnitOfWork), test)  # the store without the bug passes
    with pytest.raises(AssertionError):
        _run(_Harness(bug), test)


class _AlwaysTheSamePage(_InMemoryUnitOfWork):
    """Gives every account, due or not, whatever the time and the cursor."""

    def accounts_due(self, kind: Any, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        records = [self._record(i) for i in sorted(self._t.accounts)][:limit]
        return DuePage(records=tuple(r for r in records if r is not None),
                       after=(T0, "z") if records else None)


def test_a_purge_on_a_store_whose_pages_do_not_advance_stops() -> None:
    """The purge deletes only what it checked is due, and never loops on the same page."""
    clock = FakeClock(T0)
    service = MergeService(_Harness(_AlwaysTheSamePage).make_storage(), fast_verifier(), clock,
                           retention=RetentionPolicy(batch=1))
    service.register_establishment(SCHOOL)
    kept = service.issue_account(SCHOOL, "Parent Numéro 1", [_child(1)])
    clock.advance(days=10)
    assert service.purge().accounts == 0
    assert service.get_account(kept.account_id)
