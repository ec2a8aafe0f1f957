"""SQLAlchemyStorage: the store on PostgreSQL or SQLite, through SQLAlchemy 2 Core.

Two ways to use it:

- **from an engine**, ``SQLAlchemyStorage(engine)``: each unit of work
  checks a connection out of the engine's pool and runs one transaction on
  it; ``commit()`` commits it.
- **inside a host's session**, ``SQLAlchemyStorage(session=db.session)``
  (a :class:`~sqlalchemy.orm.Session`, or a callable returning the current
  one, such as a ``scoped_session``): each unit of work runs in a SAVEPOINT
  (``session.begin_nested()``) of the session's transaction, and its
  ``commit()`` only releases the savepoint.  Nothing is durable until the
  host commits its session, and a host rollback undoes the library's work
  with its own.  The locks the library took are held until then.

  Except the record of failures, on PostgreSQL: the failed-attempt
  counters (``get_throttle``, ``put_throttle``) and the audit records of
  failures (``append_audit`` with an ``outcome`` other than
  ``"success"``) go through a *side connection* of the unit of work's
  own, checked out of the session's engine when first needed, in a
  transaction that the unit of work's ``commit()`` commits (before it
  releases the savepoint) and its rollback rolls back.  So a host that
  rolls back after the service raised cannot erase a failed attempt, and
  lift the throttling with it; the counters' locks are taken and released
  there, never on the session's connection.  Events and the audit records
  of successes stay in the host's transaction (an outbox: they commit or
  roll back with the change they describe).  On SQLite there is no side
  connection: one writer at a time, and the session's transaction may hold
  the write lock, so a second connection could only wait for it; there
  the failures wait for the host's commit as everything else does.

The tables (prefixed ``account_merge_`` unless the host chooses another
prefix) are described by :func:`make_metadata`, for the host's Alembic
migrations; :meth:`SQLAlchemyStorage.create_schema` creates them for apps
without migrations.

Concurrency.  On PostgreSQL, at the default READ COMMITTED isolation:
``lock_accounts`` runs ``SELECT ... FOR UPDATE`` ordered by id; in a
writing unit of work, ``get_throttle`` and ``get_receipt`` take a
transaction-level advisory lock on their key before reading, so that a
read followed by a write of the same counter is atomic; appending to the
outbox takes one advisory lock for the whole outbox, so positions are
gap-free and become visible in order.  Locks are always taken in the same
order (receipt, accounts by id, login counter, principal counter, outbox).
On SQLite, a writing unit of work begins with ``BEGIN IMMEDIATE``: one
writer at a time.  Serialization failures, deadlocks and lock timeouts
(SQLSTATE 40001, 40P01, 55P03; "database is locked" on SQLite) become
:class:`~account_merge.exceptions.ConcurrentUpdate`, which the service
retries a bounded number of times; any other driver error becomes
:class:`~account_merge.exceptions.StorageError` naming the database URL
without its password.

Nothing connects at import or construction time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import attrs
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, RowMapping, Transaction
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event, OutboxEntry, event_from_payload
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    InvalidInput,
    StorageError,
)
from account_merge.ports import LoginTaken, StoredReceipt
from account_merge.storage.bulk import BulkAccount

if TYPE_CHECKING:
    from account_merge.ports import Storage

__all__ = ["DEFAULT_PREFIX", "SQLAlchemyStorage", "make_metadata", "metadata"]

#: The prefix of the table names unless the host chooses another.
DEFAULT_PREFIX = "account_merge_"

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}|", re.ASCII)
_SUPPORTED = ("postgresql", "sqlite")
#: SQLSTATEs of a lost race: serialization failure, deadlock, lock timeout.
_CONCURRENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_UNIQUE_VIOLATION = "23505"
_UNDEFINED_TABLE = "42P01"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
#: Execution option marking a connection whose transaction must begin IMMEDIATE.
_BEGIN_IMMEDIATE = "account_merge_begin_immediate"
#: The audit outcome that rides on the host's transaction in session mode.
_SUCCESS = "success"
#: Seconds a side connection waits for a counter's lock when no lock_timeout is given.
_SIDE_LOCK_TIMEOUT = 5.0

# -- column types ---------------------------------------------------------------


class _UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored in UTC; read back aware and equal.

    ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL; on SQLite, fixed-width
    ISO 8601 text in UTC (``2025-09-01T08:00:00.000000+00:00``), which
    sorts in time order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput("datetime", "must be timezone-aware")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.isoformat(timespec="microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        if value.tzinfo is None:  # pragma: no cover - a column written by someone else
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> TypeEngine[Any]:
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


def _serial() -> TypeEngine[int]:
    # SQLite gives an autoincrement only to an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")


def _id() -> String:
    return String(64)


# -- the tables -----------------------------------------------------------------


def make_metadata(
    prefix: str = DEFAULT_PREFIX,
    *,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> MetaData:
    """The library's tables, named ``<prefix>accounts`` and so on.

    Give *metadata* (your application's own, for example Flask-SQLAlchemy's
    ``db.metadata``) to add the tables to it, so that Alembic's
    autogenerate sees them with yours; otherwise a new ``MetaData`` is
    returned, which Alembic also accepts in a list
    (``target_metadata = [app_metadata, make_metadata()]``).  *schema*
    puts them in another PostgreSQL schema.  Every index and constraint is
    named after its table, so two prefixes can share one database.
    """
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InvalidInput("prefix", "must be at most 30 letters, digits or underscores")
    md = metadata if metadata is not None else MetaData(schema=schema)
    p = prefix

    def table(name: str, *items: Any) -> Table:
        return Table(f"{p}{name}", md, *items, schema=schema)

    table(
        "establishments",
        Column("uai", String(16), nullable=False),
        Column("name", Text, nullable=False),
        PrimaryKeyConstraint("uai", name=f"{p}establishments_pkey"),
    )
    table(
        "accounts",
        Column("id", _id(), nullable=False),
        Column("login", Text, nullable=False),
        Column("login_key", Text, nullable=False),
        Column("role", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("display_name", Text, nullable=False),
        Column("establishment_uai", Text, nullable=False),
        Column("created_at", _UtcDateTime(), nullable=False),
        Column("email", Text),
        Column("merged_into", _id()),
        PrimaryKeyConstraint("id", name=f"{p}accounts_pkey"),
        UniqueConstraint("login_key", name=f"{p}accounts_login_key_key"),
        Index(f"{p}accounts_merged_into_idx", "merged_into"),
    )
    table(
        "credentials",
        Column("account_id", _id(), nullable=False),
        Column("password_hash", Text, nullable=False),
        Column("kind", String(16), nullable=False),
        Column("expires_at", _UtcDateTime()),
        PrimaryKeyConstraint("account_id", name=f"{p}credentials_pkey"),
    )
    table(
        "children",
        Column("id", _id(), nullable=False),
        Column("first_name", Text, nullable=False),
        Column("last_name", Text, nullable=False),
        Column("establishment_uai", String(16), nullable=False),
        PrimaryKeyConstraint("id", name=f"{p}children_pkey"),
    )
    table(
        "links",
        # ``seq`` orders an account's children in the order they were linked.
        Column("seq", _serial(), autoincrement=True, nullable=False),
        Column("account_id", _id(), nullable=False),
        Column("child_id", _id(), nullable=False),
        Column("origin_account_id", Text, nullable=False),
        Column("origin_establishment_uai", Text, nullable=False),
        Column("via_merge", Boolean, nullable=False),
        Column("linked_at", _UtcDateTime(), nullable=False),
        PrimaryKeyConstraint("seq", name=f"{p}links_pkey"),
        UniqueConstraint("account_id", "child_id", name=f"{p}links_account_child_key"),
    )
    table(
        "throttles",
        Column("key", Text, nullable=False),
        Column("consecutive", Integer, nullable=False),
        Column("last_failure_at", _UtcDateTime()),
        Column("recent", _json(), nullable=False),
        PrimaryKeyConstraint("key", name=f"{p}throttles_pkey"),
    )
    table(
        "receipts",
        Column("principal_id", _id(), nullable=False),
        Column("key", _id(), nullable=False),
        Column("login_key", Text, nullable=False),
        Column("receipt", _json(), nullable=False),
        PrimaryKeyConstraint("principal_id", "key", name=f"{p}receipts_pkey"),
    )
    outbox = table(
        "outbox",
        Column("position", _serial(), autoincrement=False, nullable=False),
        Column("name", String(64), nullable=False),
        Column("payload", _json(), nullable=False),
        Column("published", Boolean, nullable=False),
        PrimaryKeyConstraint("position", name=f"{p}outbox_pkey"),
    )
    unpublished = outbox.c.published == false()
    Index(f"{p}outbox_unpublished_idx", outbox.c.position,
          postgresql_where=unpublished, sqlite_where=unpublished)
    table(
        "audit",
        Column("seq", _serial(), autoincrement=True, nullable=False),
        Column("at", _UtcDateTime(), nullable=False),
        Column("action", String(32), nullable=False),
        Column("outcome", String(64), nullable=False),
        Column("actor", Text),
        Column("account_id", Text),
        Column("login", Text),
        Column("detail", Text),
        PrimaryKeyConstraint("seq", name=f"{p}audit_pkey"),
        Index(f"{p}audit_account_id_idx", "account_id"),
        Index(f"{p}audit_actor_idx", "actor"),
    )
    return md


#: The tables with the default prefix, for a host's Alembic ``target_metadata``.
metadata: MetaData = make_metadata()


@attrs.frozen
class _Tables:
    metadata: MetaData
    establishments: Table
    accounts: Table
    credentials: Table
    children: Table
    links: Table
    throttles: Table
    receipts: Table
    outbox: Table
    audit: Table

    @classmethod
    def build(cls, prefix: str, schema: str | None) -> _Tables:
        md = make_metadata(prefix, schema=schema)

        def t(name: str) -> Table:
            return md.tables[f"{schema}.{prefix}{name}" if schema else f"{prefix}{name}"]

        return cls(md, t("establishments"), t("accounts"), t("credentials"), t("children"),
                   t("links"), t("throttles"), t("receipts"), t("outbox"), t("audit"))


# -- rows <-> domain ------------------------------------------------------------------


def _account_to_row(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "login": account.login,
        "role": account.role.value,
        "status": account.status.value,
        "display_name": account.display_name,
        "establishment_uai": account.establishment_uai,
        "created_at": account.created_at,
        "email": account.email,
        "merged_into": account.merged_into,
    }


def _account_from_row(row: RowMapping) -> Account:
    return Account(
        id=row["id"],
        login=row["login"],
        role=Role(row["role"]),
        status=AccountStatus(row["status"]),
        display_name=row["display_name"],
        establishment_uai=row["establishment_uai"],
        created_at=row["created_at"],
        email=row["email"],
        merged_into=row["merged_into"],
    )


def _credential_to_row(credential: Credential) -> dict[str, Any]:
    return {
        "account_id": credential.account_id,
        "password_hash": credential.password_hash,
        "kind": credential.kind.value,
        "expires_at": credential.expires_at,
    }


def _credential_from_row(row: RowMapping) -> Credential:
    return Credential(
        account_id=row["account_id"],
        password_hash=row["password_hash"],
        kind=CredentialKind(row["kind"]),
        expires_at=row["expires_at"],
    )


def _child_to_row(child: Child) -> dict[str, Any]:
    return {
        "id": child.id,
        "first_name": child.first_name,
        "last_name": child.last_name,
        "establishment_uai": child.establishment_uai,
    }


def _link_to_row(link: ChildLink) -> dict[str, Any]:
    return {
        "account_id": link.account_id,
        "child_id": link.child.id,
        "origin_account_id": link.origin_account_id,
        "origin_establishment_uai": link.origin_establishment_uai,
        "via_merge": link.via_merge,
        "linked_at": link.linked_at,
    }


def _link_from_row(row: RowMapping) -> ChildLink:
    return ChildLink(
        account_id=row["account_id"],
        child=Child(
            id=row["child_id"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            establishment_uai=row["child_establishment_uai"],
        ),
        origin_account_id=row["origin_account_id"],
        origin_establishment_uai=row["origin_establishment_uai"],
        via_merge=bool(row["via_merge"]),
        linked_at=row["linked_at"],
    )


def _throttle_to_row(state: ThrottleState) -> dict[str, Any]:
    return {
        "key": state.key,
        "consecutive": state.consecutive,
        "last_failure_at": state.last_failure_at,
        "recent": [t.astimezone(UTC).isoformat(timespec="microseconds") for t in state.recent],
    }


def _throttle_from_row(row: RowMapping) -> ThrottleState:
    return ThrottleState(
        key=row["key"],
        consecutive=row["consecutive"],
        last_failure_at=row["last_failure_at"],
        recent=tuple(datetime.fromisoformat(t) for t in row["recent"]),
    )


def _receipt_to_row(stored: StoredReceipt) -> dict[str, Any]:
    return {
        "principal_id": stored.principal_id,
        "key": stored.key,
        "login_key": stored.login_key,
        "receipt": stored.receipt.to_dict(),
    }


def _receipt_from_row(row: RowMapping) -> StoredReceipt:
    return StoredReceipt(
        principal_id=row["principal_id"],
        key=row["key"],
        login_key=row["login_key"],
        receipt=MergeReceipt.from_dict(row["receipt"]),
    )


def _outbox_from_row(row: RowMapping) -> OutboxEntry:
    return OutboxEntry(
        position=row["position"],
        event=event_from_payload(row["name"], row["payload"]),
        published=bool(row["published"]),
    )


def _audit_to_row(record: AuditRecord) -> dict[str, Any]:
    return {
        "at": record.at,
        "action": record.action.value,
        "outcome": record.outcome,
        "actor": record.actor,
        "account_id": record.account_id,
        "login": record.login,
        "detail": record.detail,
    }


def _audit_from_row(row: RowMapping) -> AuditRecord:
    return AuditRecord(
        at=row["at"],
        action=AuditAction(row["action"]),
        outcome=row["outcome"],
        actor=row["actor"],
        account_id=row["account_id"],
        login=row["login"],
        detail=row["detail"],
    )


# -- SQLite transactions --------------------------------------------------------------

_listeners_lock = threading.Lock()


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLAlchemy's documented recipe: sqlite3 must not emit BEGIN itself.
    if getattr(dbapi_connection, "autocommit", None) is not False:
        dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    """Emit BEGIN ourselves; BEGIN IMMEDIATE for a writing unit of work."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    if getattr(dbapi_connection, "autocommit", None) is False:
        return  # Python 3.12's PEP 249 mode: the driver has begun already.
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT" and _BEGIN_IMMEDIATE not in options:
        return
    if dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None  # a connection pooled before we came
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_BEGIN_IMMEDIATE) else "BEGIN")


def _prepare_engine(engine: Engine) -> None:
    """Apply the pysqlite transaction recipe to a SQLite engine (once)."""
    if engine.dialect.name != "sqlite":
        return
    with _listeners_lock:
        if not event.contains(engine, "begin", _sqlite_begin):
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)


def _check_dialect(dialect: Dialect) -> None:
    if dialect.name not in _SUPPORTED:
        raise InvalidInput(
            "engine", f"SQLAlchemyStorage supports PostgreSQL and SQLite, not {dialect.name}"
        )


# -- errors ------------------------------------------------------------------------


def _sqlstate(orig: BaseException | None) -> str | None:
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _sqlite_code(orig: BaseException | None) -> int | None:
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _first_line(error: BaseException | None, url: URL | None) -> str:
    text = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text or type(error).__name__


# -- the storage ---------------------------------------------------------------------


SessionSource = Session | Callable[[], Session]


class SQLAlchemyStorage:
    """A store on PostgreSQL or SQLite through SQLAlchemy 2 (see the module docstring).

    Give either *engine* or *session* (a Session, or a callable such as a
    ``scoped_session`` or Flask-SQLAlchemy's ``db.session`` returning the
    current one).  *prefix* starts every table name; *schema* is a
    PostgreSQL schema for them.  *lock_timeout* (seconds), if given, bounds
    how long a writing unit of work waits for a lock on PostgreSQL
    (``SET LOCAL lock_timeout``) before it fails with ``concurrent_update``;
    otherwise the server's setting applies.  In session mode it lasts
    until the host's transaction ends; on the side connection that records
    failures (session mode on PostgreSQL) it lasts one unit of work, and
    is 5 seconds when not given.

    Giving a SQLite engine applies SQLAlchemy's documented pysqlite recipe
    to it (listeners that emit ``BEGIN`` themselves), which the host's
    other uses of the engine also get.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        session: SessionSource | None = None,
        prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        if (engine is None) == (session is None):
            raise TypeError("SQLAlchemyStorage takes an engine or a session=, not both")
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or lock_timeout <= 0):
            raise InvalidInput("lock_timeout", "must be a positive number of seconds")
        self._engine = engine
        self._session = session
        self._owns_engine = False
        self._tables = _Tables.build(prefix, schema)
        # Statements built once per store and dialect, with bound parameters:
        # SQLAlchemy then finds each compiled form in its cache at once.
        self._statements: dict[tuple[str, str], Any] = {}
        self._prefix = prefix
        self._schema = schema
        self._lock_timeout = lock_timeout
        if engine is not None:
            _check_dialect(engine.dialect)
            _prepare_engine(engine)

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        schema: str | None = None,
        lock_timeout: float | None = None,
        **engine_options: Any,
    ) -> SQLAlchemyStorage:
        """A store on an engine of its own, disposed of by :meth:`close`.

        The URL is a SQLAlchemy URL (``postgresql+psycopg://user@host/db``,
        ``sqlite:///path/to/file.db``); *engine_options* go to
        :func:`sqlalchemy.create_engine`.  Nothing connects yet.
        """
        storage = cls(create_engine(url, **engine_options), prefix=prefix, schema=schema,
                      lock_timeout=lock_timeout)
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

    def unit_of_work(self, *, write: bool = True) -> _SQLAlchemyUnitOfWork:
        """A new unit of work; use it in a ``with`` block."""
        return _SQLAlchemyUnitOfWork(self, write=write)

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (idempotent).

        For applications without migrations; with Alembic, include
        :func:`make_metadata` in your migrations instead.  On PostgreSQL,
        concurrent calls are serialised by an advisory lock.  In session
        mode the tables are created on the session's engine, in a
        transaction of their own.
        """
        bind = self._bind_engine()
        try:
            with bind.begin() as conn:
                if bind.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(
                        func.hashtextextended(self._lock_name("schema"), 0))))
                self._tables.metadata.create_all(conn, checkfirst=True)
        except sa_exc.DBAPIError as error:
            raise self._translate(error, bind.url) from error.orig

    def bulk_insert(self, rows: Sequence[BulkAccount]) -> None:
        """Store *rows* in one transaction, one multi-row insert per table and batch.

        The fast path of :func:`account_merge.storage.bulk.insert_accounts`,
        for tests and benchmarks that need a large store: the accounts and
        their hashes are taken as they are, without events or audit
        records.  A login or id already in use raises ``LoginTaken`` and
        stores none of *rows*.
        """
        with self.unit_of_work(write=True) as uow:
            uow.insert_bulk(rows)
            uow.commit()

    def close(self) -> None:
        """Dispose of the engine if this store made it (``from_url``); else nothing."""
        if self._owns_engine and self._engine is not None:
            self._engine.dispose()

    def __repr__(self) -> str:
        if self._engine is not None:
            return f"SQLAlchemyStorage({self._engine.url.render_as_string(hide_password=True)!r})"
        return f"SQLAlchemyStorage(session={type(self._session).__name__})"

    # -- internals used by the unit of work ---------------------------------------------
    def _current_session(self) -> Session:
        source = self._session
        assert source is not None
        return source if isinstance(source, Session) else source()

    def _bind_engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        bind = self._current_session().get_bind()
        engine = bind.engine if isinstance(bind, Connection) else bind
        _check_dialect(engine.dialect)
        _prepare_engine(engine)
        return engine

    def _lock_name(self, name: str) -> str:
        return f"account_merge:{self._schema or ''}.{self._prefix}:{name}"

    def _store_name(self, url: URL | None) -> str:
        if url is None:
            return "the session's database"
        return url.render_as_string(hide_password=True)

    def _translate(self, error: sa_exc.DBAPIError, url: URL | None) -> AccountMergeError:
        """The library's error for a driver error (never its SQL parameters)."""
        orig = error.orig
        state = _sqlstate(orig)
        code = _sqlite_code(orig)
        reason = _first_line(orig, url)
        if state in _CONCURRENT_SQLSTATES or code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return ConcurrentUpdate(f"{ConcurrentUpdate.default_message} ({reason})")
        if state == _UNIQUE_VIOLATION or (
                isinstance(error, sa_exc.IntegrityError) and "UNIQUE" in reason):
            return ConcurrentUpdate(f"{ConcurrentUpdate.default_message} ({reason})")
        store = self._store_name(url)
        if state == _UNDEFINED_TABLE or "no such table" in reason:
            return StorageError(store, f"{reason} (create the tables with create_schema() "
                                       "or your migrations)")
        if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return StorageError(store, f"cannot use the database: {reason}")
        return StorageError(store, reason)


class _SQLAlchemyUnitOfWork:
    """One transaction (engine mode) or one savepoint (session mode) at a time.

    In session mode on PostgreSQL, the failed-attempt counters and the audit
    records of failures go through a side connection, in a transaction of
    its own that ends with the unit of work (see the module docstring); what
    the side connection wrote is not visible to the session's reads before
    ``commit()``.

    After ``commit()`` or ``rollback()`` the unit of work stays usable: the
    next statement begins a new transaction (or savepoint).  After a
    driver error the transaction is rolled back and every further call
    fails until ``rollback()`` or the end of the ``with`` block, so that
    nothing written before the error can be committed by mistake.
    """

    def __init__(self, storage: SQLAlchemyStorage, *, write: bool) -> None:
        self._s = storage
        self._t = storage._tables
        self._write = write
        self._open = False
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._session: Session | None = None
        self._tx: Transaction | SessionTransaction | None = None
        self._side: Connection | None = None
        self._side_tx: Transaction | None = None
        self._uses_side = False
        self._failed: AccountMergeError | None = None
        self._url: URL | None = None
        self._dialect = ""

    # transaction -----------------------------------------------------------
    def __enter__(self) -> Self:
        if self._open:
            raise RuntimeError("this unit of work is already open")
        storage = self._s
        engine = storage._bind_engine()
        self._engine = engine
        self._url = engine.url
        self._dialect = engine.dialect.name
        self._uses_side = storage._engine is None and self._dialect == "postgresql"
        self._failed = None
        self._tx = None
        self._side_tx = None
        with self._translating():
            if storage._engine is not None:
                conn = engine.connect()
                if self._write and self._dialect == "sqlite":
                    conn.execution_options(**{_BEGIN_IMMEDIATE: True})
                self._conn = conn
            else:
                self._session = storage._current_session()
                if (self._write and self._dialect == "sqlite"
                        and not self._session.in_transaction()):
                    # The session's own transaction will begin IMMEDIATE.
                    self._session.connection(execution_options={_BEGIN_IMMEDIATE: True})
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
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
        with self._translating():
            # The side transaction first: if it cannot commit, the savepoint
            # is rolled back too, and nothing reaches the host's transaction.
            if self._side_tx is not None:
                self._side_tx.commit()
                self._side_tx = None
            if self._tx is not None:
                self._tx.commit()
                self._tx = None

    def rollback(self) -> None:
        side_tx, self._side_tx = self._side_tx, None
        tx, self._tx = self._tx, None
        self._failed = None
        with self._translating():
            try:
                if side_tx is not None and side_tx.is_active:
                    side_tx.rollback()
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
            with self._translating():
                if self._session is not None:
                    self._tx = self._session.begin_nested()
                    self._conn = self._session.connection()
                else:
                    assert self._conn is not None
                    self._tx = self._conn.begin()
                assert self._conn is not None
                if self._write and self._dialect == "postgresql" and self._s._lock_timeout:
                    self._set_lock_timeout(self._conn, self._s._lock_timeout)
        assert self._conn is not None
        return self._conn

    def _side_c(self) -> Connection:
        """The side connection (session mode on PostgreSQL), in a transaction begun if needed.

        Elsewhere, the unit of work's own connection.
        """
        if not self._uses_side:
            return self._c()
        self._check_usable()
        if self._side_tx is None:
            with self._translating():
                if self._side is None:
                    assert self._engine is not None
                    self._side = self._engine.connect()
                self._side_tx = self._side.begin()
                if self._write:
                    # Bounded even without a lock_timeout: the side connection
                    # and the session's are two backends to the server, which
                    # cannot see a deadlock running through this thread.
                    self._set_lock_timeout(self._side,
                                           self._s._lock_timeout or _SIDE_LOCK_TIMEOUT)
        assert self._side is not None
        return self._side

    @staticmethod
    def _set_lock_timeout(conn: Connection, seconds: float) -> None:
        millis = max(1, round(seconds * 1000))
        conn.execute(select(func.set_config("lock_timeout", f"{millis}ms", True)))

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.DBAPIError as error:
            translated = self._s._translate(error, self._url)
            self._fail(translated)
            raise translated from error.orig
        except sa_exc.TimeoutError as error:
            translated = StorageError(self._s._store_name(self._url),
                                      f"no connection available: {error}")
            self._fail(translated)
            raise translated from None

    def _fail(self, error: AccountMergeError) -> None:
        """Roll back now (releasing locks early) and refuse further work."""
        self._failed = error
        for tx in (self._side_tx, self._tx):
            if tx is not None and tx.is_active:
                with suppress(sa_exc.SQLAlchemyError):  # the connection may be gone
                    tx.rollback()
        self._tx = self._side_tx = None

    def _run(self, stmt: Any, params: Any = None, *, side: bool = False) -> Any:
        """Execute on the unit of work's connection, or on the side connection if *side*."""
        conn = self._side_c() if side else self._c()
        with self._translating():
            return conn.execute(stmt, params) if params is not None else conn.execute(stmt)

    def _stmt(self, name: str, build: Callable[[], Any]) -> Any:
        """The statement called *name*, built by *build* the first time for this dialect."""
        cache = self._s._statements
        key = (name, self._dialect)
        stmt = cache.get(key)
        if stmt is None:
            stmt = cache[key] = build()
        return stmt

    def _insert(self, table: Table) -> Any:
        """An INSERT with ON CONFLICT clauses, for PostgreSQL or SQLite."""
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _upsert(self, table: Table, row: Mapping[str, Any], keys: Sequence[str], *,
                side: bool = False) -> None:
        def build() -> Any:
            stmt = self._insert(table)
            return stmt.on_conflict_do_update(
                index_elements=list(keys),
                set_={name: stmt.excluded[name] for name in row if name not in keys},
            )

        stmt = self._stmt(f"upsert {table.name} {sorted(row)}", build)
        self._run(stmt, dict(row), side=side)

    def _advisory_lock(self, name: str, *, side: bool = False) -> None:
        """On PostgreSQL, in a writing unit of work: lock *name* until the transaction ends."""
        if self._write and self._dialect == "postgresql":
            stmt = self._stmt("advisory lock", lambda: select(func.pg_advisory_xact_lock(
                func.hashtextextended(bindparam("lock_name", type_=Text), 0))))
            self._run(stmt, {"lock_name": self._s._lock_name(name)}, side=side)

    # bulk loading (SQLAlchemyStorage.bulk_insert) ---------------------------
    def insert_bulk(self, rows: Sequence[BulkAccount]) -> None:
        """Insert bulk rows: ``COPY`` on PostgreSQL with psycopg, executemany otherwise.

        A login or id already in use raises ``LoginTaken``.
        """
        if not rows:
            return
        conn = self._c()
        responsable = Role.RESPONSABLE.value
        t = self._t
        accounts = [(r.account_id, r.login, r.login_key, responsable, r.status.value,
                     r.display_name, r.establishment_uai, r.created_at) for r in rows]
        credentials = [(r.account_id, r.password_hash, r.credential_kind.value,
                        r.credential_expires_at) for r in rows]
        children = [(r.child_id, r.child_first_name, r.child_last_name, r.establishment_uai)
                    for r in rows]
        links = [(r.account_id, r.child_id, r.account_id, r.establishment_uai, False,
                  r.created_at) for r in rows]
        account_columns = ("id", "login", "login_key", "role", "status", "display_name",
                           "establishment_uai", "created_at")
        credential_columns = ("account_id", "password_hash", "kind", "expires_at")
        child_columns = ("id", "first_name", "last_name", "establishment_uai")
        link_columns = ("account_id", "child_id", "origin_account_id",
                        "origin_establishment_uai", "via_merge", "linked_at")
        if self._dialect == "postgresql" and conn.dialect.driver == "psycopg":
            self._copy_bulk(conn, [(t.accounts, account_columns, accounts),
                                   (t.credentials, credential_columns, credentials),
                                   (t.children, child_columns, children),
                                   (t.links, link_columns, links)])
            return

        def dicts(columns: tuple[str, ...], values: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
            return [dict(zip(columns, row, strict=True)) for row in values]

        try:
            conn.execute(t.accounts.insert(), dicts(account_columns, accounts))
        except sa_exc.IntegrityError as error:
            self._fail(self._s._translate(error, self._url))
            raise LoginTaken("a login or id of the bulk") from None
        with self._translating():
            conn.execute(t.credentials.insert(), dicts(credential_columns, credentials))
            conn.execute(self._insert(t.children).on_conflict_do_nothing(),
                         dicts(child_columns, children))
            conn.execute(t.links.insert(), dicts(link_columns, links))

    def _copy_bulk(self, conn: Connection,
                   parts: list[tuple[Table, tuple[str, ...], list[tuple[Any, ...]]]]) -> None:
        """``COPY ... FROM STDIN`` into each table (children through a temporary table,
        so that a child already stored is kept, as ``add_links`` keeps it)."""
        import psycopg  # noqa: PLC0415 - only with the psycopg driver

        quote = conn.dialect.identifier_preparer
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)

        def copy(cursor: psycopg.Cursor[Any], table: str, columns: tuple[str, ...],
                 values: list[tuple[Any, ...]]) -> None:
            names = ", ".join(quote.quote(c) for c in columns)
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as stream:
                for row in values:
                    stream.write_row(row)

        try:
            with raw.cursor() as cursor:
                for table, columns, values in parts:
                    target = quote.format_table(table)
                    if table is not self._t.children:
                        copy(cursor, target, columns, values)
                        continue
                    cursor.execute(f"CREATE TEMPORARY TABLE am_bulk_children (LIKE {target})"
                                   " ON COMMIT DROP")
                    copy(cursor, "am_bulk_children", columns, values)
                    cursor.execute(f"INSERT INTO {target} SELECT * FROM am_bulk_children"
                                   " ON CONFLICT DO NOTHING")
                    cursor.execute("DROP TABLE am_bulk_children")
        except psycopg.errors.UniqueViolation:
            self._fail(ConcurrentUpdate("a login or id of the bulk is taken"))
            raise LoginTaken("a login or id of the bulk") from None
        except psycopg.Error as error:
            wrapped = sa_exc.DBAPIError.instance("COPY", None, error, psycopg.Error)
            translated = (self._s._translate(wrapped, self._url)
                          if isinstance(wrapped, sa_exc.DBAPIError)
                          else StorageError(self._s._store_name(self._url), str(error)))
            self._fail(translated)
            raise translated from error

    # establishments --------------------------------------------------------
    def get_establishment(self, uai: str) -> Establishment | None:
        t = self._t.establishments
        stmt = self._stmt("get establishment",
                          lambda: select(t).where(t.c.uai == bindparam("b_uai")))
        row = self._run(stmt, {"b_uai": uai}).mappings().first()
        return None if row is None else Establishment(uai=row["uai"], name=row["name"])

    def put_establishment(self, establishment: Establishment) -> None:
        self._upsert(self._t.establishments,
                     {"uai": establishment.uai, "name": establishment.name}, ["uai"])

    # accounts --------------------------------------------------------------
    def get_account(self, account_id: str) -> Account | None:
        t = self._t.accounts
        stmt = self._stmt("get account", lambda: select(t).where(t.c.id == bindparam("b_id")))
        row = self._run(stmt, {"b_id": account_id}).mappings().first()
        return None if row is None else _account_from_row(row)

    def get_account_id_by_login(self, login_key: str) -> str | None:
        t = self._t.accounts
        stmt = self._stmt("account id by login", lambda: select(t.c.id).where(
            t.c.login_key == bindparam("b_login_key")))
        found = self._run(stmt, {"b_login_key": login_key}).scalar()
        return cast("str | None", found)

    def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        ids = sorted(set(account_ids))
        if not ids:
            self._check_usable()
            return {}
        t = self._t.accounts

        def build() -> Any:
            stmt = select(t).where(t.c.id.in_(bindparam("b_ids", expanding=True)))
            stmt = stmt.order_by(t.c.id)
            if self._write:  # rendered as nothing on SQLite, where BEGIN IMMEDIATE did it
                stmt = stmt.with_for_update()
            return stmt

        stmt = self._stmt(f"lock accounts {self._write}", build)
        rows = self._run(stmt, {"b_ids": ids}).mappings().all()
        found = {row["id"]: _account_from_row(row) for row in rows}
        return {i: found[i] for i in ids if i in found}

    def add_account(self, account: Account, login_key: str) -> None:
        t = self._t.accounts
        row = {**_account_to_row(account), "login_key": login_key}
        # ON CONFLICT DO NOTHING: a taken login (or id) leaves the transaction
        # usable; RETURNING tells whether the row went in.
        stmt = self._stmt("add account",
                          lambda: self._insert(t).on_conflict_do_nothing().returning(t.c.id))
        if self._run(stmt, row).first() is None:
            raise LoginTaken(login_key)

    def update_account(self, account: Account) -> None:
        t = self._t.accounts
        row = _account_to_row(account)
        del row["id"]
        stmt = self._stmt("update account", lambda: update(t).where(
            t.c.id == bindparam("b_id")).values({name: bindparam(name) for name in row}))
        result = self._run(stmt, {**row, "b_id": account.id})
        if result.rowcount == 0:
            raise KeyError(account.id)

    def accounts_merged_into(self, account_id: str) -> list[Account]:
        t = self._t.accounts
        stmt = self._stmt("accounts merged into", lambda: (
            select(t)
            .where(t.c.merged_into == bindparam("b_id"),
                   t.c.status == AccountStatus.MERGED.value)
            .order_by(t.c.id)
        ))
        rows = self._run(stmt, {"b_id": account_id}).mappings().all()
        return [_account_from_row(row) for row in rows]

    # credentials -----------------------------------------------------------
    def get_credential(self, account_id: str) -> Credential | None:
        t = self._t.credentials
        stmt = self._stmt("get credential",
                          lambda: select(t).where(t.c.account_id == bindparam("b_id")))
        row = self._run(stmt, {"b_id": account_id}).mappings().first()
        return None if row is None else _credential_from_row(row)

    def put_credential(self, credential: Credential) -> None:
        self._upsert(self._t.credentials, _credential_to_row(credential), ["account_id"])

    def delete_credential(self, account_id: str) -> None:
        t = self._t.credentials
        stmt = self._stmt("delete credential",
                          lambda: delete(t).where(t.c.account_id == bindparam("b_id")))
        self._run(stmt, {"b_id": account_id})

    # children --------------------------------------------------------------
    def links(self, account_id: str) -> list[ChildLink]:
        links, children = self._t.links, self._t.children
        stmt = self._stmt("links", lambda: (
            select(
                links.c.account_id, links.c.child_id, links.c.origin_account_id,
                links.c.origin_establishment_uai, links.c.via_merge, links.c.linked_at,
                children.c.first_name, children.c.last_name,
                children.c.establishment_uai.label("child_establishment_uai"),
            )
            .join(children, children.c.id == links.c.child_id)
            .where(links.c.account_id == bindparam("b_id"))
            .order_by(links.c.seq)
        ))
        rows = self._run(stmt, {"b_id": account_id}).mappings().all()
        return [_link_from_row(row) for row in rows]

    def add_links(self, links: Sequence[ChildLink]) -> None:
        if not links:
            self._check_usable()
            return
        children = self._stmt("add children",
                              lambda: self._insert(self._t.children).on_conflict_do_nothing())
        self._run(children, [_child_to_row(link.child) for link in links])
        for link in links:
            self._upsert(self._t.links, _link_to_row(link), ["account_id", "child_id"])

    def remove_links(self, links: Sequence[ChildLink]) -> None:
        if not links:
            self._check_usable()
            return
        t = self._t.links
        stmt = self._stmt("remove link", lambda: delete(t).where(
            t.c.account_id == bindparam("b_account_id"), t.c.child_id == bindparam("b_child_id")))
        for link in links:
            self._run(stmt, {"b_account_id": link.account_id, "b_child_id": link.child.id})

    # throttling ------------------------------------------------------------
    # On the side connection in session mode on PostgreSQL: a failed attempt
    # is counted whatever the host does with its transaction.
    def get_throttle(self, key: str) -> ThrottleState | None:
        # In a writing unit of work the counter stays locked until it ends,
        # so that reading it and writing it back is atomic.
        self._advisory_lock(f"throttle:{key}", side=True)
        t = self._t.throttles
        stmt = self._stmt("get throttle", lambda: select(t).where(t.c.key == bindparam("b_key")))
        row = self._run(stmt, {"b_key": key}, side=True).mappings().first()
        return None if row is None else _throttle_from_row(row)

    def put_throttle(self, state: ThrottleState) -> None:
        self._upsert(self._t.throttles, _throttle_to_row(state), ["key"], side=True)

    # idempotency -----------------------------------------------------------
    def get_receipt(self, principal_id: str, key: str) -> StoredReceipt | None:
        # Locked like a counter: a second call with the same key waits for
        # the first to end, then finds its receipt.
        self._advisory_lock(f"receipt:{principal_id}:{key}")
        t = self._t.receipts
        stmt = self._stmt("get receipt", lambda: select(t).where(
            t.c.principal_id == bindparam("b_principal_id"), t.c.key == bindparam("b_key")))
        row = self._run(stmt, {"b_principal_id": principal_id, "b_key": key}).mappings().first()
        return None if row is None else _receipt_from_row(row)

    def put_receipt(self, stored: StoredReceipt) -> None:
        self._upsert(self._t.receipts, _receipt_to_row(stored), ["principal_id", "key"])

    # outbox ----------------------------------------------------------------
    def append_event(self, event: Event) -> None:
        # One writer at a time appends (released at commit), so positions
        # are gap-free and become visible in order.
        if self._dialect == "postgresql":
            stmt = self._stmt("advisory lock", lambda: select(func.pg_advisory_xact_lock(
                func.hashtextextended(bindparam("lock_name", type_=Text), 0))))
            self._run(stmt, {"lock_name": self._s._lock_name("outbox")})
        t = self._t.outbox
        # The next position is read by the insert itself: one round trip.
        append = self._stmt("append event", lambda: t.insert().from_select(
            ["position", "name", "payload", "published"],
            select(func.coalesce(func.max(t.c.position), 0) + 1,
                   bindparam("b_name", type_=t.c.name.type),
                   bindparam("b_payload", type_=t.c.payload.type),
                   false()),
        ))
        self._run(append, {"b_name": event.name, "b_payload": event.to_payload()})

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        t = self._t.outbox
        rows = self._run(
            select(t).where(t.c.published == false()).order_by(t.c.position).limit(limit)
        ).mappings().all()
        return [_outbox_from_row(row) for row in rows]

    def mark_published(self, positions: Sequence[int]) -> None:
        if not positions:
            self._check_usable()
            return
        t = self._t.outbox
        self._run(update(t).where(t.c.position.in_(list(positions)), t.c.published == false())
                  .values(published=True))

    # audit -----------------------------------------------------------------
    def append_audit(self, record: AuditRecord) -> None:
        # A success is part of the change it records: it stays in the host's
        # transaction.  A failure goes through the side connection, if any.
        stmt = self._stmt("append audit", self._t.audit.insert)
        self._run(stmt, _audit_to_row(record), side=record.outcome != _SUCCESS)

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        t = self._t.audit
        stmt = select(t).order_by(t.c.seq.desc()).limit(limit)
        if account_id is not None:
            stmt = stmt.where(or_(t.c.account_id == account_id, t.c.actor == account_id))
        rows = self._run(stmt).mappings().all()
        return [_audit_from_row(row) for row in reversed(rows)]


if TYPE_CHECKING:
    def _conforms(storage: SQLAlchemyStorage) -> Storage:
        return storage
