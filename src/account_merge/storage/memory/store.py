"""InMemoryStorage: the store, and its unit of work combining every tier."""

from __future__ import annotations

import threading

from account_merge.ports.storage import ChangeSet, write_alone
from account_merge.storage.memory.recovery import _RecoveryTier
from account_merge.storage.memory.register import _RegisterTier
from account_merge.storage.memory.retention import _RetentionTier
from account_merge.storage.memory.tables import _Tables


class _InMemoryUnitOfWork(_RecoveryTier, _RegisterTier, _RetentionTier):
    """The unit of work of :class:`InMemoryStorage`: the core tier and every optional one."""


class InMemoryStorage:
    """A store in memory, with real units of work (see :mod:`account_merge.storage.memory`)."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()

    def unit_of_work(self, *, write: bool = True) -> _InMemoryUnitOfWork:
        """A new unit of work; use it in a ``with`` block."""
        return _InMemoryUnitOfWork(self._tables, self._lock)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own."""
        write_alone(self, changes)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"InMemoryStorage(accounts={len(self._tables.accounts)})"
