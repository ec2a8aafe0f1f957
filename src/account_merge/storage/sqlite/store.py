"""SQLiteStorage: the store, its connections (one per thread) and its unit of work.

The store's unit of work combines the core tier (:mod:`.unit_of_work`)
with the optional tiers' mixins; the store itself has tier ``bulk_load``
(:mod:`.bulk_load`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import AbstractContextManager

import attrs

from account_merge.exceptions import AccountMergeError, InvalidInput, StorageError
from account_merge.ports.storage import ChangeSet
from account_merge.storage.sqlite.bulk_load import _BulkLoadTier
from account_merge.storage.sqlite.errors import _CONCURRENCY_CODES, _translate, _translating
from account_merge.storage.sqlite.recovery import _RecoveryTier
from account_merge.storage.sqlite.register import _RegisterTier
from account_merge.storage.sqlite.retention import _RetentionTier
from account_merge.storage.sqlite.schema import _refuse_unknown, migrate


class _SQLiteUnitOfWork(_RecoveryTier, _RegisterTier, _RetentionTier):
    """The unit of work of :class:`SQLiteStorage`: the core tier and every optional one."""


@attrs.define(eq=False)
class _Slot:
    """A connection and the thread that owns it."""

    connection: sqlite3.Connection
    thread: threading.Thread
    in_use: bool = False
    close_when_idle: bool = False


class SQLiteStorage(_BulkLoadTier):
    """A store in the SQLite file at *path* (see :mod:`account_merge.storage.sqlite`).

    *busy_timeout* is how long, in seconds, a unit of work waits for
    another writer's lock before giving up with ``concurrent_update``.
    Nothing is opened until the first unit of work; the file is created if
    it does not exist (its directory must), readable and writable by its
    owner only.
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

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in one ``BEGIN IMMEDIATE`` transaction of their own, and commit.

        An empty change set opens no transaction.
        """
        if not changes:
            return
        with self.unit_of_work(write=True) as uow:
            uow.apply(changes)
            uow.commit()

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

    def _error(self, error: sqlite3.Error) -> AccountMergeError:
        return _translate(error, self.path, self.busy_timeout)

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

    def _create_private(self) -> None:
        """Create the file, empty and ``0600``, if it does not exist yet.

        Made here rather than by SQLite, which would create it with the
        process's default mode; an existing file (also one another opener
        has just created) is left as it is.
        """
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as error:
            raise StorageError(self.path, f"cannot be opened ({error.strerror})") from None
        os.close(descriptor)

    def _connect(self) -> sqlite3.Connection:
        self._create_private()
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
