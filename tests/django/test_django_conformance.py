"""DjangoStorage passes the storage contract, on SQLite and on PostgreSQL.

The contract runs units of work in several threads at once, so these
tests commit for real (``transaction=True``, Django's
``TransactionTestCase``); each store starts from empty tables.  The state
machine runs fewer examples than on the other stores: each step costs
Django's ORM a few milliseconds, and it runs on two databases here
(``ACCOUNT_MERGE_STATE_MACHINE_EXAMPLES`` raises it).

On both databases the store also runs inside a host's transaction
(``hosted_storage``): failed attempts go through the side connection
(PostgreSQL) or the attempts journal (SQLite) and outlive the host's
rollback (rule 6).  A store without them fails that part of the contract.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from django.db import connections, transaction
from django_stores import dump_database, empty_store, forget_connection, unusable_store

from account_merge.contrib.django.storage import DjangoStorage
from account_merge.ports import Storage
from account_merge.testing.conformance import HostRollbackContract, StorageContract

BROKEN = "account_merge_unusable"
EXAMPLES = int(os.environ.get("ACCOUNT_MERGE_STATE_MACHINE_EXAMPLES", "6"))


@contextmanager
def inside_a_host_transaction(storage: Storage, alias: str) -> Iterator[Storage]:
    """*storage*, its units of work inside a transaction the host rolls back at the end."""
    with transaction.atomic(using=alias):
        yield storage
        transaction.set_rollback(True, using=alias)


@pytest.mark.django_db(transaction=True)
class TestDjangoStorageOnSQLite(StorageContract):
    state_machine_examples = EXAMPLES
    alias = "default"

    @pytest.fixture(autouse=True)
    def _broken_file(self, tmp_path: Path) -> None:
        self.garbage = tmp_path / "garbage.sqlite3"

    def make_storage(self) -> Storage:
        return empty_store(self.alias)

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage]:
        return inside_a_host_transaction(storage, self.alias)

    def dump_storage(self, storage: Storage) -> str:
        assert isinstance(storage, DjangoStorage)
        return dump_database(self.alias, storage)

    def make_broken_storage(self) -> Storage:
        self.garbage.write_bytes(bytes(range(256)) * 64)
        return unusable_store(BROKEN, {**connections.settings["default"],
                                       "NAME": str(self.garbage)})

    def close_storage(self, storage: Storage) -> None:
        storage.close()
        forget_connection(BROKEN)


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
class TestDjangoStorageOnPostgreSQL(StorageContract):
    state_machine_examples = EXAMPLES
    alias = "postgres"

    def make_storage(self) -> Storage:
        return empty_store(self.alias)

    def make_broken_storage(self) -> Storage:
        return unusable_store(BROKEN, {**connections.settings["postgres"],
                                       "HOST": "/nonexistent-socket-folder"})

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage]:
        return inside_a_host_transaction(storage, self.alias)

    def dump_storage(self, storage: Storage) -> str:
        assert isinstance(storage, DjangoStorage)
        return dump_database(self.alias, storage)

    def close_storage(self, storage: Storage) -> None:
        storage.close()
        forget_connection(BROKEN)


class WithoutSideConnection(DjangoStorage):
    """The store as it was before rule 6: everything in the host's transaction."""

    def unit_of_work(self, *, write: bool = True):  # type: ignore[no-untyped-def]
        uow = super().unit_of_work(write=write)
        uow._uses_side = lambda: False  # type: ignore[method-assign]
        return uow


@pytest.mark.django_db(transaction=True, databases=["postgres"])
@pytest.mark.usefixtures("django_postgres")
@pytest.mark.xfail(strict=True, raises=(AssertionError, pytest.fail.Exception),
                   reason="without the side connection the host's rollback erases the failures")
class TestTheContractCatchesAStoreWithoutTheSideConnection(HostRollbackContract):
    alias = "postgres"

    def make_storage(self) -> Storage:
        empty_store(self.alias)
        return WithoutSideConnection(using=self.alias)

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage]:
        return inside_a_host_transaction(storage, self.alias)


class WithoutJournal(DjangoStorage):
    """The store as it was before rule 6 on SQLite: everything in the host's transaction."""

    def unit_of_work(self, *, write: bool = True):  # type: ignore[no-untyped-def]
        uow = super().unit_of_work(write=write)
        uow._uses_journal = lambda: False  # type: ignore[method-assign]
        return uow


@pytest.mark.django_db(transaction=True)
@pytest.mark.xfail(strict=True, raises=(AssertionError, pytest.fail.Exception),
                   reason="without the attempts journal the host's rollback erases the failures")
class TestTheContractCatchesAStoreWithoutTheJournal(HostRollbackContract):
    alias = "default"

    def make_storage(self) -> Storage:
        empty_store(self.alias)
        return WithoutJournal(using=self.alias)

    def hosted_storage(self, storage: Storage) -> AbstractContextManager[Storage]:
        return inside_a_host_transaction(storage, self.alias)
