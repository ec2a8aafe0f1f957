"""Shared fixtures: every service test runs on every store of this package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from account_merge import InMemoryStorage, MergeService, SQLiteStorage
from account_merge.ports import Storage
from account_merge.testing import CountingVerifier, FakeClock
from security_kit import InstrumentedStorage

pytest_plugins = ["pytester", "pg"]

#: Every store of this package, by name, built in a test's temporary folder.
STORES: dict[str, Callable[[Path], Storage]] = {
    "memory": lambda tmp: InMemoryStorage(),
    "sqlite": lambda tmp: SQLiteStorage(tmp / "store.sqlite3"),
}


@pytest.fixture(params=sorted(STORES))
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Storage]]:
    """A factory of fresh stores of one kind (the test runs once per kind)."""
    made: list[Storage] = []
    counter = iter(range(10**9))

    def factory() -> Storage:
        folder = tmp_path / f"store-{next(counter)}"
        folder.mkdir()
        store = STORES[request.param](folder)
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
