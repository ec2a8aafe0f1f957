"""A transaction of the attempts journal: begun, ended, and its errors translated.

:class:`TransactionBase` is what :mod:`.counters`, :mod:`.failures` and
:mod:`.retention` build on; :class:`~account_merge.storage.attempts.JournalTransaction`
puts them together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, StorageError
from account_merge.storage.sqlite.errors import _translate

if TYPE_CHECKING:
    from account_merge.storage.attempts.journal import AttemptsJournal


class TransactionBase:
    """What every part of a :class:`~account_merge.storage.attempts.JournalTransaction` uses."""

    def __init__(self, journal: AttemptsJournal, namespace: str, *, write: bool,
                 legacy: Callable[[], Iterable[ThrottleState]] | None = None) -> None:
        self._journal = journal
        self._namespace = namespace
        self._write = write
        self._legacy = legacy
        self._connection: sqlite3.Connection | None = None
        self._failed: AccountMergeError | None = None

    @property
    def active(self) -> bool:
        """True while a transaction is open."""
        return self._connection is not None

    def _begun(self) -> sqlite3.Connection:
        self._check_usable()
        if self._connection is not None:
            return self._connection
        journal = self._journal
        local = journal._local
        with self._translating():
            connection = journal._connection()
            if local.owner is not None:
                raise RuntimeError("a unit of work on this database is already open in this "
                                   "thread; finish it before opening another")
            if self._legacy is not None:
                journal._adopt(connection, self._namespace, self._legacy)
            connection.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
        local.owner = self
        self._connection = connection
        return connection

    def _check_usable(self) -> None:
        failed = self._failed
        if failed is None:
            return
        message = f"an earlier statement of the journal failed ({failed.message}); roll back"
        if isinstance(failed, StorageError):
            raise StorageError(failed.store, message)
        raise ConcurrentUpdate(message)

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            failure = _translate(error, self._journal._name(), self._journal.busy_timeout)
            self._end("ROLLBACK", quiet=True)  # releases the journal's lock now
            self._failed = failure
            raise failure from error

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        try:
            yield
        except (AccountMergeError, ValueError, KeyError, TypeError, IndexError) as error:
            if isinstance(error, StorageError):
                raise
            raise StorageError(self._journal._name(), f"holds {what} that cannot be read "
                                                      f"({type(error).__name__})") from error

    def _end(self, statement: str, *, quiet: bool = False) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        self._journal._local.owner = None
        try:
            if connection.in_transaction:
                connection.execute(statement)
        except sqlite3.Error:
            if not quiet:
                raise
            try:  # the journal's lock must not outlive a failed statement
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            except sqlite3.Error:
                connection.close()
                self._journal._local.connection = None

    def commit(self) -> None:
        """Make what this transaction wrote durable (first, before the database's commit)."""
        self._check_usable()
        with self._translating():
            self._end("COMMIT")

    def rollback(self) -> None:
        """Forget what this transaction wrote; the transaction may be used again."""
        self._failed = None
        with self._translating():
            self._end("ROLLBACK")
