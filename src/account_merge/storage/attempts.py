"""The attempts journal: the failed attempts of a SQLite database, in a file of their own.

Rule 6 of :mod:`account_merge.ports.storage`: a store that runs inside a
transaction of its host (a Django request under ``ATOMIC_REQUESTS``, a
Flask-SQLAlchemy session) must keep the failed-attempt counters and the
audit records of failures even if the host rolls back.  On PostgreSQL the
stores write them on a second connection.  On SQLite a second connection
to the same file cannot help: there is one writer at a time, and the
request's transaction holds the write lock (from its first statement,
under ``"transaction_mode": "IMMEDIATE"``), so the second connection could
only wait for it, in the very request that holds it.

So on SQLite, :class:`~account_merge.contrib.django.storage.DjangoStorage`
and :class:`~account_merge.storage.sqlalchemy.SQLAlchemyStorage` keep them
in the *attempts journal*, a small SQLite file beside the database
(``<database>-attempts.sqlite3`` unless configured otherwise), written by
the store's own connection in transactions of its own:

- the failure counters (``Fetch.count``, ``Fetch.throttles``,
  ``ChangeSet.throttles``: counted, read, locked and written there, the
  clearing after a success included);
- the audit records whose outcome is not ``"success"``.

Everything else (accounts, credentials, links, receipts, events, the
audit records of successes) stays in the database, in the host's
transaction.  The journal holds nothing that an invariant of the accounts
depends on: whatever happens to it, no child is lost and no account is
half-merged.

**When.**  Always on SQLite, for every unit of work of those two stores,
inside a host's transaction or not, in session mode or engine mode: where
the counters live is a property of the database, not of the way a store
reaches it, so two stores of one database (a request and a management
command, a session-mode app and an engine-mode worker) always agree.  An
in-memory database gets an in-memory journal, one per database of the
process.

**Where, and agreeing on it.**  :func:`journal_path` gives the file from a
template (``{database}``: the database file's path; ``{name}``: its file
name).  Every journal records the database it serves; a journal asked to
serve another database that still exists is refused (``storage_error``),
and one whose database was moved follows it.  A journal configured away
from the default place leaves a *signpost* there, a journal file that
only names it: a store that looks for the journal in the default place
while the signpost names another, or that is configured elsewhere while
the default place holds the journal or another signpost, is refused with
an error saying where the attempts are kept.  So two stores of one
database cannot silently keep two sets of counters.

**Transactions and locks.**  Each unit of work of a store has at most one
:class:`JournalTransaction`, begun by the first thing it reads or writes
there: ``BEGIN IMMEDIATE`` in a writing unit of work, so counters read or
counted there are protected from every other writer until the unit of
work ends (rule 2), ``BEGIN`` in a reading one.  A writing unit of work
takes the database's write lock before the journal's (the stores begin
their main transaction first), always in that order, so two writers never
wait for each other in a cycle.  The unit of work's ``commit()`` commits
the journal first, then the database (or releases its savepoint, inside a
host's transaction); a journal that cannot commit rolls the database back
too.  The journal is in WAL mode with ``synchronous = FULL``, created
readable and writable by its owner only (``0600``).

**Upgrading.**  Before the journal, the stores kept their counters in
the database's table of counters.  The first transaction of a store's
namespace in a journal adopts them, once (a mark in the journal says it
did): each counter the database holds and the journal does not is copied
in, so an upgrade lifts no throttling.  The database's failure records
stay where they are and :func:`merge_trails` reads them with the rest.

**Order of the audit trail.**  Each record of the journal remembers where
it falls in the database's trail: after the database's record ``main_seq``
(the last one there when it was written, plus those of its own change set
written before it).  :func:`merge_trails` interleaves both trails by that,
so ``audit_records`` gives them in the order they were written.

**A crash between the two files.**  The journal commits first.  A process
that dies after the journal's commit and before the database's loses the
database's part of that step only, as a rollback of the host would: a
merge that did not happen, with its event and the audit record of its
success, while the journal keeps the attempt given back (the password was
right).  A process that dies before the journal's commit loses both, and
the step never happened; an attempt is counted before its password is
checked, so no answer is given for an attempt the journal does not hold.
The audit record of a failure is written after the failure is known and
before the answer is given: a crash between the two loses that record
only, for an attempt whose answer was never given.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from string import Formatter
from typing import Any, Final

import attrs

from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    Forgotten,
    ascii_lower,
    names_someone,
    pseudonymised,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, InvalidInput, StorageError
from account_merge.ports.storage import ChangeSet, Fetch
from account_merge.storage.sqlite.errors import _translate

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_TEMPLATE",
    "SCHEMA_VERSION",
    "Attempts",
    "AttemptsJournal",
    "JournalRecord",
    "JournalTransaction",
    "check_template",
    "file_journal",
    "journal_path",
    "memory_journal",
    "merge_trails",
    "split_attempts",
]

#: ``PRAGMA application_id`` of an attempts journal ("AMAJ").
APPLICATION_ID: Final = 0x414D414A
#: Where the journal of a database file is, unless configured otherwise.
DEFAULT_TEMPLATE: Final = "{database}-attempts.sqlite3"
#: Seconds a journal transaction waits for another writer's lock.
DEFAULT_BUSY_TIMEOUT: Final = 10.0

_SUCCESS: Final = "success"
_PLACEHOLDERS: Final = frozenset({"database", "name"})
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

_ACTIONS: Final = {action.value: action for action in AuditAction}
_AUDIT_COLUMNS: Final = "seq, main_seq, at, action, outcome, actor, account_id, login, detail"
_SELECT_THROTTLES: Final = ("SELECT key, consecutive, last_failure_at, recent FROM throttles"
                            " WHERE namespace = ? AND key IN ({marks})")
_PUT_THROTTLE: Final = (
    "INSERT INTO throttles (namespace, key, consecutive, last_failure_at, recent)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO UPDATE SET"
    " consecutive = excluded.consecutive, last_failure_at = excluded.last_failure_at,"
    " recent = excluded.recent"
)
_ADOPT_THROTTLE: Final = (
    "INSERT INTO throttles (namespace, key, consecutive, last_failure_at, recent)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO NOTHING"
)
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


# -- where the journal is ------------------------------------------------------------------
def check_template(template: str | os.PathLike[str] | None) -> str:
    """*template* checked (``{database}`` and ``{name}`` only), or the default one."""
    if template is None:
        return DEFAULT_TEMPLATE
    text = os.fspath(template)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("attempts_journal", "must be the path of a file, or None")
    try:
        fields = {field for _, field, _, _ in Formatter().parse(text) if field is not None}
    except ValueError as error:
        raise InvalidInput("attempts_journal", f"is not a valid template ({error})") from None
    unknown = sorted(fields - _PLACEHOLDERS)
    if unknown:
        raise InvalidInput("attempts_journal",
                           f"knows {{database}} and {{name}} only, not {{{unknown[0]}}}")
    return text


def journal_path(database: str | os.PathLike[str],
                 template: str | os.PathLike[str] | None = None) -> str:
    """The attempts journal of the SQLite database file *database*, from *template*.

    ``{database}`` is the database's absolute path, symbolic links
    resolved; ``{name}`` its file name.  A template without them names
    one fixed file (for one database only).
    """
    real = os.path.realpath(os.fspath(database))
    return os.path.realpath(check_template(template).format(
        database=real, name=os.path.basename(real)))


# -- the journal ---------------------------------------------------------------------------
class _Local(threading.local):
    connection: sqlite3.Connection | None = None
    pid: int = 0
    owner: JournalTransaction | None = None


class AttemptsJournal:
    """The attempts journal of one database (see the module docstring).

    Made by :func:`file_journal` or :func:`memory_journal`, which give every
    store of a process the same object for the same database.  Each thread
    has a connection of its own, made at its first transaction; nothing
    connects before.
    """

    def __init__(self, path: str, *, database: str, memory: bool = False,
                 signpost: str | None = None,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.path = path
        self.database = database
        self.busy_timeout = busy_timeout
        self._memory = memory
        self._signpost = signpost
        self._local = _Local()
        self._anchor: sqlite3.Connection | None = None
        self._anchor_lock = threading.Lock()
        self._adopted: set[str] = set()

    def __repr__(self) -> str:
        where = "in memory" if self._memory else self.path
        return f"AttemptsJournal({where!r})"

    @property
    def in_memory(self) -> bool:
        """True for the journal of an in-memory database."""
        return self._memory

    def transaction(self, namespace: str, *, write: bool,
                    legacy: Callable[[], Iterable[ThrottleState]] | None = None,
                    ) -> JournalTransaction:
        """A transaction of *namespace*, begun by its first statement; one per unit of work.

        *legacy* reads the counters the store kept in the database before
        the journal; they are adopted, once, before the first transaction
        of *namespace* begins (see the module docstring).
        """
        return JournalTransaction(self, namespace, write=write, legacy=legacy)

    def close(self) -> None:
        """Close this thread's connection, unless a transaction uses it (it reconnects later)."""
        local = self._local
        if local.connection is None or local.owner is not None:
            return
        connection, local.connection = local.connection, None
        if local.pid == os.getpid():  # never one inherited through fork()
            with self._translating():
                connection.close()

    def forget(self, namespace: str) -> None:
        """Delete every counter and record of *namespace* (a test's fresh store)."""
        with self._translating():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM throttles WHERE namespace = ?", (namespace,))
                connection.execute("DELETE FROM audit WHERE namespace = ?", (namespace,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _adopt(self, connection: sqlite3.Connection, namespace: str,
               legacy: Callable[[], Iterable[ThrottleState]]) -> None:
        """Copy in, once per namespace, the counters its store kept in the database.

        The database is read first (in the store's transaction), then the
        journal's lock is taken: the order of every writer.  A counter the
        journal holds already is the newer one, and stays.
        """
        if namespace in self._adopted:
            return
        mark = f"adopted:{namespace}"
        with self._translating():
            if connection.execute("SELECT 1 FROM meta WHERE name = ?",
                                  (mark,)).fetchone() is None:
                states = [s for s in legacy() if s.consecutive or s.last_failure_at]
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(_ADOPT_THROTTLE, [
                        (namespace, s.key, s.consecutive, _time(s.last_failure_at),
                         json.dumps([t.isoformat() for t in s.recent])) for s in states])
                    connection.execute("INSERT INTO meta (name, value) VALUES (?, ?)"
                                       " ON CONFLICT (name) DO NOTHING", (mark, str(len(states))))
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
        self._adopted.add(namespace)

    # connections ---------------------------------------------------------------------
    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise _translate(error, self._name(), self.busy_timeout) from error

    def _name(self) -> str:
        return f"attempts journal of {self.database}" if self._memory else self.path

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, made if needed (not after a fork: a new one then)."""
        local = self._local
        if local.connection is not None and local.pid == os.getpid():
            return local.connection
        # A connection inherited through fork() is left alone, never used.
        local.connection, local.owner = None, None
        connection = self._connect()
        local.connection, local.pid = connection, os.getpid()
        return connection

    def _connect(self) -> sqlite3.Connection:
        if self._memory:
            with self._anchor_lock:
                if self._anchor is None:
                    self._anchor = self._open_memory()
            return _open(self.path, self.database, self.busy_timeout, role=_JOURNAL,
                         memory=True)
        if self._signpost is not None:
            _open(self._signpost, self.database, self.busy_timeout, role=_SIGNPOST,
                  kept_in=self.path).close()
        return _open(self.path, self.database, self.busy_timeout, role=_JOURNAL)

    def _open_memory(self) -> sqlite3.Connection:
        """The first connection, which keeps the in-memory journal alive with this object.

        SQLite's ``memdb`` VFS lets connections wait for each other's locks;
        without it (SQLite before 3.36), a shared cache, whose lock
        conflicts fail at once (``concurrent_update``) instead of waiting.
        """
        try:
            return _open(self.path, self.database, self.busy_timeout, role=_JOURNAL,
                         memory=True)
        except StorageError:
            if "vfs=memdb" not in self.path:
                raise
            self.path = self.path.replace("file:/", "file:").replace(
                "vfs=memdb", "mode=memory&cache=shared")
            return _open(self.path, self.database, self.busy_timeout, role=_JOURNAL,
                         memory=True)


def _create_private(path: str) -> None:
    """Create *path*, empty and ``0600``, if it does not exist yet."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise StorageError(path, f"cannot be created ({error.strerror})") from None
    os.close(descriptor)


def _pragma(connection: sqlite3.Connection, name: str) -> int:
    return int(connection.execute(f"PRAGMA {name}").fetchone()[0])


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
    application_id = _pragma(connection, "application_id")
    version = _pragma(connection, "user_version")
    if application_id != APPLICATION_ID:
        used = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id != 0 or version != 0 or used:
            raise StorageError(name, "is not an account_merge attempts journal (another "
                                     "application's file?)")
    if version > SCHEMA_VERSION:
        raise StorageError(name, f"has journal schema version {version}, newer than the "
                                 f"{SCHEMA_VERSION} this account_merge knows; upgrade "
                                 f"account_merge to open it")
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


# -- transactions --------------------------------------------------------------------------
@attrs.frozen
class JournalRecord:
    """An audit record of the journal, with its place: after the database's ``main_seq``."""

    main_seq: int
    seq: int
    record: AuditRecord


class JournalTransaction:
    """One transaction of the journal for one unit of work (see the module docstring).

    Begun by its first statement; :meth:`commit` and :meth:`rollback` end
    it, and the next statement begins another.  After a driver error it is
    rolled back at once (releasing the journal's lock) and refuses to
    commit until :meth:`rollback`.
    """

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

    # counters ------------------------------------------------------------------------
    def fetch(self, request: Fetch) -> dict[str, ThrottleState]:
        """The counters *request* reads, and those it counts (written counted, read as before)."""
        keys = list(dict.fromkeys((*request.throttles, *request.count)))
        if not keys:
            return {}
        connection = self._begun()
        with self._translating():
            rows = {row[0]: row for row in connection.execute(
                _SELECT_THROTTLES.format(marks=", ".join("?" * len(keys))),
                (self._namespace, *keys))}
        with self._decoding("a throttle state"):
            found = {key: _throttle(rows[key]) if key in rows else ThrottleState(key)
                     for key in keys}
        if request.count:
            assert request.at is not None  # Fetch checks it
            at, keep = request.at, request.keep
            self.put_throttles([
                ThrottleState(key=key, consecutive=found[key].consecutive + 1,
                              last_failure_at=at, recent=(*found[key].recent, at)[-keep:])
                for key in request.count])
        return found

    def put_throttles(self, states: Sequence[ThrottleState]) -> None:
        """Insert or replace these counters."""
        if not states:
            return
        connection = self._begun()
        with self._translating():
            connection.executemany(_PUT_THROTTLE, [
                (self._namespace, s.key, s.consecutive, _time(s.last_failure_at),
                 json.dumps([t.isoformat() for t in s.recent])) for s in states])

    # the audit trail -----------------------------------------------------------------
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


    # retention -------------------------------------------------------------------------
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


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _record(row: Sequence[Any]) -> AuditRecord:
    """The audit record of a row of ``_AUDIT_COLUMNS``."""
    return AuditRecord(at=datetime.fromisoformat(row[2]), action=_ACTIONS[row[3]],
                       outcome=row[4], actor=row[5], account_id=row[6], login=row[7],
                       detail=row[8])


def _throttle(row: Sequence[Any]) -> ThrottleState:
    return ThrottleState(key=row[0], consecutive=row[1],
                         last_failure_at=None if row[2] is None else datetime.fromisoformat(
                             row[2]),
                         recent=tuple(datetime.fromisoformat(t) for t in json.loads(row[3])))


# -- change sets and trails ----------------------------------------------------------------
@attrs.frozen
class Attempts:
    """What of a change set goes to the journal: counters, and records of failures.

    Each failure comes with the number of the change set's records kept in
    the database that precede it.
    """

    throttles: tuple[ThrottleState, ...] = ()
    failures: tuple[tuple[int, AuditRecord], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.throttles or self.failures)

    def placed(self, before: int, after: int, kept: int) -> list[tuple[int, AuditRecord]]:
        """The failures with the database's record each follows (its ``main_seq``).

        *before* is the database's last audit record before the change set
        was written there, *after* its last one after, and *kept* how many
        records the change set wrote there (numbered up to *after*, one
        writer at a time).
        """
        first = after - kept + 1
        return [(before if count == 0 else first + count - 1, record)
                for count, record in self.failures]


def split_attempts(changes: ChangeSet) -> tuple[ChangeSet, Attempts]:
    """*changes* without its counters and records of failures, and those apart."""
    kept: list[AuditRecord] = []
    failures: list[tuple[int, AuditRecord]] = []
    for record in changes.audit:
        if record.outcome == _SUCCESS:
            kept.append(record)
        else:
            failures.append((len(kept), record))
    if not changes.throttles and not failures:
        return changes, Attempts()
    rest = attrs.evolve(changes, throttles=(), audit=tuple(kept))
    return rest, Attempts(throttles=changes.throttles, failures=tuple(failures))


def merge_trails(main: Sequence[tuple[int, AuditRecord]], journal: Sequence[JournalRecord],
                 limit: int) -> list[AuditRecord]:
    """The last *limit* records of both trails, oldest first, in the order they were written.

    *main* holds the database's records with their sequence numbers, and
    *journal* the journal's, each the last *limit* of its trail, oldest
    first.
    """
    if limit <= 0:
        return []
    keyed = [((seq, 0, 0), record) for seq, record in main]
    keyed.extend(((j.main_seq, 1, j.seq), j.record) for j in journal)
    keyed.sort(key=lambda item: item[0])
    return [record for _, record in keyed[-limit:]]


# -- one journal per database in a process -------------------------------------------------
_registry_lock = threading.Lock()
_files: dict[tuple[str, str], AttemptsJournal] = {}
_named: dict[str, AttemptsJournal] = {}
_held: weakref.WeakKeyDictionary[Any, AttemptsJournal] = weakref.WeakKeyDictionary()


def file_journal(database: str | os.PathLike[str],
                 template: str | os.PathLike[str] | None = None) -> AttemptsJournal:
    """The journal of the SQLite database file *database* (see :func:`journal_path`)."""
    real = os.path.realpath(os.fspath(database))
    path = journal_path(real, template)
    default = journal_path(real)
    if path == real:
        raise InvalidInput("attempts_journal", "names the database itself")
    with _registry_lock:
        journal = _files.get((real, path))
        if journal is None:
            journal = _files[real, path] = AttemptsJournal(
                path, database=real, signpost=None if path == default else default)
        return journal


def memory_journal(owner: Hashable) -> AttemptsJournal:
    """The in-memory journal of an in-memory database, one per *owner* in this process.

    *owner* names the database: a string (Django's test database name), or
    the object that holds it (an engine), kept weakly, so that the journal
    goes with it.
    """
    with _registry_lock:
        journal = _named.get(owner) if isinstance(owner, str) else _held.get(owner)
        if journal is None:
            name = f"file:/account-merge-attempts-{uuid.uuid4().hex}?vfs=memdb"
            database = owner if isinstance(owner, str) else f"{type(owner).__name__} in memory"
            journal = AttemptsJournal(name, database=database, memory=True)
            if isinstance(owner, str):
                _named[owner] = journal
            else:
                _held[owner] = journal
        return journal
