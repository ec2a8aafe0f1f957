"""SQLAlchemyStorage: the store on PostgreSQL or SQLite, through SQLAlchemy 2 Core.

Two ways to use it:

- **from an engine**, ``SQLAlchemyStorage(engine)``: each unit of work
  checks a connection out of the engine's pool and runs one transaction on
  it; ``commit()`` commits it.  On PostgreSQL a step is one round trip: a
  fetch is one statement, a change set one statement, and
  ``storage.write(changes)`` one statement in autocommit (see
  :mod:`~account_merge.storage.sqlalchemy.postgres`).
- **inside a host's session**, ``SQLAlchemyStorage(session=db.session)``
  (a :class:`~sqlalchemy.orm.Session`, or a callable returning the current
  one, such as a ``scoped_session``): each unit of work runs in a SAVEPOINT
  (``session.begin_nested()``) of the session's transaction, and its
  ``commit()`` only releases the savepoint.  Nothing is durable until the
  host commits its session, and a host rollback undoes the library's work
  with its own; the locks the library took are held until then.  Except
  the record of failed attempts, on PostgreSQL: counters and the audit
  records of failures go through a side connection, committed with the
  unit of work, so that a host rolling back cannot erase them (rule 6 of
  :mod:`account_merge.ports.storage`).  On SQLite they ride on the host's
  transaction.

The tables (prefixed ``account_merge_`` unless the host chooses another
prefix) are described by :func:`make_metadata`, for the host's Alembic
migrations; :meth:`SQLAlchemyStorage.create_schema` creates them for a new
store and :meth:`SQLAlchemyStorage.upgrade_schema` brings the tables of an
earlier release up to date, for apps without migrations.  The store has
the optional tier ``register`` (the school's register,
:mod:`~account_merge.storage.sqlalchemy.register`), in SQLAlchemy Core on
both dialects.

Concurrency.  On PostgreSQL, at the default READ COMMITTED isolation:
counters are locked by key (the row of the counter, made if needed), then
accounts with ``SELECT ... ORDER BY id FOR UPDATE``; events take the one
row of ``outbox_head``, so outbox positions are gap-free and visible in
commit order.  On SQLite, a writing unit of work begins with ``BEGIN
IMMEDIATE``: one writer at a time.  Serialization failures, deadlocks and
lock timeouts (SQLSTATE 40001, 40P01, 55P03; "database is locked" on
SQLite) become :class:`~account_merge.exceptions.ConcurrentUpdate`, which
the service retries a bounded number of times; any other driver error
becomes :class:`~account_merge.exceptions.StorageError` naming the
database URL without its password.

Nothing connects at import or construction time.
"""

from account_merge.storage.sqlalchemy.schema import DEFAULT_PREFIX, make_metadata, metadata
from account_merge.storage.sqlalchemy.store import SQLAlchemyStorage

__all__ = ["DEFAULT_PREFIX", "SQLAlchemyStorage", "make_metadata", "metadata"]
