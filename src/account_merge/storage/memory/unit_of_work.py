"""The in-memory unit of work: its lock, its undo log and the core tier (fetch, apply).

The optional tiers add their methods in mixin classes of their own
(:mod:`.recovery`, :mod:`.register`, :mod:`.retention`); the store's
unit of work combines them (:mod:`.store`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any, Self

import attrs

from account_merge.domain.account import Account, AccountStatus
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.events import OutboxEntry
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.storage.memory.tables import _Tables

_MISSING: Any = object()


class _CoreUnitOfWork:
    """A unit of work on the tables: its transaction, its undo log and the core tier."""

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
            if entry is not None and not entry.published:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        for record in reversed(self._t.audit):
            if record is None:
                continue
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

    def _mark_published(self, positions: tuple[int, ...]) -> None:
        outbox = self._t.outbox
        for position in positions:
            index = position - 1
            old = outbox[index] if 0 <= index < len(outbox) else None
            if old is not None and not old.published:
                outbox[index] = attrs.evolve(old, published=True)
                self._undo.append(partial(outbox.__setitem__, index, old))
        first = previous = self._t.first_unpublished
        while first < len(outbox):
            entry = outbox[first]
            if entry is not None and not entry.published:
                break
            first += 1
        if first != previous:
            self._t.first_unpublished = first
            self._undo.append(lambda: setattr(self._t, "first_unpublished", previous))
