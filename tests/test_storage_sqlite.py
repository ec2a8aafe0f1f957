"""SQLiteStorage: the file, its schema and migrations, connections and driver errors.

The behaviour every store shares is checked by the storage contract
(``test_conformance_sqlite.py``); these tests pin what is particular to a
store in an SQLite file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from account_merge import Child, MergeService, SQLiteStorage
from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.child import ChildLink
from account_merge.domain.events import AccountActivated
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    ConcurrentUpdate,
    InvalidCredentials,
    InvalidInput,
    StorageError,
)
from account_merge.ports import LoginTaken
from account_merge.storage.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, migrate
from account_merge.testing import FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"


def account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def child(n: int, school: str = SCHOOL.uai) -> Child:
    return Child(f"ine-{n}", f"Enfant{n}", "Robert", school)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ent.sqlite3"


@pytest.fixture
def storage(path: Path) -> Iterator[SQLiteStorage]:
    store = SQLiteStorage(path)
    yield store
    store.close()


@pytest.fixture
def service(storage: SQLiteStorage) -> MergeService:
    return MergeService(storage, fast_verifier(), FakeClock(T0))


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection to the file, for looking behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


def add_accounts(storage: SQLiteStorage, *numbers: int) -> None:
    with storage.unit_of_work() as uow:
        for n in numbers:
            uow.add_account(account(n), f"parent.{n}")
        uow.commit()


# -- the file ---------------------------------------------------------------------------
def test_nothing_touches_the_file_before_the_first_unit_of_work(path: Path) -> None:
    store = SQLiteStorage(path)
    assert not path.exists()
    store.close()
    assert not path.exists()
    with store.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") is None
    assert path.exists()
    store.close()


def test_a_path_like_is_accepted_and_memory_databases_are_refused(path: Path) -> None:
    assert SQLiteStorage(path).path == str(path)
    assert repr(SQLiteStorage(str(path))) == f"SQLiteStorage({str(path)!r})"
    for bad in (":memory:", "", "file::memory:?cache=shared"):
        with pytest.raises(InvalidInput):
            SQLiteStorage(bad)
    for timeout in (-1, True, "10"):
        with pytest.raises(InvalidInput):
            SQLiteStorage(path, busy_timeout=timeout)  # type: ignore[arg-type]


def test_the_file_is_in_wal_mode_marked_as_ours_at_the_current_schema_version(
        storage: SQLiteStorage, path: Path) -> None:
    add_accounts(storage, 1)
    connection = raw(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    connection.close()


def test_foreign_keys_are_enforced(storage: SQLiteStorage) -> None:
    link = ChildLink(account_id="nobody", child=child(1), origin_account_id="nobody",
                     origin_establishment_uai=SCHOOL.uai, via_merge=False, linked_at=T0)
    with pytest.raises(StorageError, match="FOREIGN KEY"), storage.unit_of_work() as uow:
        uow.add_links([link])


def test_datetimes_are_stored_as_iso_text_and_come_back_equal_whatever_their_offset(
        storage: SQLiteStorage, path: Path) -> None:
    paris = datetime(2026, 9, 1, 10, 30, tzinfo=ZoneInfo("Europe/Paris"))
    new_york = datetime(2026, 9, 1, 4, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-4)))
    stored = account(1, created_at=paris)
    link = ChildLink(account_id="acc1", child=child(1), origin_account_id="acc1",
                     origin_establishment_uai=SCHOOL.uai, via_merge=False, linked_at=new_york)
    state = ThrottleState("login:parent.1", 2, paris, (new_york, paris))
    with storage.unit_of_work() as uow:
        uow.add_account(stored, "parent.1")
        uow.add_links([link])
        uow.put_throttle(state)
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") == stored
        assert uow.links("acc1") == [link]
        assert uow.get_throttle("login:parent.1") == state
    connection = raw(path)
    assert connection.execute("SELECT created_at FROM accounts").fetchone()[0] == (
        "2026-09-01T10:30:00+02:00")
    assert connection.execute("SELECT linked_at FROM links").fetchone()[0] == (
        "2026-09-01T04:00:00.123456-04:00")
    connection.close()


def test_no_password_reaches_the_file(service: MergeService, storage: SQLiteStorage,
                                      path: Path) -> None:
    """Rule I6: the file and its write-ahead log hold hashes, never a password."""
    first = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    second = service.issue_account(SCHOOL, "Claire Robert", [child(2)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    service.merge(principal.id, second.login, second.provisional_password)
    storage.close()
    contents = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    for password in (first.provisional_password.reveal(), second.provisional_password.reveal(),
                     STRONG):
        assert password.encode() not in contents


# -- units of work ------------------------------------------------------------------------
def test_a_second_store_on_the_same_file_sees_committed_work_only(path: Path) -> None:
    writer, reader = SQLiteStorage(path), SQLiteStorage(path)
    try:
        with writer.unit_of_work() as uow:
            uow.add_account(account(1), "parent.1")
            with reader.unit_of_work(write=False) as peek:
                assert peek.get_account("acc1") is None
            uow.commit()
        with reader.unit_of_work(write=False) as peek:
            assert peek.get_account("acc1") == account(1)
    finally:
        writer.close()
        reader.close()


def test_an_exception_rolls_back_everything_as_another_store_sees_it(
        storage: SQLiteStorage, path: Path) -> None:
    add_accounts(storage, 1)
    with pytest.raises(KeyError), storage.unit_of_work() as uow:
        uow.put_establishment(SCHOOL)
        uow.update_account(account(1, status=AccountStatus.ACTIVE))
        uow.put_credential(Credential("acc1", "hash", CredentialKind.PASSWORD))
        uow.append_event(AccountActivated(T0, "acc1"))
        uow.update_account(account(9))  # no such account
    other = SQLiteStorage(path)
    with other.unit_of_work(write=False) as uow:
        assert uow.get_establishment(SCHOOL.uai) is None
        assert uow.get_account("acc1") == account(1)
        assert uow.get_credential("acc1") is None
        assert uow.unpublished(10) == []
    other.close()


def test_work_after_a_commit_or_a_rollback_belongs_to_a_new_transaction(
        storage: SQLiteStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.rollback()
        uow.add_account(account(2), "parent.2")
        uow.commit()
        uow.add_account(account(3), "parent.3")
    with storage.unit_of_work(write=False) as uow:
        assert [uow.get_account(f"acc{n}") for n in (1, 2, 3)] == [None, account(2), None]


def test_a_duplicate_login_or_id_raises_login_taken_and_keeps_the_transaction(
        storage: SQLiteStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        with pytest.raises(LoginTaken):
            uow.add_account(account(2), "parent.1")
        with pytest.raises(LoginTaken):
            uow.add_account(account(1, login="other"), "other")
        uow.add_account(account(3), "parent.3")
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") == account(1)
        assert uow.get_account("acc2") is None
        assert uow.get_account_id_by_login("other") is None
        assert uow.get_account("acc3") == account(3)


def test_absorbed_accounts_are_listed_in_the_order_they_were_absorbed(
        storage: SQLiteStorage) -> None:
    add_accounts(storage, 1, 2, 3, 4, 5)
    merged = {n: account(n, status=AccountStatus.MERGED, merged_into="acc1") for n in (2, 3, 4)}
    with storage.unit_of_work() as uow:
        for n in (4, 2, 3):
            uow.update_account(merged[n])
        uow.update_account(account(3, status=AccountStatus.MERGED, merged_into="acc5"))
        uow.update_account(merged[3])
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        assert uow.accounts_merged_into("acc1") == [merged[4], merged[2], merged[3]]
        assert uow.accounts_merged_into("acc5") == []


def test_threads_opening_a_new_file_together_all_get_a_usable_store(tmp_path: Path) -> None:
    """The first openers race to create the schema and switch to WAL; none may fail."""
    for round_ in range(10):
        store = SQLiteStorage(tmp_path / f"new-{round_}.sqlite3")
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_and_write(n: int, store: SQLiteStorage = store,
                           barrier: threading.Barrier = barrier,
                           errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                with store.unit_of_work() as uow:
                    uow.add_account(account(n), f"parent.{n}")
                    uow.commit()
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        store.close()


def test_a_unit_of_work_cannot_be_nested_in_the_same_thread(storage: SQLiteStorage) -> None:
    with (storage.unit_of_work(write=False), pytest.raises(RuntimeError, match="already open"),
          storage.unit_of_work(write=False)):
        pass
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") is None


def test_methods_outside_a_with_block_are_refused(storage: SQLiteStorage) -> None:
    uow = storage.unit_of_work()
    with pytest.raises(RuntimeError, match="with"):
        uow.get_account("acc1")
    with pytest.raises(RuntimeError, match="with"):
        uow.commit()


def test_close_waits_for_a_unit_of_work_in_progress_and_the_store_stays_usable(
        storage: SQLiteStorage) -> None:
    """close() closes idle connections at once, a busy one when its unit of work ends."""
    inside, closed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with storage.unit_of_work() as uow:
                uow.add_account(account(1), "parent.1")
                inside.set()
                closed.wait(10)
                uow.add_account(account(2), "parent.2")
                uow.commit()
        except BaseException as error:
            errors.append(error)

    add_accounts(storage, 3)  # this thread's connection, idle
    thread = threading.Thread(target=write)
    thread.start()
    inside.wait(10)
    storage.close()
    closed.set()
    thread.join(10)
    assert errors == []
    with storage.unit_of_work(write=False) as uow:
        assert [uow.get_account(f"acc{n}") for n in (1, 2, 3)] == [
            account(1), account(2), account(3)]


def test_every_statement_of_the_use_cases_is_served_by_an_index(path: Path) -> None:
    """Costs must not grow with the store: no statement scans a whole table."""
    statements: list[str] = []

    class TracingStorage(SQLiteStorage):
        def _connect(self) -> sqlite3.Connection:
            connection = super()._connect()
            connection.set_trace_callback(statements.append)
            return connection

    store = TracingStorage(path)
    service = MergeService(store, fast_verifier(), FakeClock(T0))
    first = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    second = service.issue_account(SCHOOL, "Claire Robert", [child(2)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    service.authenticate(first.login, STRONG)
    with pytest.raises(InvalidCredentials):
        service.merge(principal.id, second.login, "WRONG123")
    service.merge(principal.id, second.login, second.provisional_password, "key-1")
    service.split(SCHOOL, principal.id)
    service.change_email(principal.id, "claire@example.org")
    service.resolve(second.account_id)
    service.children(principal.id)
    service.mark_published([e.position for e in service.unpublished_events(2)])
    service.audit_trail(principal.id)
    service.audit_trail()
    store.close()

    connection = raw(path)
    plans: dict[str, list[str]] = {}
    for sql in statements:
        if sql.lstrip().split(" ", 1)[0] in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
            plans[sql] = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql)]
    connection.close()
    assert len(plans) > 20
    for sql, plan in plans.items():
        for step in plan:
            if not step.startswith("SCAN "):
                continue
            bounded = ("USING INDEX outbox_unpublished" in step  # only unpublished rows
                       or step.startswith("SCAN (subquery")      # rows already limited
                       or (step == "SCAN audit" and "ORDER BY id DESC LIMIT" in sql))
            assert bounded, (sql, plan)


# -- migrations -----------------------------------------------------------------------------
def test_a_version_1_file_is_migrated_on_open_and_keeps_its_data(path: Path) -> None:
    connection = raw(path)
    assert migrate(connection, path=str(path), to=1) == 1
    columns = "id, login, login_key, role, status, display_name, establishment_uai, created_at"
    connection.executemany(
        f"INSERT INTO accounts ({columns}, merged_into) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(f"acc{n}", f"parent.{n}", f"parent.{n}", "responsable", status, f"Parent {n}",
          SCHOOL.uai, T0.isoformat(), into)
         for n, status, into in ((1, "active", None), (2, "merged", "acc1"),
                                 (3, "merged", "acc1"), (4, "active", None))])
    connection.close()

    store = SQLiteStorage(path)
    with store.unit_of_work() as uow:
        assert uow.get_account("acc1") == account(1, status=AccountStatus.ACTIVE)
        absorbed = [account(n, status=AccountStatus.MERGED, merged_into="acc1") for n in (2, 3)]
        assert uow.accounts_merged_into("acc1") == absorbed
        later = account(4, status=AccountStatus.MERGED, merged_into="acc1")
        uow.update_account(later)
        uow.commit()
    with store.unit_of_work(write=False) as uow:
        assert uow.accounts_merged_into("acc1") == [*absorbed, later]
    store.close()
    connection = raw(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


def test_migrations_run_once_and_leave_a_current_file_alone(path: Path) -> None:
    connection = raw(path)
    assert migrate(connection) == SCHEMA_VERSION == len(MIGRATIONS)
    schema = connection.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert migrate(connection) == SCHEMA_VERSION
    assert connection.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    connection.close()


def test_a_file_from_a_newer_version_is_refused_and_left_untouched(path: Path) -> None:
    connection = raw(path)
    migrate(connection)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    before = path.read_bytes()
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match="newer") as raised, store.unit_of_work():
        pass
    assert raised.value.store == str(path)
    assert str(path) in str(raised.value)
    store.close()
    assert path.read_bytes() == before


def test_an_sqlite_file_of_another_application_is_refused(path: Path) -> None:
    connection = raw(path)
    connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    connection.close()
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match="another application"), store.unit_of_work():
        pass
    store.close()


# -- driver errors --------------------------------------------------------------------------
def test_a_file_of_garbage_bytes_is_a_storage_error_naming_the_file(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 32)
    store = SQLiteStorage(path)
    with pytest.raises(StorageError) as raised, store.unit_of_work(write=False):
        pass
    assert raised.value.code == "storage_error"
    assert raised.value.store == str(path)
    assert str(path) in str(raised.value)
    assert "not an SQLite database" in str(raised.value)
    assert not isinstance(raised.value, sqlite3.Error)
    store.close()


def test_a_truncated_database_is_a_storage_error_naming_the_file(
        service: MergeService, storage: SQLiteStorage, path: Path) -> None:
    letters = [service.issue_account(SCHOOL, f"Parent Numéro {n}", [child(n)])
               for n in range(60)]
    storage.close()
    assert not Path(f"{path}-wal").exists()  # everything is in the main file
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(size // 3)
    store = SQLiteStorage(path)
    reader = MergeService(store, fast_verifier(), FakeClock(T0))
    with pytest.raises(StorageError) as raised:
        for letter in letters:
            reader.children(letter.account_id)
        reader.audit_trail(limit=1000)
    assert raised.value.store == str(path)
    assert "corrupt" in str(raised.value)
    store.close()


def test_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "no-such-directory" / "ent.sqlite3")
    with pytest.raises(StorageError, match="cannot be opened"), store.unit_of_work():
        pass


def test_a_writer_held_past_the_busy_timeout_is_a_concurrent_update(path: Path) -> None:
    store = SQLiteStorage(path, busy_timeout=0.05)
    add_accounts(store, 1)
    blocker = raw(path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ConcurrentUpdate) as raised, store.unit_of_work():
            pass
        assert raised.value.code == "concurrent_update"
        with store.unit_of_work(write=False) as uow:  # readers do not wait for writers
            assert uow.get_account("acc1") == account(1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    add_accounts(store, 2)
    store.close()
