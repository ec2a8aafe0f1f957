"""DjangoStorage: the store in the project's database, through Django's ORM.

It meets the storage contract of :mod:`account_merge.ports.storage`
(rules 1 to 6 there) on PostgreSQL and SQLite; what it decides is written
here.

Units of work.  Each unit of work is a :func:`django.db.transaction.atomic`
block on one database alias: ``commit()`` leaves the block normally (a
COMMIT, or the release of a savepoint when the unit of work runs inside a
transaction the host already opened), and leaving the ``with`` block
without ``commit()`` rolls it back.  After ``commit()`` the unit of work
stays usable: the next statement opens a new block.  The alias is the
``using`` given to :class:`DjangoStorage`, else the project's database
routers decide (``db_for_write`` for a writing unit of work,
``db_for_read`` for a reading one, asked about the app's models).

Inside a transaction of the host (``ATOMIC_REQUESTS``, a view wrapped in
``atomic``), the library's writes are only durable when the host commits,
except what rule 6 of the contract keeps, on PostgreSQL: the failed-attempt
counters (counted by :class:`~account_merge.ports.Fetch`, read, locked and
written by :class:`~account_merge.ports.ChangeSet`) and the audit records
of failures go through a *side connection*, a second connection of this
thread to the same database, in a transaction of the unit of work's own
that ``commit()`` commits first (then releases the savepoint) and a
rollback rolls back.  So a view that lets the library's error escape its
atomic request cannot erase a failed attempt, nor lift the throttling
with it.  Events and the audit records of successes stay in the host's
transaction: they commit or roll back with the change they describe.  The
side connection is made when first needed, kept for the thread like
Django's own (closed at the end of a request unless ``CONN_MAX_AGE`` keeps
it, or by :meth:`DjangoStorage.close`), and waits at most
``side_lock_timeout`` seconds for a lock, so that the two connections of
one thread, which the server cannot see waiting on each other, never
wait forever.

On SQLite a second connection could only wait for the write lock the
host's transaction holds, so the store keeps the failed-attempt counters
and the audit records of failures in the *attempts journal*
(:mod:`account_merge.storage.attempts`), a SQLite file of their own beside
the database (``<database>-attempts.sqlite3``; in memory for an in-memory
database), written by the store's own connection in a transaction of the
unit of work's own that ``commit()`` commits first.  It does so in every
unit of work on SQLite, inside a host's transaction or not, so that every
store of the database finds its counters in one place, and it reads,
counts and locks them there (the journal's transaction of a writing unit
of work begins ``IMMEDIATE``, after the database's write lock is taken);
``audit_records`` interleaves both trails in the order they were written.

Concurrency.  On PostgreSQL (READ COMMITTED): ``Fetch(lock=True)`` locks
the counters it names, then the accounts by id: a counter with a
transaction-level advisory lock on its key (so that a counter not stored
yet is protected too) and ``SELECT ... FOR UPDATE``, the accounts with
``SELECT ... FOR UPDATE`` ordered by id; a counted key (``Fetch.count``)
is always locked so, then read and written back in the same transaction,
before the unit of work reads anything else.  A change set's ``expect``
locks the accounts it checks, in id order.  Appending events takes one
advisory lock for the outbox, so positions are gap-free and become
visible in order.  On SQLite, a writing unit of work takes the
database's write lock with its first statement (as ``BEGIN IMMEDIATE``
would; with Django 5.1's ``"transaction_mode": "IMMEDIATE"`` option,
Django already does), so writers wait for each other up to the
connection's ``timeout`` instead of failing half-way, and every
read-modify-write runs under that lock.  Serialization failures,
deadlocks, lock timeouts and "database is locked" become
:class:`~account_merge.exceptions.ConcurrentUpdate`, which the service
retries; any other database error becomes
:class:`~account_merge.exceptions.StorageError` naming the alias and the
database (never its password).

Rows are translated to domain objects explicitly; a row the domain
refuses is a ``StorageError`` too.  Each :meth:`fetch` costs one query
per kind of thing it reads (and, to count attempts, one more to lock the
counters on PostgreSQL and one to write them); :meth:`apply` writes each
part of a change set with one bulk statement.
"""

from account_merge.contrib.django.storage.side import (
    DEFAULT_SIDE_LOCK_TIMEOUT,
    close_obsolete_side_connections,
    close_side_connections,
)
from account_merge.contrib.django.storage.store import DjangoStorage
from account_merge.contrib.django.storage.unit_of_work import _DjangoUnitOfWork as _DjangoUnitOfWork

__all__ = ["DEFAULT_SIDE_LOCK_TIMEOUT", "DjangoStorage", "close_obsolete_side_connections",
           "close_side_connections"]
