"""InMemoryStorage: a store in process memory that behaves like a database.

Units of work are serialised by one lock held from ``__enter__`` to
``__exit__``, so concurrent threads see each other's work only once it is
committed.  Every write records how to undo itself; leaving a unit of work
without ``commit()`` replays the undo log backwards, so nothing is
half-written.  It serves tests, demos and single-process tools; its
contents die with the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Self

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event, OutboxEntry
from account_merge.domain.throttle import ThrottleState
from account_merge.ports import LoginTaken, StoredReceipt

__all__ = ["InMemoryStorage"]

_MISSING: Any = object()


class _Tables:
    def __init__(self) -> None:
        self.establishments: dict[str, Establishment] = {}
        self.accounts: dict[str, Account] = {}
        self.logins: dict[str, str] = {}
        self.login_of: dict[str, str] = {}
        self.merged_into: dict[str, dict[str, None]] = {}
        self.credentials: dict[str, Credential] = {}
        self.children: dict[str, Child] = {}
        self.links: dict[str, dict[str, ChildLink]] = {}
        self.throttles: dict[str, ThrottleState] = {}
        self.receipts: dict[tuple[str, str], StoredReceipt] = {}
        self.outbox: list[OutboxEntry] = []
        self.first_unpublished = 0
        self.audit: list[AuditRecord] = []


class InMemoryStorage:
    """A store in memory, with real units of work (see the module docstring)."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()

    def unit_of_work(self, *, write: bool = True) -> _InMemoryUnitOfWork:
        """A new unit of work; use it in a ``with`` block."""
        return _InMemoryUnitOfWork(self._tables, self._lock)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"InMemoryStorage(accounts={len(self._tables.accounts)})"


class _InMemoryUnitOfWork:
    def __init__(self, tables: _Tables, lock: threading.RLock) -> None:
        self._t = tables
        self._lock = lock
        self._undo: list[Callable[[], None]] = []
        self._open = False

    # transaction -----------------------------------------------------------
    def __enter__(self) -> Self:
        self._lock.acquire()
        self._open = True
        self._undo = []
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.rollback()
        finally:
            self._open = False
            self._lock.release()

    def commit(self) -> None:
        self._check_open()
        self._undo = []

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("use the unit of work in a 'with' block")

    # undoable primitives -----------------------------------------------------
    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._check_open()
        old = table.get(key, _MISSING)
        table[key] = value

        def undo() -> None:
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old

        self._undo.append(undo)

    def _delete(self, table: dict[Any, Any], key: Any) -> None:
        self._check_open()
        if key not in table:
            return
        old = table.pop(key)
        self._undo.append(lambda: table.__setitem__(key, old))

    def _append(self, table: list[Any], value: Any) -> None:
        self._check_open()
        table.append(value)
        self._undo.append(table.pop)

    # establishments --------------------------------------------------------
    def get_establishment(self, uai: str) -> Establishment | None:
        return self._t.establishments.get(uai)

    def put_establishment(self, establishment: Establishment) -> None:
        self._set(self._t.establishments, establishment.uai, establishment)

    # accounts --------------------------------------------------------------
    def get_account(self, account_id: str) -> Account | None:
        return self._t.accounts.get(account_id)

    def get_account_id_by_login(self, login_key: str) -> str | None:
        return self._t.logins.get(login_key)

    def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        found = {}
        for account_id in sorted(set(account_ids)):
            account = self._t.accounts.get(account_id)
            if account is not None:
                found[account_id] = account
        return found

    def add_account(self, account: Account, login_key: str) -> None:
        if login_key in self._t.logins:
            raise LoginTaken(login_key)
        if account.id in self._t.accounts:
            raise LoginTaken(account.id)
        self._set(self._t.accounts, account.id, account)
        self._set(self._t.logins, login_key, account.id)
        self._set(self._t.login_of, account.id, login_key)
        self._index_merged(None, account)

    def update_account(self, account: Account) -> None:
        old = self._t.accounts[account.id]
        self._set(self._t.accounts, account.id, account)
        self._index_merged(old, account)

    def _index_merged(self, old: Account | None, new: Account) -> None:
        before = old.merged_into if old is not None else None
        if before == new.merged_into:
            return
        if before is not None:
            bucket = self._t.merged_into.get(before, {})
            self._set(self._t.merged_into, before,
                      {k: None for k in bucket if k != new.id})
        if new.merged_into is not None:
            bucket = self._t.merged_into.get(new.merged_into, {})
            self._set(self._t.merged_into, new.merged_into, {**bucket, new.id: None})

    def accounts_merged_into(self, account_id: str) -> list[Account]:
        return [
            a for a in (self._t.accounts[i] for i in self._t.merged_into.get(account_id, {}))
            if a.status is AccountStatus.MERGED
        ]

    # credentials -----------------------------------------------------------
    def get_credential(self, account_id: str) -> Credential | None:
        return self._t.credentials.get(account_id)

    def put_credential(self, credential: Credential) -> None:
        self._set(self._t.credentials, credential.account_id, credential)

    def delete_credential(self, account_id: str) -> None:
        self._delete(self._t.credentials, account_id)

    # children --------------------------------------------------------------
    def links(self, account_id: str) -> list[ChildLink]:
        return list(self._t.links.get(account_id, {}).values())

    def add_links(self, links: Sequence[ChildLink]) -> None:
        for link in links:
            if link.child.id not in self._t.children:
                self._set(self._t.children, link.child.id, link.child)
            bucket = self._t.links.get(link.account_id, {})
            self._set(self._t.links, link.account_id, {**bucket, link.child.id: link})

    def remove_links(self, links: Sequence[ChildLink]) -> None:
        for link in links:
            bucket = self._t.links.get(link.account_id, {})
            if link.child.id in bucket:
                self._set(self._t.links, link.account_id,
                          {k: v for k, v in bucket.items() if k != link.child.id})

    # throttling ------------------------------------------------------------
    def get_throttle(self, key: str) -> ThrottleState | None:
        return self._t.throttles.get(key)

    def put_throttle(self, state: ThrottleState) -> None:
        self._set(self._t.throttles, state.key, state)

    # idempotency -----------------------------------------------------------
    def get_receipt(self, principal_id: str, key: str) -> StoredReceipt | None:
        return self._t.receipts.get((principal_id, key))

    def put_receipt(self, stored: StoredReceipt) -> None:
        self._set(self._t.receipts, (stored.principal_id, stored.key), stored)

    # outbox ----------------------------------------------------------------
    def append_event(self, event: Event) -> None:
        self._append(self._t.outbox, OutboxEntry(position=len(self._t.outbox) + 1, event=event))

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        out = []
        for entry in self._t.outbox[self._t.first_unpublished:]:
            if not entry.published:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def mark_published(self, positions: Sequence[int]) -> None:
        self._check_open()
        outbox = self._t.outbox
        for position in positions:
            index = position - 1
            if 0 <= index < len(outbox) and not outbox[index].published:
                old = outbox[index]
                outbox[index] = attrs.evolve(old, published=True)
                self._undo.append(partial(outbox.__setitem__, index, old))
        first = self._t.first_unpublished
        while first < len(outbox) and outbox[first].published:
            first += 1
        if first != self._t.first_unpublished:
            previous = self._t.first_unpublished
            self._t.first_unpublished = first
            self._undo.append(lambda: setattr(self._t, "first_unpublished", previous))

    # audit -----------------------------------------------------------------
    def append_audit(self, record: AuditRecord) -> None:
        self._append(self._t.audit, record)

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        for record in reversed(self._t.audit):
            if account_id is None or account_id in (record.account_id, record.actor):
                out.append(record)
                if len(out) >= limit:
                    break
        out.reverse()
        return out
