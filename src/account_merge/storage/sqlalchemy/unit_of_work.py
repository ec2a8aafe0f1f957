"""The unit of work of SQLAlchemyStorage: one transaction, or one savepoint of the host's.

What runs on a connection comes from
:mod:`~account_merge.storage.sqlalchemy.postgres` (one statement per step
on PostgreSQL) or :mod:`~account_merge.storage.sqlalchemy.portable`
(SQLAlchemy Core on SQLite); the unit of work decides *where* it runs:

- **engine mode**: a connection checked out of the pool, one transaction
  on it, begun by the first statement;
- **session mode**: a SAVEPOINT of the host's session; on PostgreSQL the
  record of failed attempts (rule 6 of :mod:`account_merge.ports.storage`:
  counters read, counted or written, and the audit records of failures)
  goes through a *side connection* of the unit of work, committed by its
  ``commit()`` before the savepoint is released, so a host rolling back
  cannot erase it.

On SQLite, in both modes, the record of failed attempts goes to the
attempts journal (:mod:`account_merge.storage.attempts`), a file of its
own beside the database, in a transaction of the unit of work's that
``commit()`` commits first; the rest is written to the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs
from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Transaction
from sqlalchemy.orm import Session, SessionTransaction

from account_merge.domain.audit import AuditRecord
from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState
from account_merge.domain.retention import Forgotten
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    ExpectationFailed,
    InvalidInput,
    LoginTaken,
    StorageError,
)
from account_merge.ports.register import (
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.storage.attempts import (
    AttemptsJournal,
    JournalTransaction,
    merge_trails,
    split_attempts,
)
from account_merge.storage.bulk import BulkAccount
from account_merge.storage.sqlalchemy.connections import (
    BEGIN_IMMEDIATE,
    SIDE_LOCK_TIMEOUT,
    milliseconds,
)
from account_merge.storage.sqlalchemy.errors import store_name
from account_merge.storage.sqlalchemy.postgres import ApplyOutcome, PostgresStatements

if TYPE_CHECKING:
    from account_merge.storage.sqlalchemy.store import SQLAlchemyStorage

__all__ = ["SQLAlchemyUnitOfWork", "check_outcome"]

#: The audit outcome that rides on the host's transaction in session mode.
_SUCCESS = "success"


def check_outcome(outcome: ApplyOutcome) -> None:
    """Raise ``ExpectationFailed`` if the preconditions of a change set did not hold."""
    if not outcome.expected:
        raise ExpectationFailed()
    if not outcome.present:
        raise ExpectationFailed("an account to replace is not stored")


class SQLAlchemyUnitOfWork:
    """One transaction (engine mode) or one savepoint (session mode) at a time.

    After ``commit()`` or ``rollback()`` the unit of work stays usable: the
    next statement begins a new transaction (or savepoint).  After a
    driver error the transaction is rolled back and every further call
    fails until ``rollback()`` or the end of the ``with`` block, so that
    nothing written before the error can be committed by mistake.
    """

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

    # reading ---------------------------------------------------------------
    def fetch(self, request: Fetch) -> Fetched:
        if self._pg is None:
            conn = self._c()
            if self._journal is None or not (request.throttles or request.count):
                with self._translating(), self._decoding():
                    return self._s._core.fetch(conn, request)
            # The counters from the journal; the rest from the database.
            with self._journaling():
                throttles = self._journal_c().fetch(request)
            with self._translating(), self._decoding():
                fetched = self._s._core.fetch(conn, attrs.evolve(request, throttles=(),
                                                                 count=()))
            return attrs.evolve(fetched, throttles=throttles)
        if not self._uses_side or not (request.throttles or request.count):
            return self._pg_fetch(self._c, request, side=False)
        # Session mode: counters on the side connection, first (counters, then accounts).
        counters = Fetch(throttles=request.throttles, count=request.count, at=request.at,
                         keep=request.keep, lock=request.lock)
        found = self._pg_fetch(self._side_c, counters, side=True)
        rest = attrs.evolve(request, throttles=(), count=())
        if not (rest.logins or rest.accounts or rest.links or rest.absorbed or rest.receipts
                or rest.establishments):
            return found
        fetched = self._pg_fetch(self._c, rest, side=False)
        return attrs.evolve(fetched, throttles=found.throttles)

    def _pg_fetch(self, connection: Callable[[], Connection], request: Fetch, *,
                  side: bool) -> Fetched:
        assert self._pg is not None
        lock = self._write and request.lock
        self._wrote = self._wrote or bool(request.count) or (lock and bool(request.throttles))
        statement = self._pg.fetch(request, lock=lock, timeout=self._timeout(side=side))
        fetched, stale = self._read(connection(), statement, request)
        if stale:
            # A lock was waited for: read again, in a new snapshot, under the locks
            # now held; the counts are not made twice, and keep what they found.
            again = attrs.evolve(request, count=())
            fetched_again, _ = self._read(
                connection(), self._pg.fetch(again, lock=lock, timeout=None), again)
            fetched = attrs.evolve(fetched_again, throttles={
                **fetched_again.throttles, **{k: fetched.throttles[k] for k in request.count}})
        return fetched

    def _read(self, conn: Connection, statement: tuple[str, dict[str, Any]],
              request: Fetch) -> tuple[Fetched, bool]:
        assert self._pg is not None
        row = self._run(conn, statement)
        with self._decoding():
            return self._pg.read_fetched(row, request)

    @contextmanager
    def _decoding(self) -> Iterator[None]:
        """A row the domain refuses is a ``StorageError`` (rule 3)."""
        try:
            yield
        except (InvalidInput, ValueError, TypeError) as error:
            raise StorageError(store_name(self._url),
                               f"a stored row cannot be read: {error}") from None

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._core.unpublished(conn, limit)

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        conn = self._c()
        if self._journal is None:
            with self._translating(), self._decoding():
                return self._s._core.audit_records(conn, account_id, limit)
        with self._translating(), self._decoding():
            main = self._s._core.audit_entries(conn, account_id, limit)
        # The journal's records of failures, in their places among the database's.
        with self._journaling():
            return merge_trails(main, self._journal_c().audit_records(account_id, limit),
                                limit)

    # writing ---------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        self._wrote = True
        if self._pg is None:
            conn = self._c()
            rest, journaled = split_attempts(changes) if self._journal is not None \
                else (changes, None)
            if not journaled:
                with self._translating(inserting=True):
                    self._s._core.apply(conn, rest, self._url)
                return
            # Counters and records of failures to the journal; each failure
            # remembers which of the database's records it follows.
            core = self._s._core
            with self._translating(inserting=True):
                before = core.last_audit_seq(conn) if journaled.failures else 0
                core.apply(conn, rest, self._url)
                after = core.last_audit_seq(conn) if journaled.failures and rest.audit \
                    else before
            with self._journaling():
                journal = self._journal_c()
                journal.put_throttles(journaled.throttles)
                journal.append_failures(journaled.placed(before, after, len(rest.audit)))
            return
        if not self._uses_side:
            self._pg_apply(self._c, changes, side=False)
            return
        # Session mode: what records failed attempts goes through the side connection.
        failures = tuple(r for r in changes.audit if r.outcome != _SUCCESS)
        attempts = ChangeSet(throttles=changes.throttles, audit=failures)
        rest = attrs.evolve(changes, throttles=(),
                            audit=tuple(r for r in changes.audit if r.outcome == _SUCCESS))
        if rest:
            self._pg_apply(self._c, rest, side=False)
        if attempts:
            self._pg_apply(self._side_c, attempts, side=True)

    def _pg_apply(self, connection: Callable[[], Connection], changes: ChangeSet, *,
                  side: bool) -> None:
        assert self._pg is not None
        statement = self._pg.apply(changes, timeout=self._timeout(side=side))
        conn = connection()
        if statement is not None:
            check_outcome(PostgresStatements.outcome(self._run(conn, statement,
                                                                inserting=True)))

    # tier ``register`` (storage/sqlalchemy/register.py, on both dialects) ---------
    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._register.fetch(conn, request)

    def register_apply(self, changes: RegisterChanges) -> None:
        if not changes:
            return
        self._wrote = True
        conn = self._c()
        with self._translating(inserting=True):
            self._s._register.apply(conn, changes)

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._register.page(conn, establishment_uai, cursor, limit)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        conn = self._c()
        with self._translating():
            return self._s._register.linked_children(conn, establishment_uai, cursor, limit)

    def insert_bulk(self, bulk: Sequence[BulkAccount]) -> None:
        """Insert bulk rows: ``COPY`` on PostgreSQL with psycopg, executemany otherwise."""
        if not bulk:
            return
        self._wrote = True
        conn = self._c()
        if self._pg is not None and conn.dialect.driver == "psycopg":
            self._copy_bulk(conn, bulk)
            return
        try:
            with self._translating(inserting=True):
                self._s._core.insert_bulk(conn, bulk, self._url)
        except LoginTaken as error:
            self._fail(error)
            raise

    def _copy_bulk(self, conn: Connection, bulk: Sequence[BulkAccount]) -> None:
        """``COPY ... FROM STDIN`` into the accounts, credentials and links."""
        import psycopg  # noqa: PLC0415 - only with the psycopg driver

        t = self._s._tables
        quote = conn.dialect.identifier_preparer
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        parts: list[tuple[Any, tuple[str, ...], list[tuple[Any, ...]]]] = [
            (t.accounts, ("id", "login", "login_key", "role", "status", "display_name",
                          "establishment_uai", "created_at"),
             [(r.account_id, r.login, r.login_key, "responsable", r.status.value,
               r.display_name, r.establishment_uai, r.created_at) for r in bulk]),
            (t.credentials, ("account_id", "password_hash", "kind", "expires_at"),
             [(r.account_id, r.password_hash, r.credential_kind.value,
               r.credential_expires_at) for r in bulk]),
            (t.links, ("account_id", "child_id", "first_name", "last_name",
                       "establishment_uai", "origin_account_id", "origin_establishment_uai",
                       "via_merge", "linked_at"),
             [(r.account_id, r.child_id, r.child_first_name, r.child_last_name,
               r.establishment_uai, r.account_id, r.establishment_uai, False, r.created_at)
              for r in bulk]),
        ]
        try:
            with raw.cursor() as cursor:
                for table, columns, values in parts:
                    names = ", ".join(quote.quote(c) for c in columns)
                    with cursor.copy(f"COPY {quote.format_table(table)} ({names}) "
                                     "FROM STDIN") as stream:
                        for row in values:
                            stream.write_row(row)
        except psycopg.errors.UniqueViolation:
            self._fail(ConcurrentUpdate("a login or id of the bulk is taken"))
            raise LoginTaken("a login or id of the bulk") from None
        except psycopg.Error as error:
            wrapped = sa_exc.DBAPIError.instance("COPY", None, error, psycopg.Error)
            translated = (self._s._translate(wrapped, self._url)
                          if isinstance(wrapped, sa_exc.DBAPIError)
                          else StorageError(store_name(self._url), str(error)))
            self._fail(translated)
            raise translated from error

    # -- the way back: tiers email_index and notices (storage/sqlalchemy/tiers.py) ------
    def index_email(self, account_id: str, key: str | None) -> None:
        self._wrote = True
        conn = self._c()
        with self._translating():
            self._s._tiers.index_email(conn, account_id, key)

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._tiers.accounts_by_email(conn, key, limit)

    def notice_cursor(self) -> int:
        conn = self._c()
        with self._translating():
            return self._s._tiers.notice_cursor(conn)

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._tiers.outbox_after(conn, position, limit)

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        self._wrote = True
        conn = self._c()
        with self._translating():
            self._s._tiers.add_notices(conn, states, cursor)

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._tiers.pending_notices(conn, limit)

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        self._wrote = True
        conn = self._c()
        with self._translating():
            self._s._tiers.update_notices(conn, states)

    # -- tier retention (storage/sqlalchemy/tiers.py; the journal on SQLite) ------------
    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._retention.accounts_due(conn, kind, before, after, limit)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        self._wrote = True
        conn = self._c()
        with self._translating():
            return self._s._retention.erase_hashes(conn, expired_by, limit)

    def forget(self, forgotten: Forgotten) -> None:
        self._wrote = True
        conn = self._c()
        retention = self._s._retention
        if self._journal is not None:
            with self._translating():
                places = retention.establishments_of(conn, forgotten.account_ids)
            with self._journaling():
                self._journal_c().forget(forgotten, places)
        with self._translating():
            retention.forget(conn, forgotten)

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        self._wrote = True
        conn = self._c()
        retention = self._s._retention
        with self._translating():
            ended = retention.end_audit(conn, before, limit, pseudonymise=pseudonymise)
        if self._journal is None or ended >= limit:
            return ended

        def places(ids: Sequence[str]) -> Mapping[str, str]:
            with self._translating():
                return retention.establishments_of(conn, ids)

        with self._journaling():
            return ended + self._journal_c().end_audit(before, limit - ended,
                                                       pseudonymise=pseudonymise,
                                                       establishments=places)

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._retention.outbox_page(conn, after, limit, published)

    def delete_outbox(self, positions: Sequence[int]) -> int:
        self._wrote = True
        conn = self._c()
        with self._translating():
            return self._s._retention.delete_outbox(conn, positions)

    def delete_counters(self, before: datetime, limit: int) -> int:
        self._wrote = True
        conn = self._c()
        with self._translating():
            deleted = self._s._retention.delete_counters(conn, before, limit)
        if self._journal is None or deleted >= limit:
            return deleted
        with self._journaling():
            return deleted + self._journal_c().delete_counters(before, limit - deleted)

    def held_about(self, forgotten: Forgotten) -> Held:
        conn = self._c()
        with self._translating(), self._decoding():
            audit, counters, receipts = self._s._retention.held_about(conn, forgotten)
        if self._journal is not None:
            with self._journaling():
                journaled, kept = self._journal_c().held_about(forgotten)
            by_key = {c.key: c for c in counters}
            by_key.update((c.key, c) for c in kept)  # the journal's are the current ones
            counters = sorted(by_key.values(), key=lambda c: c.key)
            trail = merge_trails(audit, journaled, len(audit) + len(journaled))
        else:
            trail = [record for _, record in audit]
        return Held(audit=tuple(trail), counters=tuple(counters), receipts=tuple(receipts))
