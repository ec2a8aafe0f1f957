"""The SQLite store passes the storage contract, on a fresh file per store."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from account_merge import SQLiteStorage
from account_merge.ports import Storage
from account_merge.testing.conformance import StorageContract


def dump_sqlite(path: str | Path) -> str:
    """Every row of every table of the SQLite file at *path*, as text."""
    connection = sqlite3.connect(path)
    try:
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return "\n".join(f"{table}: {row!r}" for table in tables
                         for row in connection.execute(f'SELECT * FROM "{table}"'))
    finally:
        connection.close()


class TestSQLiteStorage(StorageContract):
    @pytest.fixture(autouse=True)
    def _files_in(self, tmp_path: Path) -> None:
        self.directory = tmp_path
        self.numbers = itertools.count()

    def make_storage(self) -> Storage:
        return SQLiteStorage(self.directory / f"store-{next(self.numbers)}.sqlite3")

    def dump_storage(self, storage: Storage) -> str:
        """Every row of every table of the file (and its -wal content, through SQLite)."""
        assert isinstance(storage, SQLiteStorage)
        return dump_sqlite(storage.path)

    def make_broken_storage(self) -> Storage:
        garbage = self.directory / "garbage.sqlite3"
        garbage.write_bytes(bytes(range(256)) * 64)
        return SQLiteStorage(garbage)
