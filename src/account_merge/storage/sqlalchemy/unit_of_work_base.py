"""Where a SQLAlchemy unit of work runs, and how its errors are translated.

:class:`UnitOfWorkBase` opens and ends the transaction (engine mode), the
savepoint and side connection (session mode) and the attempts journal's
transaction (SQLite); see :mod:`~account_merge.storage.sqlalchemy.unit_of_work`.
Its subclasses, the core tier there and the optional tiers in
:mod:`~account_merge.storage.sqlalchemy.tier_methods`, run statements on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Transaction
from sqlalchemy.orm import Session, SessionTransaction

from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    InvalidInput,
    StorageError,
)
from account_merge.storage.attempts import AttemptsJournal, JournalTransaction
from account_merge.storage.sqlalchemy.connections import (
    BEGIN_IMMEDIATE,
    SIDE_LOCK_TIMEOUT,
    milliseconds,
)
from account_merge.storage.sqlalchemy.errors import store_name
from account_merge.storage.sqlalchemy.postgres import PostgresStatements

if TYPE_CHECKING:
    from account_merge.storage.sqlalchemy.store import SQLAlchemyStorage

__all__ = ["UnitOfWorkBase"]


class UnitOfWorkBase:
    """The transaction of a unit of work, and the connections it runs on."""

    def __init__(self, storage: SQLAlchemyStorage, *, write: bool) -> None:
        self._s = storage
        self._write = write
        self._open = False
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._session: Session | None = None
        self._tx: Transaction | SessionTransaction | None = None
        self._side: Connection | None = None
        self._side_tx: Transaction | None = None
        self._uses_side = False
        self._journal: AttemptsJournal | None = None
        self._journal_tx: JournalTransaction | None = None
        self._pg: PostgresStatements | None = None
        self._failed: AccountMergeError | None = None
        self._url: URL | None = None
        self._wrote = False

    # transaction -----------------------------------------------------------
    def __enter__(self) -> Self:
        if self._open:
            raise RuntimeError("this unit of work is already open")
        storage = self._s
        engine = storage._bind_engine()
        self._engine = engine
        self._url = engine.url
        dialect = engine.dialect.name
        self._pg = storage._statements(engine.dialect) if dialect == "postgresql" else None
        self._uses_side = storage._engine is None and self._pg is not None
        self._journal = storage._journal(engine) if dialect == "sqlite" else None
        self._journal_tx = None
        self._failed = None
        self._tx = None
        self._side_tx = None
        with self._translating():
            if storage._engine is not None:
                conn = engine.connect()
                if self._write and dialect == "sqlite":
                    conn.execution_options(**{BEGIN_IMMEDIATE: True})
                self._conn = conn
            else:
                self._session = storage._current_session()
                if (self._write and dialect == "sqlite"
                        and not self._session.in_transaction()):
                    # The session's own transaction will begin IMMEDIATE.
                    self._session.connection(execution_options={BEGIN_IMMEDIATE: True})
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._pg is not None and not self._wrote and self._failed is None:
                # Nothing written: end it with COMMIT, which keeps what psycopg
                # prepared on the connection (a ROLLBACK makes it drop them all).
                self.commit()
            else:
                self.rollback()
        except AccountMergeError:
            if exc is None:
                raise
        finally:
            self._open = False
            conn, self._conn = self._conn, None
            side, self._side = self._side, None
            if conn is not None and self._session is None:
                conn.close()  # back to the pool; a session's connection is the host's
            if side is not None:
                side.close()
            self._session = None

    def commit(self) -> None:
        self._check_usable()
        try:
            # The journal first: if it cannot commit, the database's transaction
            # (or savepoint) is rolled back too.
            if self._journal_tx is not None:
                self._journal_tx.commit()
        except AccountMergeError as error:
            self._fail(error)
            raise
        with self._translating():
            # The side transaction first: if it cannot commit, the savepoint
            # is rolled back too, and nothing reaches the host's transaction.
            if self._side_tx is not None:
                self._side_tx.commit()
                self._side_tx = None
            if self._tx is not None:
                self._tx.commit()
                self._tx = None
        self._wrote = False

    def rollback(self) -> None:
        side_tx, self._side_tx = self._side_tx, None
        tx, self._tx = self._tx, None
        self._failed = None
        self._wrote = False
        with self._translating():
            try:
                if side_tx is not None and side_tx.is_active:
                    side_tx.rollback()
                if self._journal_tx is not None:
                    self._journal_tx.rollback()
            finally:
                if tx is not None and tx.is_active:
                    tx.rollback()

    def _check_usable(self) -> None:
        if not self._open:
            raise RuntimeError("use the unit of work in a 'with' block")
        if self._failed is not None:
            message = f"an earlier statement failed ({self._failed.message}); roll back"
            if isinstance(self._failed, StorageError):
                raise StorageError(self._failed.store, message)
            raise ConcurrentUpdate(message)

    def _c(self) -> Connection:
        """The connection, in a transaction (or savepoint) begun if needed."""
        self._check_usable()
        if self._tx is None:
            if self._session is not None:
                # The host's pending rows are flushed before the savepoint, out of
                # the translation: if one fails, the error is the host's own
                # (SQLAlchemy's IntegrityError...), raised as is, and nothing of
                # the library's was attempted.  Its session then needs the host's
                # rollback, as after any failed flush.
                self._session.flush()
            with self._translating():
                if self._session is not None:
                    self._tx = self._session.begin_nested()
                    self._conn = self._session.connection()
                else:
                    assert self._conn is not None
                    self._tx = self._conn.begin()
        assert self._conn is not None
        return self._conn

    def _side_c(self) -> Connection:
        """The side connection (session mode on PostgreSQL), in a transaction begun if needed."""
        self._check_usable()
        if self._side_tx is None:
            with self._translating():
                if self._side is None:
                    assert self._engine is not None
                    self._side = self._engine.connect()
                self._side_tx = self._side.begin()
        assert self._side is not None
        return self._side

    def _journal_c(self) -> JournalTransaction:
        """This unit of work's transaction of the attempts journal (SQLite, rule 6).

        The database's transaction begins first (its write lock, in a
        writing unit of work), then the journal's: always in that order.
        """
        self._c()
        assert self._journal is not None
        if self._journal_tx is None:
            self._journal_tx = self._journal.transaction(
                self._s._journal_namespace, write=self._write, legacy=self._kept_throttles)
        return self._journal_tx

    def _kept_throttles(self) -> list[ThrottleState]:
        """The counters kept in the database before the journal (which adopts them once)."""
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._core.kept_throttles(conn)

    @contextmanager
    def _journaling(self) -> Iterator[None]:
        """An error of the journal fails the unit of work, as a driver error does."""
        try:
            yield
        except AccountMergeError as error:
            self._fail(error)
            raise

    def _timeout(self, *, side: bool = False) -> str | None:
        """The lock_timeout a statement of this unit of work sets, if any."""
        if not self._write:
            return None
        seconds = self._s._lock_timeout
        if side:
            # Bounded even without a lock_timeout: the side connection and the
            # session's are two backends to the server, which cannot see a
            # deadlock running through this thread.
            seconds = seconds or SIDE_LOCK_TIMEOUT
        return milliseconds(seconds) if seconds else None

    @contextmanager
    def _translating(self, *, inserting: bool = False) -> Iterator[None]:
        try:
            yield
        except sa_exc.DBAPIError as error:
            translated = self._s._translate(error, self._url, inserting=inserting)
            self._fail(translated)
            raise translated from error.orig
        except sa_exc.TimeoutError as error:
            translated = StorageError(store_name(self._url), f"no connection available: {error}")
            self._fail(translated)
            raise translated from None

    def _fail(self, error: AccountMergeError) -> None:
        """Roll back now (releasing locks early) and refuse further work."""
        self._failed = error
        if self._journal_tx is not None:
            with suppress(AccountMergeError):
                self._journal_tx.rollback()
        for tx in (self._side_tx, self._tx):
            if tx is not None and tx.is_active:
                with suppress(sa_exc.SQLAlchemyError):  # the connection may be gone
                    tx.rollback()
        self._tx = self._side_tx = None

    def _run(self, conn: Connection, statement: tuple[str, dict[str, Any]], *,
             inserting: bool = False) -> Any:
        with self._translating(inserting=inserting):
            return conn.exec_driver_sql(*statement).first()

    @contextmanager
    def _decoding(self) -> Iterator[None]:
        """A row the domain refuses is a ``StorageError`` (rule 3)."""
        try:
            yield
        except (InvalidInput, ValueError, TypeError) as error:
            raise StorageError(store_name(self._url),
                               f"a stored row cannot be read: {error}") from None
