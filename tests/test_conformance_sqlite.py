"""The SQLite store passes the storage contract, on a fresh file per store."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from account_merge import SQLiteStorage
from account_merge.ports import Storage
from account_merge.testing.conformance import StorageContract
from store_dumps import dump_sqlite


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
