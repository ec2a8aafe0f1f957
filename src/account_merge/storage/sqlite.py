"""SQLiteStorage: a store in one SQLite file, on the standard :mod:`sqlite3` module.

The file is opened in WAL mode with foreign keys on and a busy timeout.
Every thread gets its own connection, made at its first unit of work, so
the threads of a process can share one :class:`SQLiteStorage`; several
processes can open the same file.  A writing unit of work starts with
``BEGIN IMMEDIATE``: it takes the file's single write lock at once, so
concurrent writers wait for each other (up to the busy timeout) instead of
failing half-way, and the rows a use case reads cannot change before it
writes.  A read-only unit of work starts with a deferred ``BEGIN`` and
reads a consistent snapshot without blocking writers.

The schema's version is kept in ``PRAGMA user_version`` and the file is
marked as an account_merge store by ``PRAGMA application_id``; forward
migrations (:data:`MIGRATIONS`) run when a connection first opens an
older file.  Rows are translated to domain objects explicitly; datetimes
are stored as ISO-8601 text with their UTC offset.  Driver errors never
leave this module: a lock held past the busy timeout becomes
:class:`~account_merge.exceptions.ConcurrentUpdate`, anything else
:class:`~account_merge.exceptions.StorageError` naming the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

import attrs

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

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage", "migrate"]

#: ``PRAGMA application_id`` of an account_merge file ("AMRG").
APPLICATION_ID: Final = 0x414D5247

#: The forward migrations: ``MIGRATIONS[n]`` takes a file from version n to n + 1.
#: Version 0 is an empty file; each step is a sequence of SQL statements run
#: in the same transaction as the change of ``user_version``.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: the initial schema.
    (
        """CREATE TABLE establishments (
            uai TEXT PRIMARY KEY,
            name TEXT NOT NULL
        )""",
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            login TEXT NOT NULL,
            login_key TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            display_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL,
            created_at TEXT NOT NULL,
            email TEXT,
            merged_into TEXT REFERENCES accounts (id)
        )""",
        """CREATE INDEX accounts_by_merged_into ON accounts (merged_into)
            WHERE merged_into IS NOT NULL""",
        """CREATE TABLE credentials (
            account_id TEXT PRIMARY KEY REFERENCES accounts (id),
            password_hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            expires_at TEXT
        )""",
        """CREATE TABLE children (
            id TEXT PRIMARY KEY,
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL
        )""",
        # A link keeps the child as the letter that carried it named it;
        # ``seq`` gives the order in which children were linked.
        """CREATE TABLE links (
            seq INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            child_id TEXT NOT NULL REFERENCES children (id),
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL,
            origin_account_id TEXT NOT NULL,
            origin_establishment_uai TEXT NOT NULL,
            via_merge INTEGER NOT NULL,
            linked_at TEXT NOT NULL,
            UNIQUE (account_id, child_id)
        )""",
        "CREATE INDEX links_by_account ON links (account_id, seq)",
        """CREATE TABLE throttles (
            key TEXT PRIMARY KEY,
            consecutive INTEGER NOT NULL,
            last_failure_at TEXT,
            recent TEXT NOT NULL
        )""",
        """CREATE TABLE receipts (
            principal_id TEXT NOT NULL,
            key TEXT NOT NULL,
            login_key TEXT NOT NULL,
            receipt TEXT NOT NULL,
            PRIMARY KEY (principal_id, key)
        )""",
        """CREATE TABLE outbox (
            position INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            payload TEXT NOT NULL,
            published INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_unpublished ON outbox (position) WHERE published = 0",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT,
            account_id TEXT,
            login TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_by_account ON audit (account_id, id) WHERE account_id IS NOT NULL",
        "CREATE INDEX audit_by_actor ON audit (actor, id) WHERE actor IS NOT NULL",
    ),
    # 1 -> 2: remember the order in which accounts were absorbed into each
    # account, so that ``accounts_merged_into`` lists them in that order.
    (
        "ALTER TABLE accounts ADD COLUMN merged_seq INTEGER",
        "UPDATE accounts SET merged_seq = rowid WHERE merged_into IS NOT NULL",
        "DROP INDEX accounts_by_merged_into",
        """CREATE INDEX accounts_by_merged_into ON accounts (merged_into, merged_seq)
            WHERE merged_into IS NOT NULL""",
    ),
)

#: The schema version this code reads and writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

_CONCURRENCY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


# -- driver errors ---------------------------------------------------------------
def _translate(error: sqlite3.Error, path: str, busy_timeout: float) -> AccountMergeError:
    """The library's error for a driver error on the file at *path*."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(error)
    lowered = text.lower()
    if primary in _CONCURRENCY_CODES or "database is locked" in lowered or "busy" in lowered:
        return ConcurrentUpdate(
            f"{path}: the database stayed locked by another writer for more than "
            f"{busy_timeout:g} s; try again"
        )
    if (primary in _CORRUPTION_CODES or "not a database" in lowered
            or "malformed" in lowered):
        return StorageError(
            path, f"is not a usable account_merge database: the file is corrupt or is "
                  f"not an SQLite database ({text})"
        )
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StorageError(path, f"cannot be opened ({text})")
    return StorageError(path, f"{type(error).__name__}: {text}")


@contextmanager
def _translating(path: str, busy_timeout: float) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as error:
        raise _translate(error, path, busy_timeout) from error


# -- migrations -------------------------------------------------------------------
def _pragma_int(connection: sqlite3.Connection, name: str) -> int:
    row = connection.execute(f"PRAGMA {name}").fetchone()
    return int(row[0])


def _refuse_unknown(connection: sqlite3.Connection, path: str) -> None:
    """Raise StorageError unless the file is empty or an account_merge store we can read."""
    application_id = _pragma_int(connection, "application_id")
    version = _pragma_int(connection, "user_version")
    if application_id != APPLICATION_ID:
        has_objects = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id != 0 or version != 0 or has_objects:
            raise StorageError(path, "is an SQLite database of another application, "
                                     "not an account_merge store")
    if version > SCHEMA_VERSION:
        raise StorageError(path, f"has schema version {version}, newer than the "
                                 f"{SCHEMA_VERSION} this account_merge knows; upgrade "
                                 f"account_merge to open it")


def migrate(connection: sqlite3.Connection, *, path: str = "", to: int = SCHEMA_VERSION) -> int:
    """Bring the file behind *connection* to schema version *to*; return its version.

    *connection* is in autocommit mode (``isolation_level=None``) with no
    transaction open.  The steps run in one ``BEGIN IMMEDIATE`` transaction,
    so concurrent openers of a new file wait for each other and a step is
    wholly applied or not at all.  A file of another application, or
    written by a newer account_merge, raises
    :class:`~account_merge.exceptions.StorageError` (naming *path*) and is
    left untouched.  A file already past *to* is left as it is.
    """
    if not 0 <= to <= SCHEMA_VERSION:
        raise InvalidInput("to", f"must be between 0 and {SCHEMA_VERSION}")
    if (_pragma_int(connection, "application_id") == APPLICATION_ID
            and _pragma_int(connection, "user_version") == to):
        return to
    connection.execute("BEGIN IMMEDIATE")
    try:
        _refuse_unknown(connection, path)
        version = _pragma_int(connection, "user_version")
        for step in MIGRATIONS[version:to]:
            for statement in step:
                connection.execute(statement)
        version = max(version, to)
        connection.execute(f"PRAGMA user_version = {version:d}")
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return version


# -- rows <-> domain --------------------------------------------------------------
def _time(value: datetime) -> str:
    return value.isoformat()


def _optional_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _parse_optional_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_ACCOUNT_COLUMNS = ("id, login, role, status, display_name, establishment_uai, created_at, "
                    "email, merged_into")


def _account_from_row(row: Sequence[Any]) -> Account:
    return Account(
        id=row[0], login=row[1], role=Role(row[2]), status=AccountStatus(row[3]),
        display_name=row[4], establishment_uai=row[5], created_at=_parse_time(row[6]),
        email=row[7], merged_into=row[8],
    )


def _account_to_row(account: Account) -> dict[str, Any]:
    return {
        "id": account.id, "login": account.login, "role": account.role.value,
        "status": account.status.value, "display_name": account.display_name,
        "establishment_uai": account.establishment_uai,
        "created_at": _time(account.created_at), "email": account.email,
        "merged_into": account.merged_into,
    }


def _credential_from_row(row: Sequence[Any]) -> Credential:
    return Credential(account_id=row[0], password_hash=row[1], kind=CredentialKind(row[2]),
                      expires_at=_parse_optional_time(row[3]))


def _credential_to_row(credential: Credential) -> dict[str, Any]:
    return {"account_id": credential.account_id, "password_hash": credential.password_hash,
            "kind": credential.kind.value, "expires_at": _optional_time(credential.expires_at)}


_LINK_COLUMNS = ("account_id, child_id, first_name, last_name, establishment_uai, "
                 "origin_account_id, origin_establishment_uai, via_merge, linked_at")


def _link_from_row(row: Sequence[Any]) -> ChildLink:
    child = Child(id=row[1], first_name=row[2], last_name=row[3], establishment_uai=row[4])
    return ChildLink(account_id=row[0], child=child, origin_account_id=row[5],
                     origin_establishment_uai=row[6], via_merge=bool(row[7]),
                     linked_at=_parse_time(row[8]))


def _link_to_row(link: ChildLink) -> dict[str, Any]:
    return {
        "account_id": link.account_id, "child_id": link.child.id,
        "first_name": link.child.first_name, "last_name": link.child.last_name,
        "establishment_uai": link.child.establishment_uai,
        "origin_account_id": link.origin_account_id,
        "origin_establishment_uai": link.origin_establishment_uai,
        "via_merge": int(link.via_merge), "linked_at": _time(link.linked_at),
    }


def _throttle_from_row(row: Sequence[Any]) -> ThrottleState:
    return ThrottleState(key=row[0], consecutive=row[1],
                         last_failure_at=_parse_optional_time(row[2]),
                         recent=tuple(_parse_time(t) for t in json.loads(row[3])))


def _throttle_to_row(state: ThrottleState) -> dict[str, Any]:
    return {"key": state.key, "consecutive": state.consecutive,
            "last_failure_at": _optional_time(state.last_failure_at),
            "recent": json.dumps([_time(t) for t in state.recent])}


def _receipt_from_row(row: Sequence[Any]) -> StoredReceipt:
    return StoredReceipt(principal_id=row[0], key=row[1], login_key=row[2],
                         receipt=MergeReceipt.from_dict(json.loads(row[3])))


def _receipt_to_row(stored: StoredReceipt) -> dict[str, Any]:
    return {"principal_id": stored.principal_id, "key": stored.key,
            "login_key": stored.login_key,
            "receipt": json.dumps(stored.receipt.to_dict(), ensure_ascii=False)}


def _outbox_entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(position=row[0], event=event_from_payload(row[1], json.loads(row[2])),
                       published=bool(row[3]))


def _event_to_row(event: Event) -> dict[str, Any]:
    return {"name": event.name, "payload": json.dumps(event.to_payload(), ensure_ascii=False)}


_AUDIT_COLUMNS = "id, at, action, outcome, actor, account_id, login, detail"


def _audit_from_row(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(at=_parse_time(row[1]), action=AuditAction(row[2]), outcome=row[3],
                       actor=row[4], account_id=row[5], login=row[6], detail=row[7])


def _audit_to_row(record: AuditRecord) -> dict[str, Any]:
    return {"at": _time(record.at), "action": record.action.value, "outcome": record.outcome,
            "actor": record.actor, "account_id": record.account_id, "login": record.login,
            "detail": record.detail}


# -- the store ----------------------------------------------------------------------
@attrs.define(eq=False)
class _Slot:
    """A connection and the thread that owns it."""

    connection: sqlite3.Connection
    thread: threading.Thread
    in_use: bool = False
    close_when_idle: bool = False


class SQLiteStorage:
    """A store in the SQLite file at *path* (see the module docstring).

    *busy_timeout* is how long, in seconds, a unit of work waits for
    another writer's lock before giving up with ``concurrent_update``.
    Nothing is opened until the first unit of work; the file is created if
    it does not exist (its directory must).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        path = os.fspath(path)
        if not isinstance(path, str) or not path or path == ":memory:" or path.startswith(
                "file:"):
            raise InvalidInput("path", "must be the path of a file")
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or busy_timeout < 0):
            raise InvalidInput("busy_timeout", "must be a number of seconds, zero or more")
        self.path = path
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    def unit_of_work(self, *, write: bool = True) -> _SQLiteUnitOfWork:
        """A new unit of work; use it in a ``with`` block.

        ``write=True`` takes the write lock at the start (``BEGIN
        IMMEDIATE``); ``write=False`` reads a snapshot (``BEGIN``).
        """
        return _SQLiteUnitOfWork(self, write=write)

    def close(self) -> None:
        """Close every connection not inside a unit of work; the others when it ends.

        The store stays usable: a later unit of work connects again.
        """
        with self._lock:
            if self._pid != os.getpid():
                self._forget_inherited()
                return
            slots, self._slots = self._slots, []
            for slot in slots:
                if slot.in_use:
                    slot.close_when_idle = True
            idle = [slot for slot in slots if not slot.in_use]
        with self._translating():
            for slot in idle:
                slot.connection.close()

    # connections ------------------------------------------------------------------
    def _translating(self) -> AbstractContextManager[None]:
        return _translating(self.path, self.busy_timeout)

    def _forget_inherited(self) -> None:
        """In a forked child: drop the parent's connections without touching them."""
        self._slots = []
        self._local = threading.local()
        self._pid = os.getpid()

    def _acquire(self) -> _Slot:
        """This thread's connection, marked in use; connects on first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_inherited()
            slot: _Slot | None = getattr(self._local, "slot", None)
            if slot is not None and slot.in_use:
                raise RuntimeError("a unit of work of this store is already open in this "
                                   "thread; finish it before opening another")
            if slot is not None and slot in self._slots:
                slot.in_use = True
                return slot
            dead = [s for s in self._slots if not s.thread.is_alive() and not s.in_use]
            self._slots = [s for s in self._slots if s not in dead]
        with self._translating():
            for gone in dead:
                gone.connection.close()
        connection = self._connect()
        slot = _Slot(connection=connection, thread=threading.current_thread(), in_use=True)
        with self._lock:
            self._slots.append(slot)
        self._local.slot = slot
        return slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.in_use = False
            close = slot.close_when_idle
        if close:
            with self._translating():
                slot.connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = None
        try:
            with self._translating():
                connection = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                             isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA foreign_keys = ON")
                connection.execute("BEGIN")  # one snapshot for the checks
                _refuse_unknown(connection, self.path)  # before changing anything
                connection.execute("COMMIT")
                self._use_wal(connection)
                connection.execute("PRAGMA synchronous = FULL")
                migrate(connection, path=self.path)
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        return connection

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL mode (once per file; it persists).

        The switch needs the file to itself and SQLite does not wait for
        it, so concurrent first openers retry until the busy timeout.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as error:
                if (getattr(error, "sqlite_errorcode", 0) & 0xFF not in _CONCURRENCY_CODES
                        or time.monotonic() >= deadline):
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        if str(mode).lower() != "wal":
            raise StorageError(self.path, f"cannot use WAL journal mode (got {mode})")


class _SQLiteUnitOfWork:
    def __init__(self, storage: SQLiteStorage, *, write: bool) -> None:
        self._storage = storage
        self._write = write
        self._slot: _Slot | None = None

    # transaction ------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._slot is not None:
            raise RuntimeError("this unit of work is already open")
        slot = self._storage._acquire()
        try:
            self._slot = slot
            self._begin()
        except BaseException:
            self._slot = None
            self._storage._release(slot)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        try:
            if slot.connection.in_transaction:
                try:
                    with self._storage._translating():
                        slot.connection.execute("ROLLBACK")
                except AccountMergeError:
                    # An error already leaving the block says more than this one.
                    if exc is None:
                        raise
        finally:
            self._storage._release(slot)

    def _begin(self) -> None:
        assert self._slot is not None
        with self._storage._translating():
            self._slot.connection.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")

    def _connection(self) -> sqlite3.Connection:
        """The open connection, inside a transaction (a new one after a commit)."""
        if self._slot is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if not self._slot.connection.in_transaction:
            self._begin()
        return self._slot.connection

    def commit(self) -> None:
        if self._slot is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if self._slot.connection.in_transaction:
            with self._storage._translating():
                self._slot.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self._slot is not None and self._slot.connection.in_transaction:
            with self._storage._translating():
                self._slot.connection.execute("ROLLBACK")

    # statements -------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        connection = self._connection()
        with self._storage._translating():
            return connection.execute(sql, params)

    def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        connection = self._connection()
        with self._storage._translating():
            return connection.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        connection = self._connection()
        with self._storage._translating():
            return connection.execute(sql, params).fetchone()

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turn a row the domain refuses into a StorageError naming the file."""
        try:
            yield
        except (AccountMergeError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, StorageError):
                raise
            raise StorageError(self._storage.path,
                               f"holds {what} that cannot be read ({error!r})") from error

    # establishments -------------------------------------------------------------
    def get_establishment(self, uai: str) -> Establishment | None:
        row = self._one("SELECT uai, name FROM establishments WHERE uai = ?", (uai,))
        if row is None:
            return None
        with self._decoding("an establishment"):
            return Establishment(uai=row[0], name=row[1])

    def put_establishment(self, establishment: Establishment) -> None:
        self._execute(
            "INSERT INTO establishments (uai, name) VALUES (?, ?) "
            "ON CONFLICT (uai) DO UPDATE SET name = excluded.name",
            (establishment.uai, establishment.name),
        )

    # accounts -------------------------------------------------------------------
    def get_account(self, account_id: str) -> Account | None:
        row = self._one(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
        if row is None:
            return None
        with self._decoding("an account"):
            return _account_from_row(row)

    def get_account_id_by_login(self, login_key: str) -> str | None:
        row = self._one("SELECT id FROM accounts WHERE login_key = ?", (login_key,))
        return None if row is None else str(row[0])

    def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        # A writing unit of work holds the file's write lock since BEGIN
        # IMMEDIATE, so reading the rows is enough to keep them.
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        rows = self._all(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id IN ({marks}) ORDER BY id", ids)
        with self._decoding("an account"):
            return {row[0]: _account_from_row(row) for row in rows}

    def add_account(self, account: Account, login_key: str) -> None:
        connection = self._connection()
        row = {**_account_to_row(account), "login_key": login_key}
        with self._storage._translating():
            try:
                # A failed statement undoes only itself (ON CONFLICT ABORT):
                # the transaction stays open and usable.
                connection.execute(
                    "INSERT INTO accounts (id, login, login_key, role, status, display_name,"
                    " establishment_uai, created_at, email, merged_into, merged_seq)"
                    " VALUES (:id, :login, :login_key, :role, :status, :display_name,"
                    " :establishment_uai, :created_at, :email, :merged_into,"
                    " CASE WHEN :merged_into IS NULL THEN NULL ELSE"
                    " (SELECT coalesce(max(merged_seq), 0) + 1 FROM accounts"
                    "  WHERE merged_into = :merged_into) END)",
                    row,
                )
            except sqlite3.IntegrityError as error:
                text = str(error)
                if "UNIQUE" in text and ("accounts.login_key" in text or "accounts.id" in text):
                    raise LoginTaken(login_key) from None
                raise

    def update_account(self, account: Account) -> None:
        row = _account_to_row(account)
        cursor = self._execute(
            "UPDATE accounts SET login = :login, role = :role, status = :status,"
            " display_name = :display_name, establishment_uai = :establishment_uai,"
            " created_at = :created_at, email = :email,"
            " merged_seq = CASE"
            "  WHEN :merged_into IS NULL THEN NULL"
            "  WHEN merged_into IS :merged_into THEN merged_seq"
            "  ELSE (SELECT coalesce(max(a.merged_seq), 0) + 1 FROM accounts AS a"
            "        WHERE a.merged_into = :merged_into) END,"
            " merged_into = :merged_into"
            " WHERE id = :id",
            row,
        )
        if cursor.rowcount == 0:
            raise KeyError(account.id)

    def accounts_merged_into(self, account_id: str) -> list[Account]:
        rows = self._all(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE merged_into = ? AND status = ?"
            " ORDER BY merged_seq",
            (account_id, AccountStatus.MERGED.value),
        )
        with self._decoding("an account"):
            return [_account_from_row(row) for row in rows]

    # credentials ----------------------------------------------------------------
    def get_credential(self, account_id: str) -> Credential | None:
        row = self._one("SELECT account_id, password_hash, kind, expires_at FROM credentials"
                        " WHERE account_id = ?", (account_id,))
        if row is None:
            return None
        with self._decoding("a credential"):
            return _credential_from_row(row)

    def put_credential(self, credential: Credential) -> None:
        self._execute(
            "INSERT INTO credentials (account_id, password_hash, kind, expires_at)"
            " VALUES (:account_id, :password_hash, :kind, :expires_at)"
            " ON CONFLICT (account_id) DO UPDATE SET password_hash = excluded.password_hash,"
            " kind = excluded.kind, expires_at = excluded.expires_at",
            _credential_to_row(credential),
        )

    def delete_credential(self, account_id: str) -> None:
        self._execute("DELETE FROM credentials WHERE account_id = ?", (account_id,))

    # children -------------------------------------------------------------------
    def links(self, account_id: str) -> list[ChildLink]:
        rows = self._all(f"SELECT {_LINK_COLUMNS} FROM links WHERE account_id = ? ORDER BY seq",
                         (account_id,))
        with self._decoding("a child link"):
            return [_link_from_row(row) for row in rows]

    def add_links(self, links: Sequence[ChildLink]) -> None:
        for link in links:
            child = link.child
            self._execute(
                "INSERT INTO children (id, first_name, last_name, establishment_uai)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (child.id, child.first_name, child.last_name, child.establishment_uai),
            )
            # A child linked again to the same account keeps its place in the list.
            self._execute(
                f"INSERT INTO links ({_LINK_COLUMNS}) VALUES (:account_id, :child_id,"
                " :first_name, :last_name, :establishment_uai, :origin_account_id,"
                " :origin_establishment_uai, :via_merge, :linked_at)"
                " ON CONFLICT (account_id, child_id) DO UPDATE SET"
                " first_name = excluded.first_name, last_name = excluded.last_name,"
                " establishment_uai = excluded.establishment_uai,"
                " origin_account_id = excluded.origin_account_id,"
                " origin_establishment_uai = excluded.origin_establishment_uai,"
                " via_merge = excluded.via_merge, linked_at = excluded.linked_at",
                _link_to_row(link),
            )

    def remove_links(self, links: Sequence[ChildLink]) -> None:
        for link in links:
            self._execute("DELETE FROM links WHERE account_id = ? AND child_id = ?",
                          (link.account_id, link.child.id))

    # throttling -----------------------------------------------------------------
    def get_throttle(self, key: str) -> ThrottleState | None:
        row = self._one("SELECT key, consecutive, last_failure_at, recent FROM throttles"
                        " WHERE key = ?", (key,))
        if row is None:
            return None
        with self._decoding("a throttle state"):
            return _throttle_from_row(row)

    def put_throttle(self, state: ThrottleState) -> None:
        self._execute(
            "INSERT INTO throttles (key, consecutive, last_failure_at, recent)"
            " VALUES (:key, :consecutive, :last_failure_at, :recent)"
            " ON CONFLICT (key) DO UPDATE SET consecutive = excluded.consecutive,"
            " last_failure_at = excluded.last_failure_at, recent = excluded.recent",
            _throttle_to_row(state),
        )

    # idempotency ----------------------------------------------------------------
    def get_receipt(self, principal_id: str, key: str) -> StoredReceipt | None:
        row = self._one("SELECT principal_id, key, login_key, receipt FROM receipts"
                        " WHERE principal_id = ? AND key = ?", (principal_id, key))
        if row is None:
            return None
        with self._decoding("a receipt"):
            return _receipt_from_row(row)

    def put_receipt(self, stored: StoredReceipt) -> None:
        self._execute(
            "INSERT INTO receipts (principal_id, key, login_key, receipt)"
            " VALUES (:principal_id, :key, :login_key, :receipt)"
            " ON CONFLICT (principal_id, key) DO UPDATE SET login_key = excluded.login_key,"
            " receipt = excluded.receipt",
            _receipt_to_row(stored),
        )

    # outbox -----------------------------------------------------------------------
    def append_event(self, event: Event) -> None:
        # Writers are serialised, so max + 1 leaves no gap, even after a rollback.
        self._execute(
            "INSERT INTO outbox (position, name, payload, published) VALUES"
            " ((SELECT coalesce(max(position), 0) + 1 FROM outbox), :name, :payload, 0)",
            _event_to_row(event),
        )

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        rows = self._all("SELECT position, name, payload, published FROM outbox"
                         " WHERE published = 0 ORDER BY position LIMIT ?", (max(0, limit),))
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in rows]

    def mark_published(self, positions: Sequence[int]) -> None:
        for position in positions:
            self._execute("UPDATE outbox SET published = 1 WHERE position = ? AND published = 0",
                          (position,))

    # audit -----------------------------------------------------------------------
    def append_audit(self, record: AuditRecord) -> None:
        self._execute(
            "INSERT INTO audit (at, action, outcome, actor, account_id, login, detail)"
            " VALUES (:at, :action, :outcome, :actor, :account_id, :login, :detail)",
            _audit_to_row(record),
        )

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        limit = max(0, limit)
        if account_id is None:
            rows = self._all(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?",
                             (limit,))
        else:
            # Each half walks its own index backwards and stops at *limit*.
            rows = self._all(
                f"SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE account_id = :id"
                " ORDER BY id DESC LIMIT :limit)"
                f" UNION SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE actor = :id"
                " ORDER BY id DESC LIMIT :limit)"
                " ORDER BY id DESC LIMIT :limit",
                {"id": account_id, "limit": limit},
            )
        with self._decoding("an audit record"):
            return [_audit_from_row(row) for row in reversed(rows)]
