"""SQLAlchemyStorage passes the storage contract on PostgreSQL and on a SQLite file.

``ACCOUNT_MERGE_STATE_MACHINE_EXAMPLES`` raises the examples of the state
machine for a longer run (10 by default here).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.orm import Session

from account_merge.ports import Storage
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing.conformance import StorageContract
from sqlalchemy_kit import fresh_prefix, pg_engine, sqlite_engine
from store_dumps import dump_sqlite, dump_tables

__all__ = ["pg_engine"]

EXAMPLES = int(os.environ.get("ACCOUNT_MERGE_STATE_MACHINE_EXAMPLES", "10"))


@contextlib.contextmanager
def in_a_session(engine: sqlalchemy.Engine, prefix: str) -> Iterator[Storage]:
    """A store in a host's session on the same tables; the host rolls back at the end."""
    with Session(engine) as session:
        try:
            yield SQLAlchemyStorage(session=session, prefix=prefix)
        finally:
            session.rollback()


class TestConformanceOnPostgres(StorageContract):
    """The storage contract on PostgreSQL, from an engine; hosted in a session for rule 6."""

    state_machine_examples = EXAMPLES

    @pytest.fixture(autouse=True)
    def _server(self, pg_engine: sqlalchemy.Engine, postgres_url: str) -> None:
        self.engine = pg_engine
        self.url = postgres_url

    def make_storage(self) -> Storage:
        storage = SQLAlchemyStorage(self.engine, prefix=fresh_prefix("c"))
        storage.create_schema()
        return storage

    def close_storage(self, storage: Storage) -> None:
        assert isinstance(storage, SQLAlchemyStorage)
        storage.metadata.drop_all(self.engine)
        storage.close()

    def dump_storage(self, storage: Storage) -> str:
        assert isinstance(storage, SQLAlchemyStorage)
        return dump_tables(self.engine, storage.prefix)

    def make_broken_storage(self) -> Storage:
        no_server = self.url.split("?host=")[0] + "?host=/nonexistent-socket-dir"
        return SQLAlchemyStorage.from_url(no_server)

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage]:
        assert isinstance(storage, SQLAlchemyStorage)
        return in_a_session(self.engine, storage.prefix)


class TestConformanceOnSQLite(StorageContract):
    """The storage contract on a SQLite file, from an engine; hosted in a session for rule 6."""

    state_machine_examples = EXAMPLES

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path
        self.engines: dict[int, sqlalchemy.Engine] = {}

    def make_storage(self) -> Storage:
        engine = sqlite_engine(self.folder / f"{fresh_prefix('store')}.sqlite3")
        storage = SQLAlchemyStorage(engine)
        storage.create_schema()
        self.engines[id(storage)] = engine
        return storage

    def close_storage(self, storage: Storage) -> None:
        self.engines.pop(id(storage)).dispose()

    def dump_storage(self, storage: Storage) -> str:
        engine = self.engines[id(storage)]
        assert engine.url.database is not None
        return dump_sqlite(engine.url.database)

    def make_broken_storage(self) -> Storage:
        garbage = self.folder / "not-a-database.sqlite3"
        garbage.write_bytes(b"this is not a SQLite database, " * 100)
        return SQLAlchemyStorage.from_url(f"sqlite:///{garbage}")

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage]:
        assert isinstance(storage, SQLAlchemyStorage)
        return in_a_session(self.engines[id(storage)], storage.prefix)
