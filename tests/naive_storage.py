"""A deliberately broken store: no locking, no rollback, counts that are not atomic.

It exists to prove that the conformance suite, the race tests and the fault
tests catch what they claim to catch: each of them must fail on it.
"""

from __future__ import annotations

import time

import attrs

from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import Fetch, Fetched
from account_merge.storage.memory import InMemoryStorage, _InMemoryUnitOfWork

#: How long a naive count waits between reading a counter and writing it back.
COUNT_WINDOW = 0.002


class _NoLock:
    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class _NaiveUnitOfWork(_InMemoryUnitOfWork):
    def rollback(self) -> None:
        self._undo = []  # forgets how to undo: whatever was written stays

    def fetch(self, request: Fetch) -> Fetched:
        """Counts as a store without locks would: read, then write back later."""
        if not request.count:
            return super().fetch(request)
        before = {k: self._t.throttles.get(k, ThrottleState(k)) for k in request.count}
        time.sleep(COUNT_WINDOW)  # another writer's count lands here, and is lost
        fetched = super().fetch(attrs.evolve(request, count=(), at=None,
                                             throttles=(*request.throttles, *request.count)))
        for key, state in before.items():
            assert request.at is not None
            self._t.throttles[key] = ThrottleState(
                key, state.consecutive + 1, request.at,
                (*state.recent, request.at)[-request.keep:])
        return attrs.evolve(fetched, throttles={**fetched.throttles, **before})


class NaiveStorage(InMemoryStorage):
    """InMemoryStorage without its lock, without rollback, and with non-atomic counts."""

    def unit_of_work(self, *, write: bool = True) -> _NaiveUnitOfWork:  # type: ignore[override]
        return _NaiveUnitOfWork(self._tables, _NoLock())  # type: ignore[arg-type]
