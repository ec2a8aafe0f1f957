"""The attempts journal's schema, and opening a journal (or signpost) file.

Migrations, the file's identity (``application_id``, ``user_version``),
the database it serves and its role, checked at every connection; WAL mode
and ``0600`` for a new file (see :mod:`account_merge.storage.attempts`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Final

from account_merge.exceptions import StorageError
from account_merge.storage.sqlite.errors import _translate
from account_merge.storage.sqlite.schema import refuse_unknown_file

#: ``PRAGMA application_id`` of an attempts journal ("AMAJ").
APPLICATION_ID: Final = 0x414D414A

_JOURNAL, _SIGNPOST = "journal", "signpost"

#: ``MIGRATIONS[n]`` takes a journal from version n to n + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # 'database': the database whose attempts it keeps; 'role': 'journal',
        # or 'signpost' for a file that only names the journal ('kept_in').
        """CREATE TABLE meta (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        # ``namespace`` is the store's family of tables: several stores (a
        # Django app, SQLAlchemy stores with their prefixes) share one database.
        """CREATE TABLE throttles (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            consecutive INTEGER NOT NULL,
            last_failure_at TEXT,
            recent TEXT NOT NULL,
            PRIMARY KEY (namespace, key)
        ) WITHOUT ROWID""",
        # ``main_seq``: the record of the database's trail this one follows.
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            main_seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT,
            account_id TEXT,
            login TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_by_namespace ON audit (namespace, seq)",
        """CREATE INDEX audit_by_account ON audit (namespace, account_id, seq)
            WHERE account_id IS NOT NULL""",
        "CREATE INDEX audit_by_actor ON audit (namespace, actor, seq) WHERE actor IS NOT NULL",
    ),
    # Retention: what is due and what names a login, found without a scan.
    (
        "CREATE INDEX audit_by_time ON audit (namespace, julianday(at), seq)",
        """CREATE INDEX audit_by_login ON audit (namespace, lower(login))
            WHERE login IS NOT NULL""",
        """CREATE INDEX throttles_by_last_failure
            ON throttles (namespace, julianday(last_failure_at))""",
    ),
)
#: The schema version this code reads and writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)


def _create_private(path: str) -> None:
    """Create *path*, empty and ``0600``, if it does not exist yet."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise StorageError(path, f"cannot be created ({error.strerror})") from None
    os.close(descriptor)


def _use_wal(connection: sqlite3.Connection, busy_timeout: float) -> None:
    """WAL mode (once per file; concurrent first openers retry until the busy timeout)."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
                    or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _open(path: str, database: str, busy_timeout: float, *, role: str,
          kept_in: str | None = None, memory: bool = False) -> sqlite3.Connection:
    """A connection to the journal (or signpost) at *path*, checked to serve *database*."""
    name = f"attempts journal of {database}" if memory else path
    connection: sqlite3.Connection | None = None
    try:
        try:
            if not memory:
                _create_private(path)
            connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                         uri=memory)
            if not memory:
                _use_wal(connection, busy_timeout)
                connection.execute("PRAGMA synchronous = FULL")
            connection.execute("BEGIN IMMEDIATE")
            _migrate(connection, name)
            _bind(connection, name, database, role=role, kept_in=kept_in, memory=memory)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise _translate(error, name, busy_timeout) from error
    except BaseException:
        if connection is not None:
            connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection, name: str) -> None:
    """Bring the journal to :data:`SCHEMA_VERSION` (inside the caller's transaction)."""
    application_id, version = refuse_unknown_file(
        connection, name, application_id=APPLICATION_ID, schema_version=SCHEMA_VERSION,
        schema="journal schema",
        foreign="is not an account_merge attempts journal (another application's file?)")
    if version == SCHEMA_VERSION and application_id == APPLICATION_ID:
        return
    for step in MIGRATIONS[version:]:
        for statement in step:
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    connection.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")


def _bind(connection: sqlite3.Connection, name: str, database: str, *, role: str,
          kept_in: str | None, memory: bool) -> None:
    """Check (or record, in a new file) the database served, the role and the journal named."""
    meta = dict(connection.execute("SELECT name, value FROM meta").fetchall())
    wanted = {"database": database, "role": role, **({"kept_in": kept_in} if kept_in else {})}
    if not meta:
        connection.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", wanted.items())
        return
    served = meta.get("database", "")
    if served != database:
        if memory or os.path.exists(served):
            raise StorageError(name, f"keeps the failed attempts of the database {served}, "
                                     f"not of {database}: give each database a journal of "
                                     f"its own")
        # The database was moved (a restore, a new folder): the journal follows it.
        connection.execute("UPDATE meta SET value = ? WHERE name = 'database'", (database,))
    found_role, found_kept_in = meta.get("role"), meta.get("kept_in")
    if role == _JOURNAL and found_role == _SIGNPOST:
        raise StorageError(name, f"is a signpost: the failed attempts of {database} are "
                                 f"kept in {found_kept_in}; give every store of this "
                                 f"database the same attempts journal")
    if role == _SIGNPOST and found_role == _JOURNAL:
        raise StorageError(name, f"keeps the failed attempts of {database}, but this store "
                                 f"was told to keep them in {kept_in}; give every store of "
                                 f"this database the same attempts journal")
    if role == _SIGNPOST and found_kept_in != kept_in:
        raise StorageError(name, f"says the failed attempts of {database} are kept in "
                                 f"{found_kept_in}, but this store was told to keep them "
                                 f"in {kept_in}; give every store of this database the "
                                 f"same attempts journal")
