"""The unit of work of SQLAlchemyStorage: one transaction, or one savepoint of the host's.

What runs on a connection comes from
:mod:`~account_merge.storage.sqlalchemy.postgres` (one statement per step
on PostgreSQL) or :mod:`~account_merge.storage.sqlalchemy.portable`
(SQLAlchemy Core on SQLite); the unit of work decides *where* it runs:

- **engine mode**: a connection checked out of the pool, one transaction
  on it, begun by the first statement;
- **session mode**: a SAVEPOINT of the host's session; on PostgreSQL the
  record of failed attempts (rule 6 of :mod:`account_merge.ports.storage`:
  counters read, counted or written, and the audit records of failures)
  goes through a *side connection* of the unit of work, committed by its
  ``commit()`` before the savepoint is released, so a host rolling back
  cannot erase it.

On SQLite, in both modes, the record of failed attempts goes to the
attempts journal (:mod:`account_merge.storage.attempts`), a file of its
own beside the database, in a transaction of the unit of work's that
``commit()`` commits first; the rest is written to the database.

Where it runs is :mod:`~account_merge.storage.sqlalchemy.unit_of_work_base`;
the optional tiers' methods are in
:mod:`~account_merge.storage.sqlalchemy.tier_methods`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from sqlalchemy import Connection

from account_merge.domain.audit import AuditRecord
from account_merge.domain.events import OutboxEntry
from account_merge.exceptions import ExpectationFailed
from account_merge.ports.storage import ChangeSet, Fetch, Fetched
from account_merge.storage.attempts import merge_trails, split_attempts
from account_merge.storage.sqlalchemy.postgres import ApplyOutcome, PostgresStatements
from account_merge.storage.sqlalchemy.tier_methods import (
    EmailAndNoticeTierMethods,
    RegisterTierMethods,
    RetentionTierMethods,
)

__all__ = ["SQLAlchemyUnitOfWork", "check_outcome"]

#: The audit outcome that rides on the host's transaction in session mode.
_SUCCESS = "success"


def check_outcome(outcome: ApplyOutcome) -> None:
    """Raise ``ExpectationFailed`` if the preconditions of a change set did not hold."""
    if not outcome.expected:
        raise ExpectationFailed()
    if not outcome.present:
        raise ExpectationFailed("an account to replace is not stored")

class SQLAlchemyUnitOfWork(RegisterTierMethods, EmailAndNoticeTierMethods,
                          RetentionTierMethods):
    """One transaction (engine mode) or one savepoint (session mode) at a time.

    After ``commit()`` or ``rollback()`` the unit of work stays usable: the
    next statement begins a new transaction (or savepoint).  After a
    driver error the transaction is rolled back and every further call
    fails until ``rollback()`` or the end of the ``with`` block, so that
    nothing written before the error can be committed by mistake.
    """

    # reading ---------------------------------------------------------------
    def fetch(self, request: Fetch) -> Fetched:
        if self._pg is None:
            conn = self._c()
            if self._journal is None or not (request.throttles or request.count):
                with self._translating(), self._decoding():
                    return self._s._core.fetch(conn, request)
            # The counters from the journal; the rest from the database.
            with self._journaling():
                throttles = self._journal_c().fetch(request)
            with self._translating(), self._decoding():
                fetched = self._s._core.fetch(conn, attrs.evolve(request, throttles=(),
                                                                 count=()))
            return attrs.evolve(fetched, throttles=throttles)
        if not self._uses_side or not (request.throttles or request.count):
            return self._pg_fetch(self._c, request, side=False)
        # Session mode: counters on the side connection, first (counters, then accounts).
        counters = Fetch(throttles=request.throttles, count=request.count, at=request.at,
                         keep=request.keep, lock=request.lock)
        found = self._pg_fetch(self._side_c, counters, side=True)
        rest = attrs.evolve(request, throttles=(), count=())
        if not (rest.logins or rest.accounts or rest.links or rest.absorbed or rest.receipts
                or rest.establishments):
            return found
        fetched = self._pg_fetch(self._c, rest, side=False)
        return attrs.evolve(fetched, throttles=found.throttles)

    def _pg_fetch(self, connection: Callable[[], Connection], request: Fetch, *,
                  side: bool) -> Fetched:
        assert self._pg is not None
        lock = self._write and request.lock
        self._wrote = self._wrote or bool(request.count) or (lock and bool(request.throttles))
        statement = self._pg.fetch(request, lock=lock, timeout=self._timeout(side=side))
        fetched, stale = self._read(connection(), statement, request)
        if stale:
            # A lock was waited for: read again, in a new snapshot, under the locks
            # now held; the counts are not made twice, and keep what they found.
            again = attrs.evolve(request, count=())
            fetched_again, _ = self._read(
                connection(), self._pg.fetch(again, lock=lock, timeout=None), again)
            fetched = attrs.evolve(fetched_again, throttles={
                **fetched_again.throttles, **{k: fetched.throttles[k] for k in request.count}})
        return fetched

    def _read(self, conn: Connection, statement: tuple[str, dict[str, Any]],
              request: Fetch) -> tuple[Fetched, bool]:
        assert self._pg is not None
        row = self._run(conn, statement)
        with self._decoding():
            return self._pg.read_fetched(row, request)

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        conn = self._c()
        with self._translating(), self._decoding():
            return self._s._core.unpublished(conn, limit)

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        conn = self._c()
        if self._journal is None:
            with self._translating(), self._decoding():
                return self._s._core.audit_records(conn, account_id, limit)
        with self._translating(), self._decoding():
            main = self._s._core.audit_entries(conn, account_id, limit)
        # The journal's records of failures, in their places among the database's.
        with self._journaling():
            return merge_trails(main, self._journal_c().audit_records(account_id, limit),
                                limit)

    # writing ---------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        self._wrote = True
        if self._pg is None:
            conn = self._c()
            rest, journaled = split_attempts(changes) if self._journal is not None \
                else (changes, None)
            if not journaled:
                with self._translating(inserting=True):
                    self._s._core.apply(conn, rest, self._url)
                return
            # Counters and records of failures to the journal; each failure
            # remembers which of the database's records it follows.
            core = self._s._core
            with self._translating(inserting=True):
                before = core.last_audit_seq(conn) if journaled.failures else 0
                core.apply(conn, rest, self._url)
                after = core.last_audit_seq(conn) if journaled.failures and rest.audit \
                    else before
            with self._journaling():
                journal = self._journal_c()
                journal.put_throttles(journaled.throttles)
                journal.append_failures(journaled.placed(before, after, len(rest.audit)))
            return
        if not self._uses_side:
            self._pg_apply(self._c, changes, side=False)
            return
        # Session mode: what records failed attempts goes through the side connection.
        failures = tuple(r for r in changes.audit if r.outcome != _SUCCESS)
        attempts = ChangeSet(throttles=changes.throttles, audit=failures)
        rest = attrs.evolve(changes, throttles=(),
                            audit=tuple(r for r in changes.audit if r.outcome == _SUCCESS))
        if rest:
            self._pg_apply(self._c, rest, side=False)
        if attempts:
            self._pg_apply(self._side_c, attempts, side=True)

    def _pg_apply(self, connection: Callable[[], Connection], changes: ChangeSet, *,
                  side: bool) -> None:
        assert self._pg is not None
        statement = self._pg.apply(changes, timeout=self._timeout(side=side))
        conn = connection()
        if statement is not None:
            check_outcome(PostgresStatements.outcome(self._run(conn, statement,
                                                                inserting=True)))
