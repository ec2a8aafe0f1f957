"""A change set split between database and journal, and the two audit trails merged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from account_merge.domain.audit import AuditRecord
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.storage import ChangeSet
from account_merge.storage.attempts.rows import JournalRecord

_SUCCESS: Final = "success"


@attrs.frozen
class Attempts:
    """What of a change set goes to the journal: counters, and records of failures.

    Each failure comes with the number of the change set's records kept in
    the database that precede it.
    """

    throttles: tuple[ThrottleState, ...] = ()
    failures: tuple[tuple[int, AuditRecord], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.throttles or self.failures)

    def placed(self, before: int, after: int, kept: int) -> list[tuple[int, AuditRecord]]:
        """The failures with the database's record each follows (its ``main_seq``).

        *before* is the database's last audit record before the change set
        was written there, *after* its last one after, and *kept* how many
        records the change set wrote there (numbered up to *after*, one
        writer at a time).
        """
        first = after - kept + 1
        return [(before if count == 0 else first + count - 1, record)
                for count, record in self.failures]


def split_attempts(changes: ChangeSet) -> tuple[ChangeSet, Attempts]:
    """*changes* without its counters and records of failures, and those apart."""
    kept: list[AuditRecord] = []
    failures: list[tuple[int, AuditRecord]] = []
    for record in changes.audit:
        if record.outcome == _SUCCESS:
            kept.append(record)
        else:
            failures.append((len(kept), record))
    if not changes.throttles and not failures:
        return changes, Attempts()
    rest = attrs.evolve(changes, throttles=(), audit=tuple(kept))
    return rest, Attempts(throttles=changes.throttles, failures=tuple(failures))


def merge_trails(main: Sequence[tuple[int, AuditRecord]], journal: Sequence[JournalRecord],
                 limit: int) -> list[AuditRecord]:
    """The last *limit* records of both trails, oldest first, in the order they were written.

    *main* holds the database's records with their sequence numbers, and
    *journal* the journal's, each the last *limit* of its trail, oldest
    first.
    """
    if limit <= 0:
        return []
    keyed = [((seq, 0, 0), record) for seq, record in main]
    keyed.extend(((j.main_seq, 1, j.seq), j.record) for j in journal)
    keyed.sort(key=lambda item: item[0])
    return [record for _, record in keyed[-limit:]]
