"""Counting attempts in the journal: the failure counters read, counted and written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import Fetch
from account_merge.storage.attempts.rows import _SELECT_THROTTLES, _throttle, _time
from account_merge.storage.attempts.transaction_base import TransactionBase

_PUT_THROTTLE: Final = (
    "INSERT INTO throttles (namespace, key, consecutive, last_failure_at, recent)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO UPDATE SET"
    " consecutive = excluded.consecutive, last_failure_at = excluded.last_failure_at,"
    " recent = excluded.recent"
)


class CounterMethods(TransactionBase):
    """The counters of a :class:`~account_merge.storage.attempts.JournalTransaction`."""

    def fetch(self, request: Fetch) -> dict[str, ThrottleState]:
        """The counters *request* reads, and those it counts (written counted, read as before)."""
        keys = list(dict.fromkeys((*request.throttles, *request.count)))
        if not keys:
            return {}
        connection = self._begun()
        with self._translating():
            rows = {row[0]: row for row in connection.execute(
                _SELECT_THROTTLES.format(marks=", ".join("?" * len(keys))),
                (self._namespace, *keys))}
        with self._decoding("a throttle state"):
            found = {key: _throttle(rows[key]) if key in rows else ThrottleState(key)
                     for key in keys}
        if request.count:
            assert request.at is not None  # Fetch checks it
            at, keep = request.at, request.keep
            self.put_throttles([
                ThrottleState(key=key, consecutive=found[key].consecutive + 1,
                              last_failure_at=at, recent=(*found[key].recent, at)[-keep:])
                for key in request.count])
        return found

    def put_throttles(self, states: Sequence[ThrottleState]) -> None:
        """Insert or replace these counters."""
        if not states:
            return
        connection = self._begun()
        with self._translating():
            connection.executemany(_PUT_THROTTLE, [
                (self._namespace, s.key, s.consecutive, _time(s.last_failure_at),
                 json.dumps([t.isoformat() for t in s.recent])) for s in states])
