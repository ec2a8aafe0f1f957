"""DjangoStorage passes the storage contract, on SQLite and on PostgreSQL.

The contract runs units of work in several threads at once, so these
tests commit for real (``transaction=True``, Django's
``TransactionTestCase``); each store starts from empty tables.  The state machine runs fewer
examples than on the other stores: each step costs Django's ORM a few
milliseconds, and it runs on two databases here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connections
from django_stores import empty_store, forget_connection, unusable_store

from account_merge.ports import Storage
from account_merge.testing.conformance import StorageContract

BROKEN = "account_merge_unusable"


@pytest.mark.django_db(transaction=True)
class TestDjangoStorageOnSQLite(StorageContract):
    state_machine_examples = 6
    alias = "default"

    @pytest.fixture(autouse=True)
    def _broken_file(self, tmp_path: Path) -> None:
        self.garbage = tmp_path / "garbage.sqlite3"

    def make_storage(self) -> Storage:
        return empty_store(self.alias)

    def make_broken_storage(self) -> Storage:
        self.garbage.write_bytes(bytes(range(256)) * 64)
        return unusable_store(BROKEN, {**connections.settings["default"],
                                       "NAME": str(self.garbage)})

    def close_storage(self, storage: Storage) -> None:
        forget_connection(BROKEN)


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
class TestDjangoStorageOnPostgreSQL(StorageContract):
    state_machine_examples = 6
    alias = "postgres"

    def make_storage(self) -> Storage:
        return empty_store(self.alias)

    def make_broken_storage(self) -> Storage:
        return unusable_store(BROKEN, {**connections.settings["postgres"],
                                       "HOST": "/nonexistent-socket-folder"})

    def close_storage(self, storage: Storage) -> None:
        forget_connection(BROKEN)
