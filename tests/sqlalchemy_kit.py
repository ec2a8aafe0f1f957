"""Shared by the tests of SQLAlchemyStorage: stores on PostgreSQL and SQLite, and helpers.

The PostgreSQL stores use the throwaway server of tests/pg.py; without the
server binaries they skip (or fail under ACCOUNT_MERGE_REQUIRE_POSTGRES=1).
Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy
from sqlalchemy import event

from account_merge import AccountStatus, Child, MergeService, Role
from account_merge.domain.account import Account
from account_merge.ports import ChangeSet, NewAccount, Storage
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
OTHER_SCHOOL = make_establishment(860002, "Lycée Camille Guérin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"
_prefixes = itertools.count()


def fresh_prefix(kind: str = "t") -> str:
    """A table prefix no other test of this run uses (one database, many stores)."""
    return f"{kind}{next(_prefixes)}_"


def child(n: int, school: str = SCHOOL.uai) -> Child:
    return Child(f"ine-{n}", f"Enfant{n}", "Robert", school)


def account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def new(*accounts: Account) -> ChangeSet:
    """A change set inserting *accounts*, each under its login."""
    return ChangeSet(new_accounts=tuple(NewAccount(a, a.login) for a in accounts))


def apply(storage: Storage, changes: ChangeSet) -> None:
    """*changes* in a unit of work of their own."""
    with storage.unit_of_work() as uow:
        uow.apply(changes)
        uow.commit()


def sqlite_engine(path: Path) -> sqlalchemy.Engine:
    """A SQLite engine as we recommend it: WAL journal, synchronous=NORMAL."""
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


def make_service(storage: Storage, verifier: Any = None, **options: Any) -> MergeService:
    return MergeService(storage, verifier or fast_verifier(), FakeClock(T0), **options)


def activated(service: MergeService, name: str, kids: list[Child]) -> Account:
    letter = service.issue_account(SCHOOL, name, kids)
    return service.activate(letter.login, letter.provisional_password, STRONG)


# -- fixtures (import them into a test module) ---------------------------------------------


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(postgres_url, pool_size=10, max_overflow=20)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_storage(pg_engine: sqlalchemy.Engine) -> Iterator[SQLAlchemyStorage]:
    storage = SQLAlchemyStorage(pg_engine, prefix=fresh_prefix())
    storage.create_schema()
    yield storage
    storage.metadata.drop_all(pg_engine)


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> Iterator[SQLAlchemyStorage]:
    engine = sqlite_engine(tmp_path / "store.sqlite3")
    storage = SQLAlchemyStorage(engine)
    storage.create_schema()
    yield storage
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def storage(request: pytest.FixtureRequest) -> SQLAlchemyStorage:
    """The store on each database in turn."""
    name = "pg_storage" if request.param == "postgresql" else "sqlite_storage"
    store: SQLAlchemyStorage = request.getfixturevalue(name)
    return store
