"""The audit records of failures in the journal: appended in place, read back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from account_merge.domain.audit import AuditRecord
from account_merge.storage.attempts.rows import _AUDIT_COLUMNS, JournalRecord, _record
from account_merge.storage.attempts.transaction_base import TransactionBase

_APPEND_AUDIT: Final = (
    "INSERT INTO audit (namespace, main_seq, at, action, outcome, actor, account_id, login,"
    " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LAST_MAIN_SEQ: Final = "SELECT main_seq FROM audit WHERE namespace = ? ORDER BY seq DESC LIMIT 1"
_AUDIT_ALL: Final = (f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE namespace = ?1"
                     " ORDER BY seq DESC LIMIT ?2")
# Each half walks its own index backwards and stops at the limit.
_AUDIT_OF: Final = (
    f"SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE namespace = ?1"
    " AND account_id = ?3 ORDER BY seq DESC LIMIT ?2)"
    f" UNION SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE namespace = ?1"
    " AND actor = ?3 ORDER BY seq DESC LIMIT ?2)"
    " ORDER BY seq DESC LIMIT ?2"
)


class FailureMethods(TransactionBase):
    """The audit trail of a :class:`~account_merge.storage.attempts.JournalTransaction`."""

    def append_failures(self, failures: Sequence[tuple[int, AuditRecord]]) -> None:
        """Append records of failures, each after the database's record it follows.

        *failures* are ``(main_seq, record)`` (see :meth:`Attempts.placed`);
        a record never falls before one the journal already holds.
        """
        if not failures:
            return
        connection = self._begun()
        with self._translating():
            row = connection.execute(_LAST_MAIN_SEQ, (self._namespace,)).fetchone()
            floor = row[0] if row is not None else 0
            values = []
            for main_seq, record in failures:
                floor = max(floor, main_seq)
                values.append((self._namespace, floor, record.at.isoformat(),
                               record.action.value, record.outcome, record.actor,
                               record.account_id, record.login, record.detail))
            connection.executemany(_APPEND_AUDIT, values)

    def audit_records(self, account_id: str | None, limit: int) -> list[JournalRecord]:
        """The last *limit* records (about *account_id* if given), oldest first."""
        limit = max(0, limit)
        if limit == 0:
            return []
        connection = self._begun()
        with self._translating():
            if account_id is None:
                rows = connection.execute(_AUDIT_ALL, (self._namespace, limit)).fetchall()
            else:
                rows = connection.execute(_AUDIT_OF,
                                          (self._namespace, limit, account_id)).fetchall()
        with self._decoding("an audit record"):
            return [JournalRecord(main_seq=row[1], seq=row[0], record=_record(row))
                    for row in reversed(rows)]
