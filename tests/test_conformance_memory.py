"""The in-memory store passes the storage contract."""

from account_merge import InMemoryStorage
from account_merge.ports import Storage
from account_merge.testing.conformance import StorageContract


class TestInMemoryStorage(StorageContract):
    def make_storage(self) -> Storage:
        return InMemoryStorage()
