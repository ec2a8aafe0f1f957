"""bulk_load: a large store in seconds, whose accounts behave like issued ones."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from account_merge import (
    AccountStatus,
    Argon2Verifier,
    InMemoryStorage,
    MergeService,
    SQLiteStorage,
)
from account_merge.exceptions import InvalidCredentials, StorageError
from account_merge.ports import Fetch, Fetched, LoginTaken, Storage
from account_merge.storage.bulk import BulkAccount, insert_accounts
from account_merge.testing import bulk_load, fast_verifier, make_establishment

PROVISIONAL = "2BUYJ9C8"
PASSWORD = "Mot-de-passe-Sûr-2026"
COLLEGE = make_establishment(860001)


@pytest.fixture
def verifier() -> Argon2Verifier:
    """Real argon2 with the cheapest parameters (the hashes are made once per test)."""
    return fast_verifier()


def test_loaded_letters_activate_and_merge_like_issued_ones(
    storage: Storage, verifier: Argon2Verifier,
) -> None:
    letters = bulk_load(storage, COLLEGE, 50, password_hash=verifier.hash(PROVISIONAL))
    service = MergeService(storage, verifier)

    principal = service.activate(letters.login(3), PROVISIONAL, PASSWORD)
    receipt = service.merge(principal.id, letters.login(4), PROVISIONAL)

    assert principal.id == letters.account_id(3)
    assert receipt.absorbed_id == letters.account_id(4)
    assert [c.id for c in service.children(principal.id)] == [letters.child_id(3),
                                                              letters.child_id(4)]
    assert service.get_account(letters.account_id(4)).status is AccountStatus.MERGED


def test_loaded_active_accounts_sign_in_with_the_shared_password(
    storage: Storage, verifier: Argon2Verifier,
) -> None:
    active = bulk_load(storage, COLLEGE, 10, password_hash=verifier.hash(PASSWORD),
                       status=AccountStatus.ACTIVE, prefix="act")
    service = MergeService(storage, verifier)

    assert service.authenticate(active.login(9), PASSWORD).id == active.account_id(9)
    with pytest.raises(InvalidCredentials):  # an ACTIVE account has no provisional password
        service.activate(active.login(9), PASSWORD, "Un-Mot-De-Passe-42!")


def test_loads_in_several_chunks_and_reports_progress(
    storage: Storage, verifier: Argon2Verifier,
) -> None:
    reported: list[int] = []

    loaded = bulk_load(storage, COLLEGE, 25, password_hash=verifier.hash(PROVISIONAL),
                       chunk=10, progress=reported.append)

    assert reported == [10, 20, 25]
    with storage.unit_of_work(write=False) as uow:
        found = uow.fetch(Fetch(logins=[loaded.login(24)], accounts=[loaded.account_id(0)],
                                establishments=[COLLEGE.uai]))
    assert found.by_login[loaded.login(24)].account.id == loaded.account_id(24)
    assert found.accounts[loaded.account_id(0)].credential is not None
    assert found.establishments == {COLLEGE.uai: COLLEGE}


def test_loads_no_event_and_no_audit_record(
    storage: Storage, verifier: Argon2Verifier,
) -> None:
    bulk_load(storage, COLLEGE, 5, password_hash=verifier.hash(PROVISIONAL))

    with storage.unit_of_work(write=False) as uow:
        assert uow.unpublished(10) == []
        assert uow.audit_records(None, 10) == []


def test_two_loads_with_different_prefixes_live_side_by_side(
    storage: Storage, verifier: Argon2Verifier,
) -> None:
    first = bulk_load(storage, COLLEGE, 3, password_hash=verifier.hash(PROVISIONAL))
    second = bulk_load(storage, COLLEGE, 3, password_hash=verifier.hash(PROVISIONAL),
                       prefix="more")

    assert first.account_id(0) != second.account_id(0)
    with pytest.raises(LoginTaken):
        bulk_load(storage, COLLEGE, 3, password_hash=verifier.hash(PROVISIONAL))


@pytest.mark.parametrize("make", [InMemoryStorage, lambda: None], ids=["memory", "sqlite"])
def test_a_taken_login_stores_nothing_of_its_chunk(
    make: Callable[[], Storage | None], tmp_path: Path, verifier: Argon2Verifier,
) -> None:
    storage = make() or SQLiteStorage(tmp_path / "store.sqlite3")
    at = datetime(2026, 9, 1, tzinfo=UTC)

    def row(account_id: str, login: str) -> BulkAccount:
        return BulkAccount(account_id=account_id, login=login, login_key=login,
                           status=AccountStatus.PROVISIONAL, display_name="Claire Robert",
                           establishment_uai=COLLEGE.uai, created_at=at,
                           password_hash=verifier.hash(PROVISIONAL), expires_at=at,
                           child_id=f"child-{account_id}", child_first_name="Dylan",
                           child_last_name="Robert")

    insert_accounts(storage, [row("a1", "claire.robert")])
    with pytest.raises(LoginTaken):
        insert_accounts(storage, [row("a2", "claire.robert.2"), row("a3", "claire.robert")])

    with storage.unit_of_work(write=False) as uow:
        assert set(uow.fetch(Fetch(accounts=["a1", "a2", "a3"])).accounts) == {"a1"}
    storage.close()


@pytest.mark.parametrize(("options", "message"), [
    ({"prefix": "Bulk"}, "prefix"),
    ({"prefix": "9lives"}, "prefix"),
    ({"status": AccountStatus.MERGED}, "PROVISIONAL or ACTIVE"),
    ({"count": -1}, "count"),
])
def test_refuses_what_it_cannot_load(
    options: dict[str, Any], message: str, verifier: Argon2Verifier,
) -> None:
    arguments: dict[str, Any] = {"count": 1, **options}
    with pytest.raises(ValueError, match=message):
        bulk_load(InMemoryStorage(), COLLEGE, password_hash=verifier.hash(PROVISIONAL),
                  **arguments)


# -- SQLAlchemyStorage's bulk path, on PostgreSQL and on SQLite ---------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def sqlalchemy_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh SQLAlchemyStorage on each database in turn (PostgreSQL needs the server)."""
    from account_merge.storage.sqlalchemy import SQLAlchemyStorage

    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        storage = SQLAlchemyStorage.from_url(url, prefix=f"bulk{next(_prefixes)}_")
    else:
        storage = SQLAlchemyStorage.from_url(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    storage.create_schema()
    yield storage
    storage.metadata.drop_all(storage._bind_engine())
    storage.close()


_prefixes = itertools.count()


def fetch(storage: Storage, request: Fetch) -> Fetched:
    with storage.unit_of_work(write=False) as uow:
        return uow.fetch(request)


def test_sqlalchemy_loads_in_bulk_accounts_that_merge(
    sqlalchemy_storage: Storage, verifier: Argon2Verifier,
) -> None:
    assert hasattr(sqlalchemy_storage, "bulk_insert")
    letters = bulk_load(sqlalchemy_storage, COLLEGE, 30, password_hash=verifier.hash(PROVISIONAL),
                        chunk=7)
    service = MergeService(sqlalchemy_storage, verifier)

    principal = service.activate(letters.login(0), PROVISIONAL, PASSWORD)
    service.merge(principal.id, letters.login(29), PROVISIONAL)

    assert [c.id for c in service.children(principal.id)] == [letters.child_id(0),
                                                              letters.child_id(29)]
    with sqlalchemy_storage.unit_of_work(write=False) as uow:
        assert [e.event.name for e in uow.unpublished(10)] == ["account_activated",
                                                               "accounts_merged"]


def test_sqlalchemy_bulk_refuses_a_taken_login_and_stores_none_of_its_chunk(
    sqlalchemy_storage: Storage, verifier: Argon2Verifier,
) -> None:
    bulk_load(sqlalchemy_storage, COLLEGE, 3, password_hash=verifier.hash(PROVISIONAL))

    with pytest.raises(LoginTaken):
        bulk_load(sqlalchemy_storage, COLLEGE, 5, password_hash=verifier.hash(PROVISIONAL))

    found = fetch(sqlalchemy_storage, Fetch(logins=["bulk.4", "bulk.2"])).by_login
    assert set(found) == {"bulk.2"}


def test_sqlalchemy_bulk_translates_driver_errors(
    sqlalchemy_storage: Storage, verifier: Argon2Verifier,
) -> None:
    """A table that is missing is a StorageError naming the store, on COPY as elsewhere.

    The accounts went in before the missing table failed: none of them stays.
    """
    from account_merge.storage.sqlalchemy import SQLAlchemyStorage

    assert isinstance(sqlalchemy_storage, SQLAlchemyStorage)
    sqlalchemy_storage.metadata.tables[f"{sqlalchemy_storage.prefix}credentials"].drop(
        sqlalchemy_storage._bind_engine())
    at = datetime(2026, 9, 1, tzinfo=UTC)
    row = BulkAccount(account_id="a1", login="claire.robert", login_key="claire.robert",
                      status=AccountStatus.PROVISIONAL, display_name="Claire Robert",
                      establishment_uai=COLLEGE.uai, created_at=at,
                      password_hash=verifier.hash(PROVISIONAL), expires_at=at,
                      child_id="child-a1", child_first_name="Dylan", child_last_name="Robert")

    with pytest.raises(StorageError):
        sqlalchemy_storage.bulk_insert([row])

    sqlalchemy_storage.create_schema()
    assert fetch(sqlalchemy_storage, Fetch(accounts=["a1"])).accounts == {}
