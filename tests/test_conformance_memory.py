"""The in-memory store passes the storage contract."""

import pprint

from account_merge import InMemoryStorage
from account_merge.ports import Storage
from account_merge.testing.conformance import StorageContract


class TestInMemoryStorage(StorageContract):
    def make_storage(self) -> Storage:
        return InMemoryStorage()

    def dump_storage(self, storage: Storage) -> str:
        """Every table of the store: each attribute of its tables, whatever it is."""
        assert isinstance(storage, InMemoryStorage)
        return pprint.pformat(vars(storage._tables), width=200)
