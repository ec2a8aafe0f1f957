"""Retention on SQLite: tier ``retention`` (schema version 6).

What is due, found through the indexes of migration 5 -> 6; hashes
erased, accounts forgotten, audit records ended or pseudonymised, the
outbox and counters purged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from account_merge.domain.account import CredentialKind
from account_merge.domain.events import OutboxEntry
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    PSEUDONYMISED,
    Forgotten,
    ascii_lower,
)
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.storage.sqlite.errors import _DECODING_ERRORS
from account_merge.storage.sqlite.rows import (
    _AUDIT_COLUMNS,
    _MERGED,
    _RECORD_COLUMNS,
    _audit_from_row,
    _optional_time,
    _outbox_entry_from_row,
    _receipt_from_row,
    _record_from_row,
    _throttle_from_row,
)
from account_merge.storage.sqlite.statements import _DROP_CREDENTIAL, _marks, _select_throttles
from account_merge.storage.sqlite.unit_of_work import _CoreUnitOfWork

# Every statement finds its rows through an index of migration 5 -> 6; a
# partial index serves a query only when the query repeats its WHERE.
_PROVISIONAL = CredentialKind.PROVISIONAL.value
_DUE_UNACTIVATED = (
    f"SELECT {_RECORD_COLUMNS} FROM credentials AS c JOIN accounts AS a ON a.id = c.account_id"
    f" WHERE c.kind = '{_PROVISIONAL}' AND a.status = 'provisional'"
    " AND julianday(c.expires_at) <= julianday(?1){after}"
    " ORDER BY julianday(c.expires_at), c.account_id LIMIT ?4"
)
_AFTER_UNACTIVATED = " AND (julianday(c.expires_at), c.account_id) > (julianday(?2), ?3)"
_DUE_UNUSED = (
    f"SELECT {_RECORD_COLUMNS} FROM accounts AS a"
    " LEFT JOIN credentials AS c ON c.account_id = a.id"
    " WHERE a.status = 'active' AND julianday(a.last_signed_in_at) <= julianday(?1){after}"
    " ORDER BY julianday(a.last_signed_in_at), a.id LIMIT ?4"
)
_AFTER_UNUSED = " AND (julianday(a.last_signed_in_at), a.id) > (julianday(?2), ?3)"
_DUE_CLOSED = (
    f"SELECT {_RECORD_COLUMNS}, k.closed_at FROM closures AS k"
    " JOIN accounts AS a ON a.id = k.account_id"
    " LEFT JOIN credentials AS c ON c.account_id = a.id"
    " WHERE a.status = 'closed' AND julianday(k.closed_at) <= julianday(?1){after}"
    " ORDER BY julianday(k.closed_at), k.account_id LIMIT ?4"
)
_AFTER_CLOSED = " AND (julianday(k.closed_at), k.account_id) > (julianday(?2), ?3)"
_TO_ERASE = (
    f"SELECT c.account_id, a.status FROM credentials AS c JOIN accounts AS a"
    f" ON a.id = c.account_id WHERE c.kind = '{_PROVISIONAL}'"
    f" AND c.password_hash <> '{ERASED_HASH}' AND julianday(c.expires_at) <= julianday(?)"
    " ORDER BY julianday(c.expires_at) LIMIT ?"
)
_ERASE = "UPDATE credentials SET password_hash = ? WHERE account_id = ?"
#: The pseudonymised form of the audit record of the current row
#: (:func:`account_merge.domain.retention.pseudonymised`), account read first.
_PSEUDONYMISE_SET = (
    "detail = ? || coalesce('; establishment ' || coalesce("
    " CASE WHEN substr(actor, 1, 14) = 'establishment:' THEN substr(actor, 15) END,"
    " (SELECT a.establishment_uai FROM accounts AS a WHERE a.id = audit.account_id)), ''),"
    " actor = CASE WHEN substr(actor, 1, 14) = 'establishment:' THEN actor END,"
    " account_id = NULL, login = NULL"
)
#: True for an audit record that names someone
#: (:func:`~account_merge.domain.retention.names_someone`).
_NAMES_SOMEONE = (
    "(account_id IS NOT NULL OR login IS NOT NULL"
    " OR (actor IS NOT NULL AND substr(actor, 1, 14) <> 'establishment:')"
    f" OR (detail IS NOT NULL AND substr(detail, 1, {len(PSEUDONYMISED)}) <> ?))"
)
_MENTIONED = ("UPDATE audit SET detail = replace(detail, ?1, ?2)"
              " WHERE julianday(at) = julianday(?3) AND instr(detail, ?1) > 0")


def _audit_naming(ids: int, logins: int) -> list[tuple[str, int]]:
    """The conditions on audit records naming *ids* accounts or *logins* logins typed, one
    per index (a UNION of them would scan the table), with their number of parameters."""
    conditions = []
    if ids:
        conditions += [(f"account_id IN ({_marks(ids)})", ids), (f"actor IN ({_marks(ids)})", ids)]
    if logins:
        # The index is partial: the query repeats its WHERE.
        conditions.append((f"login IS NOT NULL AND lower(login) IN ({_marks(logins)})", logins))
    return conditions


def _prefix_end(prefix: str) -> str:
    """The first text after every text that starts with *prefix* (binary order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _RetentionTier(_CoreUnitOfWork):
    """Tier ``retention`` of the unit of work."""

    # tier retention -------------------------------------------------------------------
    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        connection = self._connection()
        text, after_text, key_at = {
            DueKind.UNACTIVATED: (_DUE_UNACTIVATED, _AFTER_UNACTIVATED, 12),
            DueKind.UNUSED: (_DUE_UNUSED, _AFTER_UNUSED, 9),
            DueKind.CLOSED: (_DUE_CLOSED, _AFTER_CLOSED, 14)}[kind]
        sql = text.format(after=after_text if after is not None else "")
        at, account_id = after if after is not None else (None, None)
        with self._storage._translating():
            rows = connection.execute(sql, (before.isoformat(), _optional_time(at), account_id,
                                            max(0, limit))).fetchall()
        try:
            records = tuple(_record_from_row(tuple(row[:14])) for row in rows)
        except _DECODING_ERRORS as error:
            raise self._unreadable("an account", error) from error
        last = (datetime.fromisoformat(rows[-1][key_at]), rows[-1][0]) \
            if rows and len(rows) == limit else None
        return DuePage(records=records, after=last)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(_TO_ERASE, (expired_by.isoformat(),
                                                  max(0, limit))).fetchall()
            merged = [(i,) for i, status in rows if status == _MERGED]
            connection.executemany(_DROP_CREDENTIAL, merged)
            connection.executemany(_ERASE, [(ERASED_HASH, i) for i, status in rows
                                            if status != _MERGED])
        return len(rows)

    def forget(self, forgotten: Forgotten) -> None:
        connection = self._connection()
        ids = list(forgotten.account_ids)
        with self._storage._translating():
            self._pseudonymise_audit(connection, forgotten)
            connection.executemany(_MENTIONED, [(account_id, DELETED_ACCOUNT, at.isoformat())
                                                for at, account_id in forgotten.created])
            connection.executemany("DELETE FROM throttles WHERE key = ?",
                                   [(k,) for k in forgotten.counter_keys])
            connection.executemany("DELETE FROM throttles WHERE key >= ? AND key < ?",
                                   [(p, _prefix_end(p)) for p in forgotten.counter_prefixes])
            if not ids:
                return
            marks = _marks(len(ids))
            connection.execute(f"DELETE FROM receipts WHERE principal_id IN ({marks})", ids)
            connection.execute(f"DELETE FROM email_index WHERE account_id IN ({marks})", ids)
            # tier ``register``: the records of their letters, their closures
            connection.execute(f"DELETE FROM register WHERE account_id IN ({marks})", ids)
            connection.execute(f"DELETE FROM closures WHERE account_id IN ({marks})", ids)
            children = [row[0] for row in connection.execute(
                f"SELECT DISTINCT child_id FROM links WHERE account_id IN ({marks})", ids)]
            connection.execute(f"DELETE FROM links WHERE account_id IN ({marks})", ids)
            connection.executemany(
                "DELETE FROM children WHERE id = ?1"
                " AND NOT EXISTS (SELECT 1 FROM links WHERE child_id = ?1)",
                [(c,) for c in children])
            connection.execute(f"DELETE FROM credentials WHERE account_id IN ({marks})", ids)
            # Absorbed accounts first: they name their holder.
            connection.execute(f"DELETE FROM accounts WHERE id IN ({marks})"
                               " AND merged_into IS NOT NULL", ids)
            connection.execute(f"DELETE FROM accounts WHERE id IN ({marks})", ids)

    def _pseudonymise_audit(self, connection: sqlite3.Connection,
                            forgotten: Forgotten) -> None:
        for condition, parameters in self._naming(forgotten):
            connection.execute(f"UPDATE audit SET {_PSEUDONYMISE_SET} WHERE {condition}",
                               (PSEUDONYMISED, *parameters))

    @staticmethod
    def _naming(forgotten: Forgotten) -> list[tuple[str, tuple[str, ...]]]:
        """Each condition on the audit records *forgotten* names, with its parameters."""
        ids = forgotten.account_ids
        logins = tuple(ascii_lower(t) for t in forgotten.logins)
        values = iter((ids, ids, logins) if ids else (logins,))
        return [(condition, next(values))
                for condition, _ in _audit_naming(len(ids), len(logins))]

    def _counter_keys(self, connection: sqlite3.Connection, forgotten: Forgotten) -> list[str]:
        """The keys of the stored counters *forgotten* names (one query per prefix: a
        compound SELECT has at most 500 terms)."""
        keys = list(forgotten.counter_keys)
        for prefix in forgotten.counter_prefixes:
            keys += [row[0] for row in connection.execute(
                "SELECT key FROM throttles WHERE key >= ? AND key < ?",
                (prefix, _prefix_end(prefix)))]
        return keys

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        connection = self._connection()
        with self._storage._translating():
            if not pseudonymise:
                return connection.execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit"
                    " WHERE julianday(at) < julianday(?) ORDER BY julianday(at), id LIMIT ?)",
                    (before.isoformat(), max(0, limit))).rowcount
            return connection.execute(
                f"UPDATE audit SET {_PSEUDONYMISE_SET} WHERE id IN (SELECT id FROM audit"
                f" WHERE julianday(at) < julianday(?) AND {_NAMES_SOMEONE}"
                " ORDER BY julianday(at), id LIMIT ?)",
                (PSEUDONYMISED, before.isoformat(), PSEUDONYMISED, max(0, limit))).rowcount

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        connection = self._connection()
        which = "" if published is None else f" AND published = {int(published)}"
        with self._storage._translating():
            rows = connection.execute(
                f"SELECT position, name, payload, published FROM outbox WHERE position > ?"
                f"{which} ORDER BY position LIMIT ?", (after, max(0, limit))).fetchall()
        try:
            return [_outbox_entry_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an outbox event", error) from error

    def delete_outbox(self, positions: Sequence[int]) -> int:
        wanted = sorted(set(positions))
        if not wanted:
            return 0
        connection = self._connection()
        with self._storage._translating():
            connection.execute(
                "INSERT INTO outbox_head (one, last_position)"
                " SELECT 1, coalesce(max(position), 0) FROM outbox WHERE true"
                " ON CONFLICT (one) DO UPDATE SET"
                " last_position = max(last_position, excluded.last_position)")
            return connection.execute(
                f"DELETE FROM outbox WHERE position IN ({_marks(len(wanted))})"
                " AND NOT EXISTS (SELECT 1 FROM notices AS n"
                " WHERE n.position = outbox.position AND n.status = 'pending')",
                wanted).rowcount

    def delete_counters(self, before: datetime, limit: int) -> int:
        connection = self._connection()
        with self._storage._translating():
            return connection.execute(
                "DELETE FROM throttles WHERE key IN (SELECT key FROM throttles"
                " WHERE julianday(last_failure_at) IS NULL"
                " OR julianday(last_failure_at) < julianday(?) LIMIT ?)",
                (before.isoformat(), max(0, limit))).rowcount

    def held_about(self, forgotten: Forgotten) -> Held:
        connection = self._connection()
        ids = forgotten.account_ids
        with self._storage._translating():
            audit_rows = [row for condition, parameters in self._naming(forgotten)
                          for row in connection.execute(
                              f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {condition}",
                              parameters)]
            mentioned = [row for at, account_id in forgotten.created
                         for row in connection.execute(
                             f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE julianday(at) ="
                             " julianday(?) AND instr(detail, ?) > 0",
                             (at.isoformat(), account_id))]
            keys = self._counter_keys(connection, forgotten)
            counters = connection.execute(_select_throttles(len(keys)), keys).fetchall() \
                if keys else []
            receipts = connection.execute(
                f"SELECT principal_id, key, login_key, receipt FROM receipts"
                f" WHERE principal_id IN ({_marks(len(ids))}) ORDER BY principal_id, key",
                ids).fetchall() if ids else []
        try:
            audit = sorted({row[0]: row for row in (*audit_rows, *mentioned)}.values())
            return Held(
                audit=tuple(_audit_from_row(row) for row in audit),
                counters=tuple(sorted((_throttle_from_row(tuple(r)) for r in counters),
                                      key=lambda c: c.key)),
                receipts=tuple((r.principal_id, r.key, r.receipt)
                               for r in map(_receipt_from_row, receipts)))
        except _DECODING_ERRORS as error:
            raise self._unreadable("an audit record, a counter or a receipt", error) from error
