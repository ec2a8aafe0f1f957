"""The attempts journal of one database: its connections, one per thread.

It adopts, once per namespace, the counters a store kept in the database
before the journal (see :mod:`account_merge.storage.attempts`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import StorageError
from account_merge.storage.attempts.rows import _time
from account_merge.storage.attempts.schema import _JOURNAL, _SIGNPOST, _open
from account_merge.storage.attempts.transaction import JournalTransaction
from account_merge.storage.attempts.transaction_base import TransactionBase
from account_merge.storage.sqlite.errors import _translate

#: Seconds a journal transaction waits for another writer's lock.
DEFAULT_BUSY_TIMEOUT: Final = 10.0

_ADOPT_THROTTLE: Final = (
    "INSERT INTO throttles (namespace, key, consecutive, last_failure_at, recent)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO NOTHING"
)


# -- the journal ---------------------------------------------------------------------------
class _Local(threading.local):
    connection: sqlite3.Connection | None = None
    pid: int = 0
    owner: TransactionBase | None = None


class AttemptsJournal:
    """The attempts journal of one database (see :mod:`account_merge.storage.attempts`).

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
        of *namespace* begins (see :mod:`account_merge.storage.attempts`).
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
