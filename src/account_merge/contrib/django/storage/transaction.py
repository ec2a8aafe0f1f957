"""The unit of work's transaction: the main one, the side one, the journal's.

Beginning (the write lock at once on SQLite), committing the side
transaction or the attempts journal's first, rolling all back, and
turning database errors and unreadable rows into the library's errors;
the core tier and the optional tiers build on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.errors import _describe, _translate
from account_merge.contrib.django.storage.rows import _throttle_from_row
from account_merge.contrib.django.storage.side import _side_alias
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, StorageError
from account_merge.storage.attempts import JournalTransaction

if TYPE_CHECKING:
    from account_merge.contrib.django.storage.store import DjangoStorage

#: The app's rows in an attempts journal, beside other stores' (SQLite).
_JOURNAL_NAMESPACE: Final = f"django:{m.Throttle._meta.db_table}"


def _lock_number(namespace: str, key: str) -> int:
    """A signed 64-bit advisory lock number for *key* (collisions only serialise more)."""
    digest = hashlib.blake2b(f"account_merge:{namespace}:{key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class _DjangoTransaction:
    """One transaction (or savepoint), and its side transaction when it needs one."""

    def __init__(self, storage: DjangoStorage, *, write: bool) -> None:
        self._storage = storage
        self._write = write
        self._alias: str | None = None
        self._connection: BaseDatabaseWrapper | None = None
        self._atomic: transaction.Atomic | None = None
        self._side: str | None = None
        self._side_atomic: transaction.Atomic | None = None
        self._journal_tx: JournalTransaction | None = None
        self._hosted: bool | None = None  # decided when a transaction begins
        # (merged_into, merged_seq) of the accounts this transaction locked, and of
        # those they absorbed: replacing them needs no read of them again.
        self._locked: dict[str, tuple[str | None, int | None]] = {}

    # transaction ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._alias is not None:
            raise RuntimeError("this unit of work is already open")
        alias = self._storage.alias(write=self._write)
        self._alias = alias
        try:
            self._connection = connections[alias]
            if self._write and self._connection.vendor == "sqlite":
                self._main()  # the write lock, at once
        except BaseException:
            self._alias = self._connection = None
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._end(commit=False)
        except AccountMergeError:
            # An error already leaving the block says more than this one.
            if exc is None:
                raise
        finally:
            self._alias = self._connection = None

    def commit(self) -> None:
        if self._alias is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        self._end(commit=True)

    def rollback(self) -> None:
        self._end(commit=False)

    @property
    def _conn(self) -> BaseDatabaseWrapper:
        if self._alias is None or self._connection is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        return self._connection

    @property
    def _postgres(self) -> bool:
        return self._conn.vendor == "postgresql"

    def _is_hosted(self) -> bool:
        """True if this transaction runs inside one the host opened (decided as it begins)."""
        if self._hosted is None:
            conn = self._conn
            self._hosted = bool(conn.in_atomic_block) or (
                conn.connection is not None and not conn.get_autocommit())
        return self._hosted

    def _uses_side(self) -> bool:
        return self._postgres and self._is_hosted()

    def _uses_journal(self) -> bool:
        """On SQLite, always: the counters of a database are in one place for all its stores."""
        return self._conn.vendor == "sqlite"

    def _journal(self) -> JournalTransaction:
        """This unit of work's transaction of the attempts journal (SQLite, rule 6)."""
        self._main()  # the database's write lock first, then the journal's: one order
        if self._journal_tx is None:
            self._journal_tx = self._storage._journal_of(self._conn).transaction(
                _JOURNAL_NAMESPACE, write=self._write, legacy=self._kept_throttles)
        return self._journal_tx

    def _kept_throttles(self) -> list[ThrottleState]:
        """The counters kept in the database before the journal (which adopts them once)."""
        with self._translating():
            rows = list(m.Throttle.objects.using(self._main()).filter(
                Q(consecutive__gt=0) | Q(last_failure_at__isnull=False)))
        with self._decoding("a throttle state"):
            return [_throttle_from_row(row) for row in rows]

    def _main(self) -> str:
        """The alias of the main connection, in this unit of work's transaction."""
        conn = self._conn
        if self._atomic is None:
            self._is_hosted()
            atomic = transaction.atomic(using=self._alias)
            with self._translating():
                atomic.__enter__()
            self._atomic = atomic
            if self._write and conn.vendor == "sqlite":
                try:
                    with self._translating():
                        self._take_sqlite_write_lock()
                except BaseException:
                    with suppress(AccountMergeError):
                        self._end(commit=False)
                    raise
        assert self._alias is not None
        return self._alias

    def _counters(self) -> str:
        """The alias counters and audit records of failures go through (rule 6)."""
        if not self._uses_side():
            return self._main()
        if self._side_atomic is None:
            with self._translating():
                side = _side_alias(self._conn)
                atomic = transaction.atomic(using=side)
                atomic.__enter__()
                self._side, self._side_atomic = side, atomic
                millis = max(1, round(self._storage.side_lock_timeout * 1000))
                with connections[side].cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = {millis}")
        assert self._side is not None
        return self._side

    def _take_sqlite_write_lock(self) -> None:
        """Take the write lock now, as ``BEGIN IMMEDIATE`` would.

        A write as the first statement of the transaction waits for the
        lock (up to the connection's timeout) before reading anything, so
        no snapshot can go stale before this unit of work writes.
        """
        conn = self._conn
        if getattr(conn, "transaction_mode", None) in {"IMMEDIATE", "EXCLUSIVE"}:
            return
        table = conn.ops.quote_name(m.Establishment._meta.db_table)
        with conn.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET name = name WHERE 0 = 1")

    def _end(self, *, commit: bool) -> None:
        """Commit (the side transaction first) or roll back both; the next statement begins anew."""
        side, side_atomic, self._side, self._side_atomic = (self._side, self._side_atomic,
                                                             None, None)
        atomic, self._atomic = self._atomic, None
        journal = self._journal_tx
        self._hosted = None
        self._locked = {}
        try:
            if side_atomic is not None:
                with self._translating():
                    if not commit:
                        transaction.set_rollback(True, using=side)
                    side_atomic.__exit__(None, None, None)
            if journal is not None:
                if commit:
                    journal.commit()
                else:
                    journal.rollback()
        except BaseException:
            if journal is not None and commit:
                with suppress(AccountMergeError):
                    journal.rollback()
            # The side transaction could not commit: nothing reaches the host's either.
            if atomic is not None:
                with suppress(DatabaseError):
                    transaction.set_rollback(True, using=self._alias)
                    atomic.__exit__(None, None, None)
            raise
        if atomic is not None:
            with self._translating():
                if not commit:
                    transaction.set_rollback(True, using=self._alias)
                atomic.__exit__(None, None, None)

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except DatabaseError as error:
            raise _translate(error, self._conn) from error

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turn a row the domain refuses into a StorageError naming the database."""
        try:
            yield
        except (AccountMergeError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, StorageError):
                raise
            raise StorageError(_describe(self._conn),
                               f"holds {what} that cannot be read ({type(error).__name__}: "
                               f"{error})") from error

    def _advisory_locks(self, db: str, namespace: str, keys: Sequence[str]) -> None:
        """On PostgreSQL: lock *keys*, in this order, until the transaction ends."""
        if not keys:
            return
        numbers = [_lock_number(namespace, key) for key in keys]
        with connections[db].cursor() as cursor:
            # unnest() yields the array in order: the locks are taken in key order.
            cursor.execute("SELECT pg_advisory_xact_lock(n) FROM unnest(%s::bigint[]) AS n",
                           [numbers])
