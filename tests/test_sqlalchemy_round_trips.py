"""Round trips to PostgreSQL of a merge and a sign-in, counted from the driver.

libpq's trace (psycopg's ``PGconn.trace``) writes every message the client
sends; a round trip is a message after which the client waits for the
server: a simple ``Query`` (``BEGIN``, ``COMMIT``) or the ``Sync`` that
ends an extended-protocol statement.  The store runs on a pool of one
connection, warmed up so that psycopg has prepared its statements (it
prepares a statement the fifth time a connection runs it, at the cost of
one more round trip then).  Counts are deterministic; times are not, and
are never asserted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from account_merge import MergeService
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import FakeClock, fast_verifier
from sqlalchemy_kit import SCHOOL, STRONG, child, fresh_prefix

psycopg_pq = pytest.importorskip("psycopg.pq")

#: The targets of the architecture: a merge, a sign-in, including BEGIN and COMMIT.
MERGE_ROUND_TRIPS, SIGN_IN_ROUND_TRIPS = 8, 4
WARM_UP = 6


class Tracer:
    """Counts the round trips of the one connection of *engine*'s pool."""

    def __init__(self, engine: sqlalchemy.Engine, path: Path) -> None:
        self.engine = engine
        self.path = path

    def count(self, step: Callable[[], Any]) -> list[str]:
        """The round trips of *step*: ``BEGIN``, ``COMMIT``, or ``statement`` (a Sync)."""
        with self.engine.connect() as conn:
            pgconn = conn.connection.driver_connection.pgconn  # type: ignore[union-attr]
        with self.path.open("w") as file:
            pgconn.trace(file.fileno())
            pgconn.set_trace_flags(psycopg_pq.Trace.SUPPRESS_TIMESTAMPS
                                   | psycopg_pq.Trace.REGRESS_MODE)
            try:
                step()
            finally:
                pgconn.untrace()
        trips = []
        for line in self.path.read_text().splitlines():
            direction, _, message, *rest = [*line.split("\t"), ""]
            if direction == "F" and message == "Sync":
                trips.append("statement")
            elif direction == "F" and message == "Query":
                trips.append(rest[0].strip().strip('"').split()[0])
        return trips


@pytest.fixture(params=[None, 5.0], ids=["no-lock-timeout", "lock-timeout"])
def store(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[SQLAlchemyStorage]:
    """A store on an engine of one connection (with and without a lock_timeout)."""
    storage = SQLAlchemyStorage.from_url(postgres_url, prefix=fresh_prefix("rt"), pool_size=1,
                                         max_overflow=0, lock_timeout=request.param)
    storage.create_schema()
    yield storage
    storage.metadata.drop_all(storage._bind_engine())
    storage.close()


def test_a_merge_and_a_sign_in_take_few_round_trips(store: SQLAlchemyStorage,
                                                    tmp_path: Path) -> None:
    service = MergeService(store, fast_verifier(), FakeClock())
    numbers = itertools.count()

    def family() -> tuple[Any, Any]:
        n = next(numbers)
        first = service.issue_account(SCHOOL, "Claire Robert", [child(2 * n)])
        second = service.issue_account(SCHOOL, "Claire Robert", [child(2 * n + 1)])
        return service.activate(first.login, first.provisional_password, STRONG), second

    for _ in range(WARM_UP):
        principal, letter = family()
        service.merge(principal.id, letter.login, letter.provisional_password)
        service.authenticate(principal.login, STRONG, client="192.0.2.1")
    principal, letter = family()
    tracer = Tracer(store._bind_engine(), tmp_path / "trace.txt")

    merge = tracer.count(lambda: service.merge(principal.id, letter.login,
                                               letter.provisional_password))
    sign_in = tracer.count(lambda: service.authenticate(principal.login, STRONG,
                                                        client="192.0.2.1"))

    assert len(merge) <= MERGE_ROUND_TRIPS, merge
    assert len(sign_in) <= SIGN_IN_ROUND_TRIPS, sign_in
    # What they are: one statement per step.
    assert merge == ["BEGIN", "statement", "COMMIT",              # count the attempt
                     "BEGIN", "statement", "statement", "COMMIT"]  # lock and read, write
    assert sign_in == ["BEGIN", "statement", "COMMIT",            # count the attempt
                       "statement"]                               # the success, in autocommit
