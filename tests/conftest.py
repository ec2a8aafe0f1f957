"""Shared fixtures: every service test runs on every store of this package.

The stores are the in-memory one, SQLite on a file, and SQLAlchemy over the
throwaway PostgreSQL server of tests/pg.py (skipped where no server can be
started, unless ACCOUNT_MERGE_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from account_merge import InMemoryStorage, MergeService, SQLiteStorage
from account_merge.ports import Storage
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import CountingVerifier, FakeClock
from security_kit import InstrumentedStorage

pytest_plugins = ["pytester", "pg", "browser_kit"]

_prefixes = itertools.count()


def _postgresql(request: pytest.FixtureRequest, tmp: Path) -> Storage:
    engine: sqlalchemy.Engine = request.getfixturevalue("stores_engine")
    store = SQLAlchemyStorage(engine, prefix=f"s{next(_prefixes)}_")
    store.create_schema()
    return store


#: Every store of this package, by name, built in a test's temporary folder.
STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Storage]] = {
    "memory": lambda request, tmp: InMemoryStorage(),
    "sqlite": lambda request, tmp: SQLiteStorage(tmp / "store.sqlite3"),
    "postgresql": _postgresql,
}


@pytest.fixture(scope="session")
def stores_engine(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    """An engine on a database of its own, where each store gets its own tables."""
    url = sqlalchemy.make_url(postgres_url)
    admin = sqlalchemy.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE am_stores")
    admin.dispose()
    engine = sqlalchemy.create_engine(url.set(database="am_stores"), pool_size=10,
                                      max_overflow=20)
    yield engine
    engine.dispose()


#: ``ACCOUNT_MERGE_TEST_STORES=memory,sqlite`` runs the store-parametrised tests on those only.
_CHOSEN = [name for name in os.environ.get("ACCOUNT_MERGE_TEST_STORES", "").split(",") if name]
unknown = sorted(set(_CHOSEN) - set(STORES))
if unknown:
    raise pytest.UsageError(f"ACCOUNT_MERGE_TEST_STORES names unknown stores: {unknown}")


@pytest.fixture(params=_CHOSEN or sorted(STORES))
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Storage]]:
    """A factory of fresh stores of one kind (the test runs once per kind)."""
    made: list[Storage] = []
    counter = iter(range(10**9))

    def factory() -> Storage:
        folder = tmp_path / f"store-{next(counter)}"
        folder.mkdir()
        store = STORES[request.param](request, folder)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def storage(make_storage: Callable[[], Storage]) -> Storage:
    """A fresh store, once per kind of store."""
    return make_storage()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier() -> CountingVerifier:
    return CountingVerifier()


@pytest.fixture
def service(storage: Storage, verifier: CountingVerifier, clock: FakeClock) -> MergeService:
    return MergeService(storage, verifier, clock)


@pytest.fixture
def instrumented(make_storage: Callable[[], Storage]) -> InstrumentedStorage:
    """A fresh store of one kind, wrapped to record, delay and fail on demand."""
    return InstrumentedStorage(make_storage())


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Inner pytest runs without pytest-django: the Django tests set Django up in this process."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:django")
    return pytester
