"""Round trips to PostgreSQL per operation, counted from the driver.

libpq's trace (psycopg's ``PGconn.trace``) records every message the
client sends.  The client waits for the server after a simple ``Query``
(psycopg sends ``BEGIN`` and ``COMMIT`` so) and after the ``Sync`` that
ends a statement of the extended protocol: each is one round trip.  The
store runs on an engine of one connection, so that every statement of an
operation goes through the traced connection, and the operations are
warmed up first (psycopg prepares a statement the fifth time a connection
runs it, at the cost of one more round trip that time).  Counts are
deterministic: one measurement is enough.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import argon2

from account_merge import MergeService
from ops import OPERATIONS, Workload, make_hashes, verifier_for

#: The targets of the architecture, BEGIN and COMMIT included.
ROUND_TRIP_TARGETS: dict[str, int] = {"merge": 8, "authenticate": 4}
WARM_UP = 6


@dataclass
class TripsResult:
    store: str
    warm_up: int
    trips: dict[str, list[str]]  # op -> "BEGIN", "COMMIT", "statement", in order


def _read_trace(path: Path) -> list[str]:
    trips = []
    for line in path.read_text().splitlines():
        direction, _, message, *rest = [*line.split("\t"), ""]
        if direction != "F":
            continue
        if message == "Sync":
            trips.append("statement")
        elif message == "Query":
            text = rest[0].strip().strip('"').split()
            trips.append(text[0].upper() if text else "Query")
    return trips


def traced(engine: object, step: Callable[[], object]) -> list[str]:
    """The round trips *step* makes on the one connection of *engine*'s pool."""
    from psycopg import pq  # noqa: PLC0415

    with engine.connect() as conn:  # type: ignore[attr-defined]
        pgconn = conn.connection.driver_connection.pgconn
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.txt"
        with path.open("w") as file:
            pgconn.trace(file.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                step()
            finally:
                pgconn.untrace()
        return _read_trace(path)


def count_round_trips(url: str, hasher: argon2.PasswordHasher) -> TripsResult:
    """Each operation's round trips on SQLAlchemyStorage, on an engine of one connection."""
    import sqlalchemy  # noqa: PLC0415

    from account_merge.storage.sqlalchemy import SQLAlchemyStorage  # noqa: PLC0415

    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)
    try:
        storage = SQLAlchemyStorage(engine)
        storage.create_schema()
        verifier = verifier_for(hasher)
        workload = Workload(MergeService(storage, verifier), WARM_UP + 1, make_hashes(verifier))
        for i in range(WARM_UP):
            for op in OPERATIONS:
                workload.run(op, i)
        trips = {op: traced(engine, lambda op=op: workload.run(op, WARM_UP))  # type: ignore[misc]
                 for op in OPERATIONS}
    finally:
        engine.dispose()
    return TripsResult("postgresql", WARM_UP, trips)
