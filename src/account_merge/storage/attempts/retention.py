"""Retention's part of the journal: forgetting accounts, ending records and counters."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from account_merge.domain.audit import AuditRecord
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    Forgotten,
    ascii_lower,
    names_someone,
    pseudonymised,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.storage.attempts.rows import (
    _AUDIT_COLUMNS,
    _SELECT_THROTTLES,
    JournalRecord,
    _record,
    _throttle,
)
from account_merge.storage.attempts.transaction_base import TransactionBase


class RetentionMethods(TransactionBase):
    """Retention's part of a :class:`~account_merge.storage.attempts.JournalTransaction`."""

    def _records(self, where: str, parameters: Sequence[Any]) -> list[tuple[int, AuditRecord]]:
        connection = self._begun()
        with self._translating():
            rows = connection.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE namespace = ? AND ({where})"
                " ORDER BY seq", (self._namespace, *parameters)).fetchall()
        with self._decoding("an audit record"):
            return [(row[0], _record(row)) for row in rows]

    def _naming(self, forgotten: Forgotten) -> list[tuple[int, AuditRecord]]:
        """The records of this namespace that name the accounts of *forgotten*."""
        ids, logins = forgotten.account_ids, [ascii_lower(t) for t in forgotten.logins]
        found: dict[int, AuditRecord] = {}
        # One query per index (an OR of them would scan the table); the indexes are
        # partial: each query repeats its WHERE.
        marks, login_marks = ", ".join("?" * len(ids)), ", ".join("?" * len(logins))
        for condition, parameters in (
                (f"account_id IS NOT NULL AND account_id IN ({marks})", ids),
                (f"actor IS NOT NULL AND actor IN ({marks})", ids),
                (f"login IS NOT NULL AND lower(login) IN ({login_marks})", logins)):
            if parameters:
                found.update(self._records(condition, parameters))
        return sorted(found.items())

    def _rewrite(self, records: Sequence[tuple[int, AuditRecord | None]]) -> None:
        """Replace (or delete, for None) these records, by ``seq``."""
        connection = self._begun()
        with self._translating():
            connection.executemany("DELETE FROM audit WHERE seq = ?",
                                   [(seq,) for seq, record in records if record is None])
            connection.executemany(
                "UPDATE audit SET at = ?, action = ?, outcome = ?, actor = ?, account_id = ?,"
                " login = ?, detail = ? WHERE seq = ?",
                [(r.at.isoformat(), r.action.value, r.outcome, r.actor, r.account_id, r.login,
                  r.detail, seq) for seq, r in records if r is not None])

    def _counter_keys(self, forgotten: Forgotten) -> list[str]:
        connection = self._begun()
        keys = list(forgotten.counter_keys)
        with self._translating():
            for prefix in forgotten.counter_prefixes:
                keys += [row[0] for row in connection.execute(
                    "SELECT key FROM throttles WHERE namespace = ? AND key >= ? AND key < ?",
                    (self._namespace, prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))]
        return keys

    def forget(self, forgotten: Forgotten, establishments: Mapping[str, str]) -> None:
        """Pseudonymise the records naming the accounts of *forgotten*, drop their counters.

        *establishments* gives the establishment of each of its accounts
        (the journal keeps no accounts).
        """
        changed: list[tuple[int, AuditRecord | None]] = [
            (seq, pseudonymised(record, establishments.get(record.account_id or "")))
            for seq, record in self._naming(forgotten)]
        for at, account_id in forgotten.created:
            changed += [(seq, attrs.evolve(r, detail=(r.detail or "").replace(
                account_id, DELETED_ACCOUNT))) for seq, r in self._records(
                "julianday(at) = julianday(?) AND instr(detail, ?) > 0",
                (at.isoformat(), account_id))]
        self._rewrite(changed)
        keys = self._counter_keys(forgotten)
        connection = self._begun()
        with self._translating():
            connection.executemany("DELETE FROM throttles WHERE namespace = ? AND key = ?",
                                   [(self._namespace, key) for key in keys])

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool,
                  establishments: Callable[[Sequence[str]], Mapping[str, str]]) -> int:
        """End at most *limit* records written before *before* (see the retention tier).

        *establishments* gives the establishment of accounts by id.
        """
        if limit <= 0:
            return 0
        connection = self._begun()
        with self._translating():
            rows = connection.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE namespace = ?"
                " AND julianday(at) < julianday(?) ORDER BY julianday(at), seq",
                (self._namespace, before.isoformat()))
            due: list[tuple[int, AuditRecord]] = []
            with self._decoding("an audit record"):
                for row in rows:
                    record = _record(row)
                    if not pseudonymise or names_someone(record):
                        due.append((row[0], record))
                        if len(due) >= limit:
                            break
        if not pseudonymise:
            self._rewrite([(seq, None) for seq, _ in due])
            return len(due)
        found = establishments(sorted({r.account_id for _, r in due if r.account_id}))
        self._rewrite([(seq, pseudonymised(r, found.get(r.account_id or "")))
                       for seq, r in due])
        return len(due)

    def delete_counters(self, before: datetime, limit: int) -> int:
        """Delete at most *limit* counters at rest since before *before*; how many."""
        connection = self._begun()
        with self._translating():
            return connection.execute(
                "DELETE FROM throttles WHERE namespace = ?1 AND key IN (SELECT key FROM throttles"
                " WHERE namespace = ?1 AND (julianday(last_failure_at) IS NULL"
                " OR julianday(last_failure_at) < julianday(?2)) LIMIT ?3)",
                (self._namespace, before.isoformat(), max(0, limit))).rowcount

    def held_about(self, forgotten: Forgotten) -> tuple[list[JournalRecord],
                                                        list[ThrottleState]]:
        """The records and counters of this namespace that *forgotten* names."""
        records = dict(self._naming(forgotten))
        for at, account_id in forgotten.created:
            records.update(self._records("julianday(at) = julianday(?) AND instr(detail, ?) > 0",
                                         (at.isoformat(), account_id)))
        keys = self._counter_keys(forgotten)
        connection = self._begun()
        with self._translating():
            main_seqs = dict(connection.execute(
                f"SELECT seq, main_seq FROM audit WHERE seq IN ({', '.join('?' * len(records))})",
                list(records)).fetchall()) if records else {}
            counters = connection.execute(
                _SELECT_THROTTLES.format(marks=", ".join("?" * len(keys))),
                (self._namespace, *keys)).fetchall() if keys else []
        with self._decoding("a throttle state"):
            return ([JournalRecord(main_seq=main_seqs[seq], seq=seq, record=record)
                     for seq, record in sorted(records.items())],
                    sorted((_throttle(row) for row in counters), key=lambda c: c.key))
