"""SQLiteStorage: a store in one SQLite file, on the standard :mod:`sqlite3` module.

The file is opened in WAL mode with foreign keys on and a busy timeout.
Every thread gets its own connection, made at its first unit of work, so
the threads of a process can share one :class:`SQLiteStorage`; several
processes can open the same file.  A writing unit of work starts with
``BEGIN IMMEDIATE``: it takes the file's single write lock at once, so
concurrent writers wait for each other (up to the busy timeout) instead of
failing half-way, and the rows a use case reads cannot change before it
writes.  That lock is what ``Fetch(lock=True)`` and ``Fetch.count`` need
(rule 2 of :mod:`account_merge.ports.storage`): nothing more is taken.  A
read-only unit of work starts with a deferred ``BEGIN`` and reads a
consistent snapshot without blocking writers.

A :class:`~account_merge.ports.Fetch` is served by one ``SELECT`` per kind
of thing it names (accounts by login and by id together, with their
credentials), a :class:`~account_merge.ports.ChangeSet` by one
``executemany`` per part, in the change set's order; the SQL text of each
statement is built once, so that :mod:`sqlite3` reuses its prepared
statement.  The store has the optional tiers ``email_index`` and
``notices`` (:mod:`account_merge.ports.tiers`, schema version 4) and
``register`` (:mod:`account_merge.ports.register`, schema version 5),
whose passes page by external id and by child id through indexes, and
``retention`` (:mod:`account_merge.ports.retention`, schema version 6),
whose statements find what is due through indexes.

The schema's version is kept in ``PRAGMA user_version`` and the file is
marked as an account_merge store by ``PRAGMA application_id``; forward
migrations (:data:`MIGRATIONS`) run when a connection first opens an
older file.  A new file is created readable and writable by its owner
only (``0600``; SQLite gives its ``-wal`` and ``-shm`` files the
database file's mode); an existing file keeps its mode.  Rows are
translated to domain objects explicitly; datetimes are stored as ISO-8601
text with their UTC offset.  Driver errors never leave this package: a lock
held past the busy timeout becomes
:class:`~account_merge.exceptions.ConcurrentUpdate`, anything else
:class:`~account_merge.exceptions.StorageError` naming the file.
"""

from account_merge.storage.sqlite.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, migrate
from account_merge.storage.sqlite.store import SQLiteStorage

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage", "migrate"]
