"""A deliberately broken store: no locking, no rollback.

It exists to prove that the conformance suite, the race tests and the fault
tests catch what they claim to catch: each of them must fail on it.
"""

from __future__ import annotations

from account_merge.storage.memory import InMemoryStorage, _InMemoryUnitOfWork


class _NoLock:
    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class _NaiveUnitOfWork(_InMemoryUnitOfWork):
    def rollback(self) -> None:
        self._undo = []  # forgets how to undo: whatever was written stays


class NaiveStorage(InMemoryStorage):
    """InMemoryStorage without its lock and without rollback."""

    def unit_of_work(self, *, write: bool = True) -> _NaiveUnitOfWork:  # type: ignore[override]
        return _NaiveUnitOfWork(self._tables, _NoLock())  # type: ignore[arg-type]
