"""The way back on SQLite: tiers ``email_index`` and ``notices`` (schema version 4).

The accounts by the key of their address on record, and the delivery
state of each notice with the last outbox position turned into notices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.ports.storage import AccountRecord
from account_merge.storage.sqlite.errors import _DECODING_ERRORS
from account_merge.storage.sqlite.rows import (
    _RECORD_COLUMNS,
    _optional_time,
    _outbox_entry_from_row,
    _parse_optional_time,
    _record_from_row,
)
from account_merge.storage.sqlite.unit_of_work import _CoreUnitOfWork

# -- the way back: tiers email_index and notices ---------------------------------
_INDEX_EMAIL = ("INSERT INTO email_index (account_id, key) VALUES (?, ?)"
                " ON CONFLICT (account_id) DO UPDATE SET key = excluded.key")
_UNINDEX_EMAIL = "DELETE FROM email_index WHERE account_id = ?"
_BY_EMAIL = (f"SELECT {_RECORD_COLUMNS} FROM email_index AS e"
             " JOIN accounts AS a ON a.id = e.account_id"
             " LEFT JOIN credentials AS c ON c.account_id = a.id"
             " WHERE e.key = ? ORDER BY e.account_id LIMIT ?")
_NOTICE_COLUMNS = "id, position, role, status, attempts, updated_at"
_ADD_NOTICE = (f"INSERT INTO notices ({_NOTICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
               " ON CONFLICT (id) DO NOTHING")
_UPDATE_NOTICE = ("UPDATE notices SET position = ?2, role = ?3, status = ?4, attempts = ?5,"
                  " updated_at = ?6 WHERE id = ?1")
_RAISE_CURSOR = ("INSERT INTO notice_cursor (one, position) VALUES (1, ?)"
                 " ON CONFLICT (one) DO UPDATE SET position = max(position, excluded.position)")
_PENDING = ("SELECT n.id, n.position, n.role, n.status, n.attempts, n.updated_at,"
            " o.position, o.name, o.payload, o.published"
            " FROM notices AS n JOIN outbox AS o ON o.position = n.position"
            " WHERE n.status = 'pending' ORDER BY n.position, n.id LIMIT ?")
_NOTICE_STATUSES: Final = {status.value: status for status in NoticeStatus}


def _notice_values(state: NoticeState) -> tuple[Any, ...]:
    return (state.id, state.position, state.role, state.status.value, state.attempts,
            _optional_time(state.updated_at))


def _notice_from_row(row: Sequence[Any]) -> NoticeState:
    return NoticeState(id=row[0], position=row[1], role=row[2],
                       status=_NOTICE_STATUSES[row[3]], attempts=row[4],
                       updated_at=_parse_optional_time(row[5]))



class _RecoveryTier(_CoreUnitOfWork):
    """Tiers ``email_index`` and ``notices`` of the unit of work."""

    # tier email_index -------------------------------------------------------------
    def index_email(self, account_id: str, key: str | None) -> None:
        connection = self._connection()
        with self._storage._translating():
            if key is None:
                connection.execute(_UNINDEX_EMAIL, (account_id,))
            else:
                connection.execute(_INDEX_EMAIL, (account_id, key))

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(_BY_EMAIL, (key, max(0, limit))).fetchall()
        try:
            return [_record_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an account", error) from error

    # tier notices -------------------------------------------------------------------
    def notice_cursor(self) -> int:
        connection = self._connection()
        with self._storage._translating():
            row = connection.execute("SELECT position FROM notice_cursor WHERE one = 1"
                                     ).fetchone()
        return 0 if row is None else int(row[0])

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(
                "SELECT position, name, payload, published FROM outbox WHERE position > ?"
                " ORDER BY position LIMIT ?", (position, max(0, limit))).fetchall()
        try:
            return [_outbox_entry_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an outbox event", error) from error

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        connection = self._connection()
        with self._storage._translating():
            connection.executemany(_ADD_NOTICE, [_notice_values(s) for s in states])
            connection.execute(_RAISE_CURSOR, (cursor,))

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(_PENDING, (max(0, limit),)).fetchall()
        try:
            return [(_notice_from_row(row), _outbox_entry_from_row(row[6:])) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("a notice", error) from error

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        connection = self._connection()
        with self._storage._translating():
            connection.executemany(_UPDATE_NOTICE, [_notice_values(s) for s in states])
