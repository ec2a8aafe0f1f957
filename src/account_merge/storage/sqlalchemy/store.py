"""SQLAlchemyStorage: the store, its schema steps and its one-statement writes.

Its units of work are in :mod:`~account_merge.storage.sqlalchemy.unit_of_work`;
what runs on PostgreSQL in :mod:`~account_merge.storage.sqlalchemy.postgres`,
on SQLite in :mod:`~account_merge.storage.sqlalchemy.portable`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Dialect, Engine, MetaData, create_engine, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from account_merge.exceptions import AccountMergeError, InvalidInput, StorageError
from account_merge.ports.storage import ChangeSet, write_alone
from account_merge.storage.attempts import (
    AttemptsJournal,
    check_template,
    file_journal,
    memory_journal,
)
from account_merge.storage.bulk import BulkAccount
from account_merge.storage.sqlalchemy import upgrade
from account_merge.storage.sqlalchemy.connections import (
    SIDE_LOCK_TIMEOUT,
    check_dialect,
    milliseconds,
    prepare_engine,
)
from account_merge.storage.sqlalchemy.errors import store_name, translate
from account_merge.storage.sqlalchemy.portable import CoreStatements
from account_merge.storage.sqlalchemy.postgres import PostgresStatements
from account_merge.storage.sqlalchemy.register import RegisterStatements
from account_merge.storage.sqlalchemy.schema import DEFAULT_PREFIX, Tables
from account_merge.storage.sqlalchemy.tiers import RetentionStatements, TierStatements
from account_merge.storage.sqlalchemy.unit_of_work import SQLAlchemyUnitOfWork, check_outcome

if TYPE_CHECKING:
    from account_merge.ports import Storage

__all__ = ["SQLAlchemyStorage"]


SessionSource = Session | Callable[[], Session]


class SQLAlchemyStorage:
    """A store on PostgreSQL or SQLite through SQLAlchemy 2 (see the package docstring).

    Give either *engine* or *session* (a Session, or a callable such as a
    ``scoped_session`` or Flask-SQLAlchemy's ``db.session`` returning the
    current one).  *prefix* starts every table name; *schema* is a
    PostgreSQL schema for them.  *lock_timeout* (seconds), if given, bounds
    how long a writing step waits for a lock on PostgreSQL before it fails
    with ``concurrent_update``; otherwise the server's setting applies (in
    session mode it lasts until the host's transaction ends; on the side
    connection it is 5 seconds when not given).

    Giving a SQLite engine applies SQLAlchemy's documented pysqlite recipe
    to it (listeners that emit ``BEGIN`` themselves), which the host's
    other uses of the engine also get; in session mode, every transaction
    on the session's SQLite engine then begins ``IMMEDIATE``.

    On SQLite, in both modes, the failed-attempt counters and the audit
    records of failures are kept in the attempts journal
    (:mod:`account_merge.storage.attempts`), so that they outlive a host's
    rollback; *attempts_journal* is where it is, a template of
    :func:`~account_merge.storage.attempts.journal_path` (default
    ``"{database}-attempts.sqlite3"``; in memory for an in-memory
    database).  Give every store of one database the same.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        session: SessionSource | None = None,
        prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        lock_timeout: float | None = None,
        attempts_journal: str | os.PathLike[str] | None = None,
    ) -> None:
        if (engine is None) == (session is None):
            raise TypeError("SQLAlchemyStorage takes an engine or a session=, not both")
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or lock_timeout <= 0):
            raise InvalidInput("lock_timeout", "must be a positive number of seconds")
        self._engine = engine
        self._session = session
        self._owns_engine = False
        self._tables = Tables.build(prefix, schema)
        self._core = CoreStatements(self._tables)
        self._tiers = TierStatements(self._tables)
        self._register = RegisterStatements(self._tables)
        self._retention = RetentionStatements(self._tables, self._tiers)
        self._pg: PostgresStatements | None = None
        self._prefix = prefix
        self._schema = schema
        self._lock_timeout = lock_timeout
        self._attempts_journal = check_template(attempts_journal)
        self._journals: set[AttemptsJournal] = set()
        self._journals_lock = threading.Lock()
        if engine is not None:
            check_dialect(engine.dialect)
            prepare_engine(engine)

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        lock_timeout: float | None = None,
        attempts_journal: str | os.PathLike[str] | None = None,
        **engine_options: Any,
    ) -> SQLAlchemyStorage:
        """A store on an engine of its own, disposed of by :meth:`close`.

        The URL is a SQLAlchemy URL (``postgresql+psycopg://user@host/db``,
        ``sqlite:///path/to/file.db``); *engine_options* go to
        :func:`sqlalchemy.create_engine`.  Nothing connects yet.
        """
        storage = cls(create_engine(url, **engine_options), prefix=prefix, schema=schema,
                      lock_timeout=lock_timeout, attempts_journal=attempts_journal)
        storage._owns_engine = True
        return storage

    @property
    def metadata(self) -> MetaData:
        """The tables this store uses (with its prefix and schema)."""
        return self._tables.metadata

    @property
    def prefix(self) -> str:
        """The prefix of the table names."""
        return self._prefix

    def unit_of_work(self, *, write: bool = True) -> SQLAlchemyUnitOfWork:
        """A new unit of work; use it in a ``with`` block."""
        return SQLAlchemyUnitOfWork(self, write=write)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* alone: one statement in autocommit on PostgreSQL.

        In engine mode on PostgreSQL, and for failed attempts in session mode
        there (through a connection of its own, rule 6), the change set is one
        statement on a connection in autocommit: it is its own transaction.
        Otherwise, a unit of work of its own.
        """
        engine = self._bind_engine()
        hosted = self._engine is None
        if engine.dialect.name != "postgresql" or (hosted and not changes.only_attempts):
            write_alone(self, changes)
            return
        seconds = self._lock_timeout or (SIDE_LOCK_TIMEOUT if hosted else None)
        statement = self._statements(engine.dialect).apply(
            changes, timeout=milliseconds(seconds) if seconds else None)
        if statement is None:
            return
        try:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                row = conn.exec_driver_sql(*statement).first()
        except sa_exc.DBAPIError as error:
            raise self._translate(error, engine.url, inserting=True) from error.orig
        except sa_exc.TimeoutError as error:
            raise StorageError(store_name(engine.url),
                               f"no connection available: {error}") from None
        check_outcome(PostgresStatements.outcome(row))

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (idempotent).

        For a new store, or applications without migrations; with Alembic,
        include :func:`make_metadata` in your migrations instead.  It never
        alters a table: tables made by an earlier release need
        :meth:`upgrade_schema`.  On PostgreSQL, concurrent calls are
        serialised by an advisory lock.  In session mode the tables are
        created on the session's engine, in a transaction of their own.
        """
        self._schema_step(lambda conn: self._tables.metadata.create_all(conn, checkfirst=True))

    def upgrade_schema(self) -> list[str]:
        """Create what is missing and bring tables of an earlier release up to date.

        Idempotent, in one transaction: adds the columns and tables added
        since (see :mod:`account_merge.storage.sqlalchemy.upgrade`) and fills
        them from the rows there (the child's names on each link from the
        old ``children`` table, which is left in place).  Returns what it
        did, in words; empty when there was nothing to do.  With Alembic,
        use the revision of ``docs/storage.md`` instead.
        """
        done: list[str] = []
        self._schema_step(lambda conn: done.extend(upgrade.upgrade(conn, self._tables)))
        return done

    def _schema_step(self, step: Callable[[Connection], object]) -> None:
        bind = self._bind_engine()
        try:
            with bind.begin() as conn:
                if bind.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(
                        func.hashtextextended(self._lock_name("schema"), 0))))
                step(conn)
        except sa_exc.DBAPIError as error:
            raise self._translate(error, bind.url) from error.orig

    def bulk_insert(self, rows: Sequence[BulkAccount]) -> None:
        """Store *rows* in one transaction: ``COPY`` on PostgreSQL with psycopg.

        The ``bulk_load`` tier (:class:`~account_merge.ports.tiers.BulkLoad`),
        for tests and benchmarks that need a large store: the accounts and
        their hashes are taken as they are, without events or audit
        records.  A login or id already in use raises ``LoginTaken`` and
        stores none of *rows*.
        """
        with self.unit_of_work(write=True) as uow:
            uow.insert_bulk(rows)
            uow.commit()

    def forget_attempts(self) -> None:
        """Empty this store's part of the attempts journal of a SQLite database.

        For tests: the journal outlives the rollback of a test's session,
        as it outlives a host's (rule 6), so a suite that counts failures
        starts each test with this.  Nothing on PostgreSQL.
        """
        engine = self._bind_engine()
        if engine.dialect.name == "sqlite":
            self._journal(engine).forget(self._journal_namespace)

    def close(self) -> None:
        """Dispose of the engine if this store made it (``from_url``), close this thread's
        connections to the attempts journal (SQLite); nothing else."""
        with self._journals_lock:
            journals = list(self._journals)
        for journal in journals:
            journal.close()
        if self._owns_engine and self._engine is not None:
            self._engine.dispose()

    def __repr__(self) -> str:
        if self._engine is not None:
            return f"SQLAlchemyStorage({self._engine.url.render_as_string(hide_password=True)!r})"
        return f"SQLAlchemyStorage(session={type(self._session).__name__})"

    # -- internals used by the unit of work -----------------------------------------------
    def _current_session(self) -> Session:
        source = self._session
        assert source is not None
        return source if isinstance(source, Session) else source()

    def _bind_engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        bind = self._current_session().get_bind()
        engine = bind.engine if isinstance(bind, Connection) else bind
        check_dialect(engine.dialect)
        prepare_engine(engine, immediate=True)
        return engine

    @property
    def _journal_namespace(self) -> str:
        """This store's rows in an attempts journal (its tables', beside other stores')."""
        return f"sqlalchemy:{self._schema + '.' if self._schema else ''}{self._prefix}"

    def _journal(self, engine: Engine) -> AttemptsJournal:
        """The attempts journal of *engine*'s SQLite database."""
        url = engine.url
        database = url.database or ""
        uri = str(url.query.get("uri", "")).lower() in {"true", "1"}
        memory = database in {"", ":memory:"} or url.query.get("mode") == "memory" or (
            "mode=memory" in database)
        if memory:
            # A named in-memory database is shared by the engines that name it.
            found = memory_journal(database if database.startswith("file:") else engine)
        else:
            if uri and database.startswith("file:"):
                database = database[len("file:"):].partition("?")[0]
            found = file_journal(database, self._attempts_journal)
        with self._journals_lock:
            self._journals.add(found)
        return found

    def _statements(self, dialect: Dialect) -> PostgresStatements:
        statements = self._pg
        if statements is None:
            statements = self._pg = PostgresStatements(self._tables, dialect)
        return statements

    def _lock_name(self, name: str) -> str:
        return f"account_merge:{self._schema or ''}.{self._prefix}:{name}"

    def _translate(self, error: sa_exc.DBAPIError, url: URL | None, *,
                   inserting: bool = False) -> AccountMergeError:
        p = self._prefix
        keys = (f"{p}accounts_pkey", f"{p}accounts_login_key_key") if inserting else ()
        return translate(error, url, login_constraints=keys)


if TYPE_CHECKING:
    def _conforms(storage: SQLAlchemyStorage) -> Storage:
        return storage
