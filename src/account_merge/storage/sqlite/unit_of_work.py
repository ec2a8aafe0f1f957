"""The SQLite unit of work: its transaction and the core tier (fetch, apply).

The optional tiers add their methods in mixin classes of their own
(:mod:`.recovery`, :mod:`.register`, :mod:`.retention`); the store's
unit of work combines them (:mod:`.store`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from account_merge.domain.account import Account
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, ExpectationFailed, LoginTaken, StorageError
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.storage.sqlite.errors import _DECODING_ERRORS, _is_login_clash
from account_merge.storage.sqlite.rows import (
    _AUDIT_COLUMNS,
    _account_from_row,
    _account_values,
    _audit_from_row,
    _audit_values,
    _credential_values,
    _link_from_row,
    _link_values,
    _outbox_entry_from_row,
    _parse_optional_time,
    _receipt_from_row,
    _receipt_values,
    _record_from_row,
    _throttle_from_row,
    _throttle_values,
)
from account_merge.storage.sqlite.statements import (
    _APPEND_AUDIT,
    _APPEND_EVENT,
    _DROP_CREDENTIAL,
    _EXPECT,
    _INSERT_ACCOUNT,
    _LINK,
    _MARK_PUBLISHED,
    _PUT_CHILD,
    _PUT_CREDENTIAL,
    _PUT_ESTABLISHMENT,
    _PUT_RECEIPT,
    _PUT_THROTTLE,
    _SIGN_IN,
    _UNLINK,
    _UPDATE_ACCOUNT,
    _marks,
    _select_absorbed,
    _select_establishments,
    _select_links,
    _select_receipts,
    _select_records,
    _select_throttles,
)

if TYPE_CHECKING:
    from account_merge.storage.sqlite.store import SQLiteStorage, _Slot


class _CoreUnitOfWork:
    """A unit of work on one connection: its transaction and the core tier."""

    def __init__(self, storage: SQLiteStorage, *, write: bool) -> None:
        self._storage = storage
        self._write = write
        self._slot: _Slot | None = None

    # transaction ------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._slot is not None:
            raise RuntimeError("this unit of work is already open")
        slot = self._storage._acquire()
        try:
            self._slot = slot
            self._begin()
        except BaseException:
            self._slot = None
            self._storage._release(slot)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        try:
            if slot.connection.in_transaction:
                try:
                    with self._storage._translating():
                        slot.connection.execute("ROLLBACK")
                except AccountMergeError:
                    # An error already leaving the block says more than this one.
                    if exc is None:
                        raise
        finally:
            self._storage._release(slot)

    def _begin(self) -> None:
        assert self._slot is not None
        with self._storage._translating():
            self._slot.connection.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")

    def _connection(self) -> sqlite3.Connection:
        """The open connection, inside a transaction (a new one after a commit)."""
        if self._slot is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if not self._slot.connection.in_transaction:
            self._begin()
        return self._slot.connection

    def commit(self) -> None:
        if self._slot is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if self._slot.connection.in_transaction:
            with self._storage._translating():
                self._slot.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self._slot is not None and self._slot.connection.in_transaction:
            with self._storage._translating():
                self._slot.connection.execute("ROLLBACK")

    def _unreadable(self, what: str, error: Exception) -> StorageError:
        """A row the domain refuses: a StorageError naming the file."""
        return StorageError(self._storage.path, f"holds {what} that cannot be read ({error!r})")

    # reading ----------------------------------------------------------------------
    def fetch(self, request: Fetch) -> Fetched:
        connection = self._connection()
        try:
            return self._fetch(connection, request)
        except sqlite3.Error as error:
            raise self._storage._error(error) from error

    def _fetch(self, connection: sqlite3.Connection, request: Fetch) -> Fetched:
        found: dict[str, Any] = {}
        what = "an account"
        try:
            logins, ids = request.logins, request.accounts
            if logins or ids:
                by_login: dict[str, AccountRecord] = {}
                accounts: dict[str, AccountRecord] = {}
                wanted_logins, wanted_ids = set(logins), set(ids)
                for row in connection.execute(_select_records(len(logins), len(ids)),
                                              (*logins, *ids)):
                    record = _record_from_row(row)
                    if row[13] in wanted_logins:
                        by_login[row[13]] = record
                    if row[0] in wanted_ids:
                        accounts[row[0]] = record
                found["by_login"], found["accounts"] = by_login, accounts
            if request.links:
                what = "a child link"
                links: dict[str, list[ChildLink]] = {i: [] for i in request.links}
                for row in connection.execute(_select_links(len(request.links)),
                                              request.links):
                    links[row[0]].append(_link_from_row(row))
                found["links"] = {i: tuple(v) for i, v in links.items()}
            if request.absorbed:
                what = "an account"
                absorbed: dict[str, list[Account]] = {i: [] for i in request.absorbed}
                for row in connection.execute(_select_absorbed(len(request.absorbed)),
                                              request.absorbed):
                    absorbed[row[8]].append(_account_from_row(row))
                found["absorbed"] = {i: tuple(v) for i, v in absorbed.items()}
            if request.throttles or request.count:
                what = "a throttle state"
                found["throttles"] = self._throttles(connection, request)
            if request.receipts:
                what = "a receipt"
                pairs = [part for pair in request.receipts for part in pair]
                receipts = {}
                for row in connection.execute(_select_receipts(len(request.receipts)), pairs):
                    stored = _receipt_from_row(row)
                    receipts[stored.principal_id, stored.key] = stored
                found["receipts"] = receipts
            if request.establishments:
                what = "an establishment"
                found["establishments"] = {
                    row[0]: Establishment(uai=row[0], name=row[1])
                    for row in connection.execute(
                        _select_establishments(len(request.establishments)),
                        request.establishments)}
        except _DECODING_ERRORS as error:
            raise self._unreadable(what, error) from error
        return Fetched(**found)

    def _throttles(self, connection: sqlite3.Connection,
                   request: Fetch) -> dict[str, ThrottleState]:
        """The counters *request* reads, and those it counts as they were before."""
        keys = list(dict.fromkeys((*request.throttles, *request.count)))
        rows: dict[str, tuple[Any, ...]] = {
            row[0]: row for row in connection.execute(_select_throttles(len(keys)), keys)}
        out = {key: _throttle_from_row(row) if (row := rows.get(key)) else ThrottleState(key)
               for key in request.throttles}
        if request.count:
            # Counted on the stored text: the times already there are not
            # parsed and formatted again.
            assert request.at is not None  # Fetch checks it
            at, keep = request.at.isoformat(), request.keep
            counted: dict[str, tuple[Any, ...]] = {}
            for key in request.count:
                row = rows.get(key)
                if row is None:
                    out[key], consecutive, recent = ThrottleState(key), 0, []
                else:
                    consecutive, recent = row[1], json.loads(row[3])
                    out[key] = ThrottleState(
                        key=key, consecutive=consecutive,
                        last_failure_at=_parse_optional_time(row[2]),
                        recent=tuple(datetime.fromisoformat(t) for t in recent))
                recent.append(at)
                rows[key] = counted[key] = (key, consecutive + 1, at,
                                            json.dumps(recent[-keep:] if keep > 0 else []))
            connection.executemany(_PUT_THROTTLE, counted.values())
        return out

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        connection = self._connection()
        try:
            rows = connection.execute("SELECT position, name, payload, published FROM outbox"
                                      " WHERE published = 0 ORDER BY position LIMIT ?",
                                      (max(0, limit),)).fetchall()
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        try:
            return [_outbox_entry_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an outbox event", error) from error

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        connection = self._connection()
        limit = max(0, limit)
        try:
            if account_id is None:
                rows = connection.execute(
                    f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?",
                    (limit,)).fetchall()
            else:
                # Each half walks its own index backwards and stops at *limit*.
                rows = connection.execute(
                    f"SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE account_id = ?1"
                    " ORDER BY id DESC LIMIT ?2)"
                    f" UNION SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE actor = ?1"
                    " ORDER BY id DESC LIMIT ?2)"
                    " ORDER BY id DESC LIMIT ?2",
                    (account_id, limit)).fetchall()
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        try:
            return [_audit_from_row(row) for row in reversed(rows)]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an audit record", error) from error

    # writing ----------------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        connection = self._connection()
        try:
            self._apply(connection, changes)
        except sqlite3.Error as error:
            raise self._storage._error(error) from error

    def _apply(self, connection: sqlite3.Connection, changes: ChangeSet) -> None:
        # Each part in the order ChangeSet gives; an empty part costs nothing.
        for expected in changes.expect:
            row = connection.execute(_EXPECT, (expected.account_id,)).fetchone()
            if (row is None or row[0] != expected.status.value
                    or row[1] != expected.password_hash):
                raise ExpectationFailed()
        if changes.establishments:
            connection.executemany(_PUT_ESTABLISHMENT, [(e.uai, e.name)
                                                        for e in changes.establishments])
        for new in changes.new_accounts:
            # One at a time, to name the login that clashes.
            try:
                connection.execute(_INSERT_ACCOUNT,
                                   (*_account_values(new.account), new.login_key))
            except sqlite3.IntegrityError as error:
                if _is_login_clash(error):
                    raise LoginTaken(new.login_key) from None
                raise
        if changes.accounts:
            cursor = connection.executemany(_UPDATE_ACCOUNT, [_account_values(a)
                                                              for a in changes.accounts])
            if cursor.rowcount != len(changes.accounts):  # one row per id, if stored
                self._missing(connection, [a.id for a in changes.accounts], "to replace")
        if changes.sign_ins:
            cursor = connection.executemany(_SIGN_IN, [(s.at.isoformat(), s.account_id)
                                                       for s in changes.sign_ins])
            if cursor.rowcount != len(changes.sign_ins):
                self._missing(connection, [s.account_id for s in changes.sign_ins],
                              "to sign in")
        if changes.credentials:
            connection.executemany(_PUT_CREDENTIAL, [_credential_values(c)
                                                     for c in changes.credentials])
        if changes.drop_credentials:
            connection.executemany(_DROP_CREDENTIAL, [(i,) for i in changes.drop_credentials])
        if changes.unlink:
            connection.executemany(_UNLINK, [(link.account_id, link.child.id)
                                             for link in changes.unlink])
        if changes.link:
            connection.executemany(_PUT_CHILD, [
                (c.id, c.first_name, c.last_name, c.establishment_uai)
                for c in (link.child for link in changes.link)])
            connection.executemany(_LINK, [_link_values(link) for link in changes.link])
        if changes.throttles:
            connection.executemany(_PUT_THROTTLE, [_throttle_values(s)
                                                   for s in changes.throttles])
        if changes.receipts:
            connection.executemany(_PUT_RECEIPT, [_receipt_values(r) for r in changes.receipts])
        if changes.events:
            connection.executemany(_APPEND_EVENT, [
                (e.name, json.dumps(e.to_payload(), ensure_ascii=False))
                for e in changes.events])
        if changes.published:
            connection.executemany(_MARK_PUBLISHED, [(p,) for p in changes.published])
        if changes.audit:
            connection.executemany(_APPEND_AUDIT, [_audit_values(r) for r in changes.audit])

    def _missing(self, connection: sqlite3.Connection, ids: Iterable[str], what: str) -> None:
        """Raise ExpectationFailed naming the first of *ids* that is not stored, if any."""
        wanted = list(dict.fromkeys(ids))
        stored = {row[0] for row in connection.execute(
            f"SELECT id FROM accounts WHERE id IN ({_marks(len(wanted))})", wanted)}
        absent = next((i for i in wanted if i not in stored), None)
        if absent is not None:
            raise ExpectationFailed(f"no account {absent!r} {what}")
