"""InMemoryStorage: a store in process memory that behaves like a database.

Units of work are serialised by one lock held from ``__enter__`` to
``__exit__``, so concurrent threads see each other's work only once it is
committed (which also makes every ``Fetch(lock=True)`` hold).  Every write
records how to undo itself; leaving a unit of work without ``commit()``
replays the undo log backwards, so nothing is half-written.  It serves
tests, demos and single-process tools; its contents die with the process.

It is also the plainest reading of the storage contract
(:mod:`account_merge.ports.storage`): each rule there is a few lines here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Self

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential, Role
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.domain.register import RegisterRecord
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.register import (
    Closure,
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.ports.storage import (
    AccountRecord,
    ChangeSet,
    Fetch,
    Fetched,
    StoredReceipt,
    write_alone,
)

__all__ = ["InMemoryStorage"]

_MISSING: Any = object()


class _Tables:
    def __init__(self) -> None:
        self.establishments: dict[str, Establishment] = {}
        self.accounts: dict[str, Account] = {}
        self.logins: dict[str, str] = {}
        # merged_into -> absorbed ids, in the order they were absorbed
        self.absorbed: dict[str, dict[str, None]] = {}
        self.credentials: dict[str, Credential] = {}
        self.links: dict[str, dict[str, ChildLink]] = {}
        self.throttles: dict[str, ThrottleState] = {}
        self.receipts: dict[tuple[str, str], StoredReceipt] = {}
        self.outbox: list[OutboxEntry] = []
        self.first_unpublished = 0
        self.audit: list[AuditRecord] = []
        # tier email_index: account id -> key, and key -> account ids
        self.email_of: dict[str, str] = {}
        self.emails: dict[str, frozenset[str]] = {}
        # tier notices: the states by id, and the last outbox position turned into notices
        self.notices: dict[str, NoticeState] = {}
        self.notice_cursor = 0
        # tier ``register``: records by (uai, external id), paged in insertion order
        self.register: dict[tuple[str, str], RegisterRecord] = {}
        self.register_order: dict[str, list[str]] = {}
        self.register_position: dict[tuple[str, str], int] = {}
        self.register_by_account: dict[str, dict[tuple[str, str], None]] = {}
        self.closures: dict[str, Closure] = {}
        # links by the establishment whose letter gave them: uai -> child id -> account ids
        self.origin_links: dict[str, dict[str, dict[str, None]]] = {}
        self.origin_order: dict[str, list[str]] = {}
        self.origin_position: dict[tuple[str, str], int] = {}


class InMemoryStorage:
    """A store in memory, with real units of work (see the module docstring)."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()

    def unit_of_work(self, *, write: bool = True) -> _InMemoryUnitOfWork:
        """A new unit of work; use it in a ``with`` block."""
        return _InMemoryUnitOfWork(self._tables, self._lock)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own."""
        write_alone(self, changes)

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
        old = table.get(key, _MISSING)
        table[key] = value

        def undo() -> None:
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old

        self._undo.append(undo)

    def _delete(self, table: dict[Any, Any], key: Any) -> None:
        if key in table:
            old = table.pop(key)
            self._undo.append(lambda: table.__setitem__(key, old))

    def _append(self, table: list[Any], value: Any) -> None:
        table.append(value)
        self._undo.append(table.pop)

    # reading ---------------------------------------------------------------
    def _record(self, account_id: str) -> AccountRecord | None:
        account = self._t.accounts.get(account_id)
        if account is None:
            return None
        return AccountRecord(account, self._t.credentials.get(account_id))

    def fetch(self, request: Fetch) -> Fetched:
        self._check_open()
        t = self._t
        by_login = {}
        for key in request.logins:
            found = self._record(t.logins.get(key, ""))
            if found is not None:
                by_login[key] = found
        accounts = {i: r for i in request.accounts if (r := self._record(i)) is not None}
        throttles = {k: t.throttles.get(k, ThrottleState(k)) for k in request.throttles}
        for key in request.count:
            before = t.throttles.get(key)
            throttles[key] = before if before is not None else ThrottleState(key)
            assert request.at is not None
            recent = () if before is None else before.recent
            self._set(t.throttles, key, ThrottleState(
                key=key, consecutive=throttles[key].consecutive + 1,
                last_failure_at=request.at,
                recent=(*recent, request.at)[-request.keep:]))
        return Fetched(
            by_login=by_login,
            accounts=accounts,
            links={i: tuple(t.links.get(i, {}).values()) for i in request.links},
            absorbed={i: tuple(t.accounts[a] for a in t.absorbed.get(i, {})
                               if t.accounts[a].status is AccountStatus.MERGED)
                      for i in request.absorbed},
            throttles=throttles,
            receipts={k: got for k in request.receipts
                      if (got := t.receipts.get(k)) is not None},
            establishments={u: e for u in request.establishments
                            if (e := t.establishments.get(u)) is not None},
        )

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        out = []
        for entry in self._t.outbox[self._t.first_unpublished:]:
            if not entry.published:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        for record in reversed(self._t.audit):
            if account_id is None or account_id in (record.account_id, record.actor):
                out.append(record)
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    # writing ---------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        self._check_open()
        t = self._t
        for expected in changes.expect:
            account = t.accounts.get(expected.account_id)
            credential = t.credentials.get(expected.account_id)
            if (account is None or account.status is not expected.status
                    or (credential.password_hash if credential else None)
                    != expected.password_hash):
                raise ExpectationFailed()
        for establishment in changes.establishments:
            self._set(t.establishments, establishment.uai, establishment)
        for new in changes.new_accounts:
            if new.login_key in t.logins or new.account.id in t.accounts:
                raise LoginTaken(new.login_key)
            self._set(t.accounts, new.account.id, new.account)
            self._set(t.logins, new.login_key, new.account.id)
            self._index_absorbed(None, new.account)
        for account in changes.accounts:
            old = t.accounts.get(account.id)
            if old is None:
                raise ExpectationFailed(f"no account {account.id!r} to replace")
            self._set(t.accounts, account.id, account)
            self._index_absorbed(old, account)
        for sign_in in changes.sign_ins:
            old = t.accounts.get(sign_in.account_id)
            if old is None:
                raise ExpectationFailed(f"no account {sign_in.account_id!r}")
            self._set(t.accounts, old.id, attrs.evolve(old, last_signed_in_at=sign_in.at))
        for credential in changes.credentials:
            self._set(t.credentials, credential.account_id, credential)
        for account_id in changes.drop_credentials:
            self._delete(t.credentials, account_id)
        for link in changes.unlink:
            bucket = t.links.get(link.account_id, {})
            if link.child.id in bucket:
                self._index_origin(bucket[link.child.id], None)
                self._set(t.links, link.account_id,
                          {k: v for k, v in bucket.items() if k != link.child.id})
        for link in changes.link:
            bucket = t.links.get(link.account_id, {})
            self._index_origin(bucket.get(link.child.id), link)
            self._set(t.links, link.account_id, {**bucket, link.child.id: link})
        for state in changes.throttles:
            self._set(t.throttles, state.key, state)
        for stored in changes.receipts:
            self._set(t.receipts, (stored.principal_id, stored.key), stored)
        for event in changes.events:
            self._append(t.outbox, OutboxEntry(position=len(t.outbox) + 1, event=event))
        if changes.published:
            self._mark_published(changes.published)
        for record in changes.audit:
            self._append(t.audit, record)

    def _index_absorbed(self, old: Account | None, new: Account) -> None:
        before = old.merged_into if old is not None else None
        if before == new.merged_into:
            return
        t = self._t
        if before is not None:
            bucket = t.absorbed.get(before, {})
            self._set(t.absorbed, before, {k: None for k in bucket if k != new.id})
        if new.merged_into is not None:
            bucket = t.absorbed.get(new.merged_into, {})
            self._set(t.absorbed, new.merged_into, {**bucket, new.id: None})

    def _index_origin(self, old: ChildLink | None, new: ChildLink | None) -> None:
        """Keep the index of links by the establishment whose letter gave them."""
        t = self._t
        if old is not None:
            holders = t.origin_links.get(old.origin_establishment_uai, {})
            accounts = holders.get(old.child.id, {})
            if old.account_id in accounts:
                self._set(holders, old.child.id,
                          {k: None for k in accounts if k != old.account_id})
        if new is not None:
            uai, child_id = new.origin_establishment_uai, new.child.id
            holders = t.origin_links.setdefault(uai, {})
            self._set(holders, child_id, {**holders.get(child_id, {}), new.account_id: None})
            if (uai, child_id) not in t.origin_position:
                order = t.origin_order.setdefault(uai, [])
                self._set(t.origin_position, (uai, child_id), len(order))
                self._append(order, child_id)

    # tier ``register`` -------------------------------------------------------
    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        self._check_open()
        t = self._t
        by_account = {
            account_id: tuple(t.register[key] for key in t.register_by_account.get(account_id, {}))
            for account_id in request.accounts}
        origin: dict[str, tuple[ChildLink, ...]] = {}
        holders = t.origin_links.get(request.establishment or "", {})
        for child_id in request.origin_links:
            origin[child_id] = tuple(
                t.links[a][child_id] for a in holders.get(child_id, {})
                if t.accounts[a].role is Role.RESPONSABLE)
        return RegisterFetched(
            entries={k: r for k in request.entries if (r := t.register.get(k)) is not None},
            by_account=by_account,
            origin_links=origin,
            closures={a: c for a in request.closures if (c := t.closures.get(a)) is not None},
        )

    def register_apply(self, changes: RegisterChanges) -> None:
        self._check_open()
        t = self._t
        for key in changes.drop:
            old = t.register.get(key)
            if old is not None:
                self._delete(t.register, key)
                self._unindex_record(old)
        for record in changes.put:
            key = record.key
            old = t.register.get(key)
            if old is not None:
                self._unindex_record(old)
            self._set(t.register, key, record)
            bucket = t.register_by_account.get(record.account_id, {})
            self._set(t.register_by_account, record.account_id, {**bucket, key: None})
            if key not in t.register_position:
                order = t.register_order.setdefault(record.establishment_uai, [])
                self._set(t.register_position, key, len(order))
                self._append(order, record.external_id)
        for closure in changes.close:
            self._set(t.closures, closure.account_id, closure)
        for account_id in changes.reopen:
            self._delete(t.closures, account_id)

    def _unindex_record(self, record: RegisterRecord) -> None:
        bucket = self._t.register_by_account.get(record.account_id, {})
        self._set(self._t.register_by_account, record.account_id,
                  {k: None for k in bucket if k != record.key})

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        self._check_open()
        t = self._t
        order = t.register_order.get(establishment_uai, [])
        start = int(cursor) if cursor else 0
        items: list[RegisterRecord] = []
        index = start
        while index < len(order) and len(items) < limit:
            record = t.register.get((establishment_uai, order[index]))
            if record is not None:
                items.append(record)
            index += 1
        return RegisterPage(tuple(items), str(index) if index < len(order) else None)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        self._check_open()
        t = self._t
        order = t.origin_order.get(establishment_uai, [])
        holders = t.origin_links.get(establishment_uai, {})
        start = int(cursor) if cursor else 0
        items: list[str] = []
        index = start
        while index < len(order) and len(items) < limit:
            child_id = order[index]
            if any(t.accounts[a].role is Role.RESPONSABLE for a in holders.get(child_id, {})):
                items.append(child_id)
            index += 1
        return RegisterPage(tuple(items), str(index) if index < len(order) else None)

    def _mark_published(self, positions: tuple[int, ...]) -> None:
        outbox = self._t.outbox
        for position in positions:
            index = position - 1
            if 0 <= index < len(outbox) and not outbox[index].published:
                old = outbox[index]
                outbox[index] = attrs.evolve(old, published=True)
                self._undo.append(partial(outbox.__setitem__, index, old))
        first = previous = self._t.first_unpublished
        while first < len(outbox) and outbox[first].published:
            first += 1
        if first != previous:
            self._t.first_unpublished = first
            self._undo.append(lambda: setattr(self._t, "first_unpublished", previous))

    # tier email_index ---------------------------------------------------------
    def index_email(self, account_id: str, key: str | None) -> None:
        self._check_open()
        t = self._t
        old = t.email_of.get(account_id)
        if old == key:
            return
        if old is not None:
            self._set(t.emails, old, t.emails.get(old, frozenset()) - {account_id})
            self._delete(t.email_of, account_id)
        if key is not None:
            self._set(t.emails, key, t.emails.get(key, frozenset()) | {account_id})
            self._set(t.email_of, account_id, key)

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        self._check_open()
        found = (self._record(i) for i in sorted(self._t.emails.get(key, ())))
        return [r for r in found if r is not None][:limit]

    # tier notices -----------------------------------------------------------------
    def notice_cursor(self) -> int:
        self._check_open()
        return self._t.notice_cursor

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        self._check_open()
        start = max(position, 0)
        return self._t.outbox[start:start + limit]

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        self._check_open()
        t = self._t
        for state in states:
            if state.id not in t.notices:
                self._set(t.notices, state.id, state)
        if cursor > t.notice_cursor:
            previous = t.notice_cursor
            t.notice_cursor = cursor
            self._undo.append(lambda: setattr(t, "notice_cursor", previous))

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        self._check_open()
        pending = sorted((s for s in self._t.notices.values()
                          if s.status is NoticeStatus.PENDING),
                         key=lambda s: (s.position, s.id))[:limit]
        return [(s, self._t.outbox[s.position - 1]) for s in pending]

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        self._check_open()
        for state in states:
            if state.id in self._t.notices:
                self._set(self._t.notices, state.id, state)
