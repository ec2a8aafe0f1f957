"""SQLAlchemyStorage on a real PostgreSQL server and on a SQLite file.

The PostgreSQL tests use the throwaway server of tests/pg.py; without the
server binaries they skip (or fail under ACCOUNT_MERGE_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy
from sqlalchemy import Column, Integer, MetaData, String, Table, event, inspect, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from account_merge import AccountStatus, Child, MergeService, Role
from account_merge.domain.account import Account
from account_merge.domain.audit import AuditAction
from account_merge.domain.events import AccountActivated
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.logins import login_key
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    InvalidCredentials,
    InvalidInput,
    StorageError,
    TooManyAttempts,
)
from account_merge.ports import LoginTaken, Storage
from account_merge.storage.sqlalchemy import (
    DEFAULT_PREFIX,
    SQLAlchemyStorage,
    make_metadata,
    metadata,
)
from account_merge.testing import CountingVerifier, FakeClock, fast_verifier, make_establishment
from account_merge.testing.conformance import StorageContract
from merge_workers import merge_worker

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
OTHER_SCHOOL = make_establishment(860002, "Lycée Camille Guérin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"
#: Limits high enough that the race tests measure locking, not throttling.
GENEROUS = ThrottlePolicy(backoff_after=1000, lock_after=1000,
                          principal_per_hour=1000, principal_per_day=1000)
_prefixes = itertools.count()


def fresh_prefix() -> str:
    """A table prefix no other test of this run uses (one database, many stores)."""
    return f"t{next(_prefixes)}_"


def child(n: int, school: str = SCHOOL.uai) -> Child:
    return Child(f"ine-{n}", f"Enfant{n}", "Robert", school)


def account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def sqlite_engine(path: Path) -> sqlalchemy.Engine:
    """A SQLite engine as we recommend it: WAL journal, synchronous=NORMAL."""
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


# -- fixtures --------------------------------------------------------------------


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


def make_service(storage: Storage, verifier: Any = None, **options: Any) -> MergeService:
    return MergeService(storage, verifier or fast_verifier(), FakeClock(T0), **options)


def activated(service: MergeService, name: str, kids: list[Child]) -> Account:
    letter = service.issue_account(SCHOOL, name, kids)
    return service.activate(letter.login, letter.provisional_password, STRONG)


# -- the conformance suite ----------------------------------------------------------


class TestConformanceOnPostgres(StorageContract):
    """The storage contract, on PostgreSQL."""

    state_machine_examples = 10

    @pytest.fixture(autouse=True)
    def _server(self, pg_engine: sqlalchemy.Engine, postgres_url: str) -> None:
        self.engine = pg_engine
        self.url = postgres_url

    def make_storage(self) -> Storage:
        storage = SQLAlchemyStorage(self.engine, prefix=fresh_prefix())
        storage.create_schema()
        return storage

    def close_storage(self, storage: Storage) -> None:
        assert isinstance(storage, SQLAlchemyStorage)
        storage.metadata.drop_all(self.engine)
        storage.close()

    def make_broken_storage(self) -> Storage:
        no_server = self.url.split("?host=")[0] + "?host=/nonexistent-socket-dir"
        return SQLAlchemyStorage.from_url(no_server)


class TestConformanceOnSQLite(StorageContract):
    """The storage contract, on a SQLite file."""

    state_machine_examples = 10

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path
        self.engines: dict[int, sqlalchemy.Engine] = {}

    def make_storage(self) -> Storage:
        engine = sqlite_engine(self.folder / f"store{next(_prefixes)}.sqlite3")
        storage = SQLAlchemyStorage(engine)
        storage.create_schema()
        self.engines[id(storage)] = engine
        return storage

    def close_storage(self, storage: Storage) -> None:
        self.engines.pop(id(storage)).dispose()

    def make_broken_storage(self) -> Storage:
        garbage = self.folder / "not-a-database.sqlite3"
        garbage.write_bytes(b"this is not a SQLite database, " * 100)
        return SQLAlchemyStorage.from_url(f"sqlite:///{garbage}")


# -- the service on each database -------------------------------------------------------


def test_the_whole_story_runs_on_each_database(storage: SQLAlchemyStorage) -> None:
    """Issue, activate, merge, split, read the outbox and the audit trail."""
    service = make_service(storage)
    dylan, florian = child(1), child(2, OTHER_SCHOOL.uai)
    principal = activated(service, "Claire Robert", [dylan])
    letter = service.issue_account(OTHER_SCHOOL, "Claire Robert", [florian])
    receipt = service.merge(principal.id, letter.login, letter.provisional_password)
    assert receipt.moved == (florian,)
    assert service.children(principal.id) == (dylan, florian)
    assert service.resolve(letter.account_id) == service.get_account(principal.id)
    split = service.split(OTHER_SCHOOL, principal.id)
    assert split.moved == (florian,)
    assert service.children(principal.id) == (dylan,)
    assert service.children(split.new_account_id) == (florian,)
    names = [e.event.name for e in service.unpublished_events()]
    assert names == ["account_issued", "account_activated", "account_issued",
                     "accounts_merged", "merge_split"]
    assert [r.action for r in service.audit_trail()][-2:] == [AuditAction.MERGE,
                                                              AuditAction.SPLIT]


def test_aware_datetimes_come_back_equal_and_in_utc(storage: SQLAlchemyStorage) -> None:
    paris = timezone(timedelta(hours=2))
    created = datetime(2026, 9, 1, 10, 0, 0, 123456, tzinfo=paris)
    with storage.unit_of_work() as uow:
        uow.add_account(account(1, created_at=created), "parent.1")
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        stored = uow.get_account("acc1")
    assert stored is not None
    assert stored.created_at == created
    assert stored.created_at.utcoffset() == timedelta(0)


def test_a_duplicate_account_id_is_login_taken_too(storage: SQLAlchemyStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        with pytest.raises(LoginTaken):
            uow.add_account(account(1, login="other"), "other")
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account_id_by_login("other") is None


def test_a_unit_of_work_goes_on_after_commit_and_rollback(storage: SQLAlchemyStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.commit()
        uow.add_account(account(2), "parent.2")
        uow.rollback()
        uow.add_account(account(3), "parent.3")
        uow.commit()
        uow.add_account(account(4), "parent.4")
    with storage.unit_of_work(write=False) as uow:
        assert [uow.get_account(f"acc{n}") is not None for n in (1, 2, 3, 4)] == [
            True, False, True, False]


def test_a_unit_of_work_outside_its_with_block_refuses_work(
        storage: SQLAlchemyStorage) -> None:
    uow = storage.unit_of_work()
    with pytest.raises(RuntimeError, match="with"):
        uow.get_account("acc1")
    with uow:
        pass
    with pytest.raises(RuntimeError, match="with"):
        uow.commit()


def test_create_schema_is_idempotent_and_keeps_the_data(storage: SQLAlchemyStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.commit()
    storage.create_schema()
    storage.create_schema()
    with storage.unit_of_work(write=False) as uow:
        assert uow.get_account("acc1") == account(1)


def test_missing_tables_raise_a_storage_error_that_says_how_to_create_them(
        tmp_path: Path, pg_engine: sqlalchemy.Engine) -> None:
    for store in (SQLAlchemyStorage(pg_engine, prefix=fresh_prefix()),
                  SQLAlchemyStorage.from_url(f"sqlite:///{tmp_path / 'empty.sqlite3'}")):
        with pytest.raises(StorageError, match=r"create_schema\(\)"), store.unit_of_work() as uow:
            uow.get_account("acc1")
        store.close()


# -- nothing connects early; errors name the store without its password -----------------


def test_nothing_connects_before_the_first_unit_of_work() -> None:
    url = "postgresql+psycopg://app:s3cret@/nowhere?host=/nonexistent-socket-dir"
    storage = SQLAlchemyStorage.from_url(url)
    unit = storage.unit_of_work()
    with pytest.raises(StorageError) as raised, unit:
        pass
    assert raised.value.store == (
        "postgresql+psycopg://app:***@/nowhere?host=%2Fnonexistent-socket-dir")
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in repr(storage)
    storage.close()


def test_a_server_that_is_not_running_raises_storage_error_naming_the_url(
        postgres_url: str) -> None:
    url = sqlalchemy.make_url(postgres_url).set(password="s3cret",
                                                query={"host": "/tmp/no-server-here"})
    storage = SQLAlchemyStorage.from_url(url)
    service = make_service(storage)
    with pytest.raises(StorageError) as raised:
        service.get_account("acc1")
    assert raised.value.code == "storage_error"
    assert raised.value.store.startswith("postgresql+psycopg://postgres:***@/account_merge_test")
    assert "s3cret" not in str(raised.value)
    storage.close()


def test_a_lost_connection_raises_storage_error(postgres_url: str) -> None:
    storage = SQLAlchemyStorage.from_url(postgres_url, prefix=fresh_prefix(), pool_size=1)
    storage.create_schema()
    with storage.unit_of_work() as uow:
        pid = uow._c().execute(select(sqlalchemy.func.pg_backend_pid())).scalar_one()
        uow.commit()
    admin = sqlalchemy.create_engine(postgres_url)
    with admin.connect() as conn:
        conn.execute(select(sqlalchemy.func.pg_terminate_backend(pid)))
    admin.dispose()
    with pytest.raises(StorageError, match="cannot use the database"), \
            storage.unit_of_work() as uow:
        uow.get_account("acc1")
    with storage.unit_of_work() as uow:  # the pool replaced the dead connection
        assert uow.get_account("acc1") is None
    storage.metadata.drop_all(storage._engine)  # type: ignore[arg-type]
    storage.close()


# -- PostgreSQL locks and the errors of lost races -------------------------------------


def _hold_row_lock(engine: sqlalchemy.Engine, table: Table, account_id: str) -> Any:
    conn = engine.connect()
    conn.execute(select(table).where(table.c.id == account_id).with_for_update())
    return conn


def test_lock_accounts_holds_row_locks_until_the_unit_of_work_ends(
        pg_storage: SQLAlchemyStorage, pg_engine: sqlalchemy.Engine) -> None:
    accounts = pg_storage.metadata.tables[f"{pg_storage.prefix}accounts"]
    with pg_storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.add_account(account(2), "parent.2")
        uow.commit()
    with pg_storage.unit_of_work() as uow:
        assert set(uow.lock_accounts(["acc2", "acc1"])) == {"acc1", "acc2"}
        with pg_engine.connect() as other:
            with pytest.raises(sqlalchemy.exc.OperationalError, match="could not obtain lock"):
                other.execute(select(accounts).where(accounts.c.id == "acc1")
                              .with_for_update(nowait=True))
            other.rollback()
            uow.commit()
            assert other.execute(select(accounts.c.id).where(accounts.c.id == "acc1")
                                 .with_for_update(nowait=True)).scalar() == "acc1"


def test_a_lock_timeout_becomes_concurrent_update(pg_engine: sqlalchemy.Engine) -> None:
    storage = SQLAlchemyStorage(pg_engine, prefix=fresh_prefix(), lock_timeout=0.05)
    storage.create_schema()
    with storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.commit()
    holder = _hold_row_lock(pg_engine, storage.metadata.tables[f"{storage.prefix}accounts"],
                            "acc1")
    try:
        with pytest.raises(ConcurrentUpdate, match="lock timeout"), \
                storage.unit_of_work() as uow:
            uow.lock_accounts(["acc1"])
    finally:
        holder.close()
        storage.metadata.drop_all(pg_engine)


def test_a_deadlock_becomes_concurrent_update(pg_storage: SQLAlchemyStorage) -> None:
    """Two units of work lock two rows in opposite orders (which the service never does)."""
    with pg_storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.add_account(account(2), "parent.2")
        uow.commit()
    both_hold_one = threading.Barrier(2)
    outcomes: list[str] = []

    def lock(first: str, second: str) -> None:
        try:
            with pg_storage.unit_of_work() as uow:
                uow.lock_accounts([first])
                both_hold_one.wait(10)
                uow.lock_accounts([second])
                uow.commit()
            outcomes.append("committed")
        except ConcurrentUpdate as error:
            outcomes.append(f"concurrent_update: {error}")

    threads = [threading.Thread(target=lock, args=pair)
               for pair in (("acc1", "acc2"), ("acc2", "acc1"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(o.split(":")[0] for o in outcomes) == ["committed", "concurrent_update"]
    assert any("deadlock" in o for o in outcomes)


def test_a_serialization_failure_becomes_concurrent_update(
        pg_storage: SQLAlchemyStorage, pg_engine: sqlalchemy.Engine) -> None:
    """At REPEATABLE READ, locking a row changed since the snapshot fails with 40001."""
    repeatable = SQLAlchemyStorage(pg_engine.execution_options(isolation_level="REPEATABLE READ"),
                                   prefix=pg_storage.prefix)
    with pg_storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        uow.commit()
    with repeatable.unit_of_work() as stale:
        assert stale.get_account("acc1") == account(1)  # takes the snapshot
        with pg_storage.unit_of_work() as uow:
            uow.update_account(account(1, status=AccountStatus.ACTIVE))
            uow.commit()
        with pytest.raises(ConcurrentUpdate, match="could not serialize"):
            stale.lock_accounts(["acc1"])
        with pytest.raises(ConcurrentUpdate, match="roll back"):
            stale.get_account("acc1")  # the failed transaction is not reused by mistake
        stale.rollback()
        assert stale.get_account("acc1") == account(1, status=AccountStatus.ACTIVE)


def test_a_counter_read_for_writing_stays_locked_until_the_unit_of_work_ends(
        pg_engine: sqlalchemy.Engine) -> None:
    storage = SQLAlchemyStorage(pg_engine, prefix=fresh_prefix(), lock_timeout=0.05)
    storage.create_schema()
    try:
        with storage.unit_of_work() as first:
            assert first.get_throttle("login:claire") is None
            with pytest.raises(ConcurrentUpdate), storage.unit_of_work() as second:
                second.get_throttle("login:claire")
            with storage.unit_of_work(write=False) as reader:  # readers do not wait
                assert reader.get_throttle("login:claire") is None
            with storage.unit_of_work() as other_key:
                assert other_key.get_throttle("login:marc") is None
    finally:
        storage.metadata.drop_all(pg_engine)


# -- SQLite transactions -----------------------------------------------------------------


def test_on_sqlite_a_writing_unit_of_work_holds_the_write_lock_from_its_start(
        tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = SQLAlchemyStorage(sqlite_engine(path))
    storage.create_schema()
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with storage.unit_of_work(write=False) as reader:
            reader.get_account("acc1")
            other.execute("BEGIN IMMEDIATE")  # a reader does not block writers
            other.execute("ROLLBACK")
        with storage.unit_of_work() as writer:
            writer.get_account("acc1")  # only a read, but BEGIN IMMEDIATE was emitted
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


def test_on_sqlite_a_busy_database_becomes_concurrent_update(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = SQLAlchemyStorage(sqlalchemy.create_engine(
        f"sqlite:///{path}", connect_args={"timeout": 0}))
    storage.create_schema()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ConcurrentUpdate, match="locked"), storage.unit_of_work() as uow:
            uow.get_account("acc1")
    finally:
        other.execute("ROLLBACK")
        other.close()


# -- inside a host's session ---------------------------------------------------------------

host_metadata = MetaData()
notes = Table("host_notes", host_metadata, Column("id", Integer, primary_key=True),
              Column("text", String(100)))


@pytest.fixture(params=["postgresql", "sqlite"])
def host_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlalchemy.Engine]:
    """The host application's engine, with a table of its own."""
    if request.param == "postgresql":
        engine = sqlalchemy.create_engine(request.getfixturevalue("postgres_url"))
    else:
        engine = sqlite_engine(tmp_path / "host.sqlite3")
    host_metadata.create_all(engine)
    yield engine
    host_metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def host_prefix(host_engine: sqlalchemy.Engine) -> Iterator[str]:
    prefix = fresh_prefix()
    SQLAlchemyStorage(host_engine, prefix=prefix).create_schema()
    yield prefix
    make_metadata(prefix).drop_all(host_engine)


def _story_in_session(session: Session, prefix: str, *, host_first: bool = True) -> str:
    """The host writes its row and the service issues an account, in one session."""
    service = make_service(SQLAlchemyStorage(session=session, prefix=prefix))
    if host_first:
        session.execute(notes.insert().values(id=1, text="written by the host"))
    account_id = service.issue_account(SCHOOL, "Claire Robert", [child(1)]).account_id
    if not host_first:
        session.execute(notes.insert().values(id=1, text="written by the host"))
    return account_id


def _committed(engine: sqlalchemy.Engine, prefix: str, account_id: str) -> tuple[bool, bool]:
    """(the host's row, the library's account) as another connection sees them."""
    service = make_service(SQLAlchemyStorage(engine, prefix=prefix))
    with engine.connect() as conn:
        note = conn.execute(select(notes.c.id)).first() is not None
    try:
        service.get_account(account_id)
    except AccountMergeError:
        return note, False
    return note, True


def test_in_a_session_nothing_is_committed_behind_the_hosts_back(
        host_engine: sqlalchemy.Engine, host_prefix: str) -> None:
    with Session(host_engine) as session:
        account_id = _story_in_session(session, host_prefix, host_first=False)
        if host_engine.dialect.name == "postgresql":  # SQLite would wait for our write lock
            assert _committed(host_engine, host_prefix, account_id) == (False, False)
        session.rollback()
    assert _committed(host_engine, host_prefix, account_id) == (False, False)


@pytest.mark.parametrize("host_first", [True, False], ids=["host-first", "library-first"])
def test_in_a_session_the_hosts_commit_makes_both_durable(
        host_engine: sqlalchemy.Engine, host_prefix: str, host_first: bool) -> None:
    with Session(host_engine) as session:
        account_id = _story_in_session(session, host_prefix, host_first=host_first)
        session.commit()
    assert _committed(host_engine, host_prefix, account_id) == (True, True)


def test_in_a_session_a_unit_of_work_rolled_back_keeps_the_hosts_work(
        host_engine: sqlalchemy.Engine, host_prefix: str) -> None:
    factory = scoped_session(sessionmaker(host_engine))  # like Flask-SQLAlchemy's db.session
    storage = SQLAlchemyStorage(session=factory, prefix=host_prefix)
    factory.execute(notes.insert().values(id=1, text="written by the host"))
    with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
        uow.add_account(account(1), "parent.1")
        raise RuntimeError("the library's work fails")
    with storage.unit_of_work() as uow:
        uow.add_account(account(2), "parent.2")
        uow.commit()
    factory.commit()
    factory.remove()
    with host_engine.connect() as conn:
        assert conn.execute(select(notes.c.text)).scalar() == "written by the host"
    with SQLAlchemyStorage(host_engine, prefix=host_prefix).unit_of_work() as uow:
        assert uow.get_account("acc1") is None
        assert uow.get_account("acc2") == account(2)


# -- inside a host's session on PostgreSQL: failures outlive the host's rollback ----------

WRONG = "Wrong-Password-42"


def _merge_story(service: MergeService) -> tuple[Account, NotificationLetter]:
    """An activated principal and a letter of another school, committed."""
    principal = activated(service, "Claire Robert", [child(1)])
    letter = service.issue_account(OTHER_SCHOOL, "Claire Robert", [child(2, OTHER_SCHOOL.uai)])
    return principal, letter


def _merge_outcomes(service: MergeService, principal_id: str) -> list[str]:
    return [r.outcome for r in service.audit_trail(principal_id)
            if r.action is AuditAction.MERGE]


def test_in_a_session_wrong_merge_attempts_count_even_when_the_host_rolls_back(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage) -> None:
    """The counters and the records of failures are committed on a side connection."""
    committed = make_service(pg_storage)
    principal, letter = _merge_story(committed)
    with Session(pg_engine) as session:
        service = make_service(SQLAlchemyStorage(session=session, prefix=pg_storage.prefix))
        for _ in range(service.throttle.backoff_after):
            with pytest.raises(InvalidCredentials):
                service.merge(principal.id, letter.login, WRONG)
            session.rollback()
        with pytest.raises(TooManyAttempts):
            service.merge(principal.id, letter.login, letter.provisional_password)
        session.rollback()
    assert _merge_outcomes(committed, principal.id) == (
        ["invalid_credentials"] * committed.throttle.backoff_after + ["too_many_attempts"])


@pytest.mark.parametrize("host_commits", [True, False], ids=["commit", "rollback"])
def test_in_a_session_a_merge_lives_and_dies_with_the_hosts_transaction(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage, host_commits: bool) -> None:
    """The change, its event and its audit record of success: all or nothing."""
    committed = make_service(pg_storage)
    principal, letter = _merge_story(committed)
    with Session(pg_engine) as session:
        service = make_service(SQLAlchemyStorage(session=session, prefix=pg_storage.prefix))
        service.merge(principal.id, letter.login, letter.provisional_password)
        if host_commits:
            session.commit()
        else:
            session.rollback()
    status = committed.get_account(letter.account_id).status
    events = [e.event.name for e in committed.unpublished_events()]
    if host_commits:
        assert status is AccountStatus.MERGED
        assert "accounts_merged" in events
        assert _merge_outcomes(committed, principal.id) == ["success"]
    else:
        assert status is AccountStatus.PROVISIONAL
        assert "accounts_merged" not in events
        assert _merge_outcomes(committed, principal.id) == []
        assert committed.children(principal.id) == (child(1),)


def test_in_a_session_the_hosts_connection_holds_no_lock_on_a_counter(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage) -> None:
    """While the host's transaction is still open after a failure, others use the counter."""
    committed = make_service(pg_storage)
    principal, letter = _merge_story(committed)
    other = SQLAlchemyStorage(pg_engine, prefix=pg_storage.prefix, lock_timeout=0.5)
    with Session(pg_engine) as session:
        service = make_service(SQLAlchemyStorage(session=session, prefix=pg_storage.prefix))
        with pytest.raises(InvalidCredentials):
            service.merge(principal.id, letter.login, WRONG)
        assert session.in_transaction()
        with other.unit_of_work() as uow:
            state = uow.get_throttle(f"login:{login_key(letter.login)}")
            assert state is not None and state.consecutive == 1
            uow.put_throttle(state)
            uow.commit()
        session.rollback()


def test_in_a_session_a_deadlock_through_the_hosts_thread_ends_in_concurrent_update(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage) -> None:
    """A lock cycle the server cannot see is broken by the side connection's lock timeout.

    The host's transaction holds the outbox lock (an event written, not yet
    committed); another writer holds a counter and waits for the outbox; the
    host's next unit of work waits for that counter on its side connection.
    """
    holding_the_counter = threading.Event()
    finished: list[str] = []

    def other_writer() -> None:
        with pg_storage.unit_of_work() as uow:
            uow.get_throttle("login:claire.robert")
            holding_the_counter.set()
            uow.append_event(AccountActivated(occurred_at=T0, account_id="acc2"))
            uow.commit()
        finished.append("committed")

    with Session(pg_engine) as session:
        storage = SQLAlchemyStorage(session=session, prefix=pg_storage.prefix, lock_timeout=0.2)
        with storage.unit_of_work() as uow:
            uow.append_event(AccountActivated(occurred_at=T0, account_id="acc1"))
            uow.commit()
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert holding_the_counter.wait(60)
        with pytest.raises(ConcurrentUpdate), storage.unit_of_work() as uow:
            uow.get_throttle("login:claire.robert")
        session.rollback()
    thread.join()
    assert finished == ["committed"]


# -- tables, prefix, schema, Alembic ----------------------------------------------------------


def test_the_tables_carry_the_prefix() -> None:
    assert all(name.startswith(DEFAULT_PREFIX) for name in metadata.tables)
    custom = make_metadata("ent_")
    assert sorted(custom.tables) == sorted(
        f"ent_{n}" for n in ("establishments", "accounts", "credentials", "children", "links",
                             "throttles", "receipts", "outbox", "audit"))
    for table in custom.tables.values():
        for index in table.indexes:
            assert index.name is not None and index.name.startswith("ent_")


def test_a_bad_prefix_is_refused() -> None:
    for bad in ("drop table;", "é_", "x" * 31, "1abc"):
        with pytest.raises(InvalidInput):
            make_metadata(bad)


def test_the_tables_can_join_the_hosts_metadata() -> None:
    host = MetaData()
    Table("users", host, Column("id", Integer, primary_key=True))
    assert make_metadata(metadata=host) is host
    assert {"users", f"{DEFAULT_PREFIX}accounts"} <= set(host.tables)


def test_two_prefixes_keep_two_stores_apart_in_one_database(
        pg_engine: sqlalchemy.Engine) -> None:
    first, second = (SQLAlchemyStorage(pg_engine, prefix=fresh_prefix()) for _ in range(2))
    for store in (first, second):
        store.create_schema()
    try:
        with first.unit_of_work() as uow:
            uow.add_account(account(1), "parent.1")
            uow.commit()
        with second.unit_of_work() as uow:
            assert uow.get_account("acc1") is None
            uow.add_account(account(1, display_name="Someone Else"), "parent.1")
            uow.commit()
    finally:
        for store in (first, second):
            store.metadata.drop_all(pg_engine)


def test_the_tables_can_live_in_a_postgresql_schema(pg_engine: sqlalchemy.Engine) -> None:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS ent")
    storage = SQLAlchemyStorage(pg_engine, schema="ent")
    storage.create_schema()
    try:
        service = make_service(storage)
        principal = activated(service, "Claire Robert", [child(1)])
        assert service.get_account(principal.id) == principal
        assert f"{DEFAULT_PREFIX}accounts" in inspect(pg_engine).get_table_names(schema="ent")
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA ent CASCADE")


def test_alembic_autogenerate_sees_every_table_and_index(pg_engine: sqlalchemy.Engine) -> None:
    """A host adding make_metadata() to its target_metadata gets the whole schema."""
    alembic_migration = pytest.importorskip("alembic.migration")
    alembic_autogenerate = pytest.importorskip("alembic.autogenerate")
    prefix = fresh_prefix()
    md = make_metadata(prefix)
    with pg_engine.connect() as conn:
        context = alembic_migration.MigrationContext.configure(conn)
        added = {diff[1].name for diff in alembic_autogenerate.compare_metadata(context, md)
                 if diff[0] == "add_table"}
        assert added == set(md.tables)
        md.create_all(conn)
        context = alembic_migration.MigrationContext.configure(conn)
        assert alembic_autogenerate.compare_metadata(context, md) == []
        md.drop_all(conn)
        conn.commit()


# -- races on PostgreSQL: threads ------------------------------------------------------------


def test_fifty_concurrent_wrong_merge_attempts_at_one_login_are_counted_exactly(
        pg_storage: SQLAlchemyStorage) -> None:
    """No more argon2 verifications run than the throttle allows, whatever the race."""
    verifier = CountingVerifier()
    service = make_service(pg_storage, verifier)
    target = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    principals = [activated(service, f"Parent {i}", [child(10 + i)]) for i in range(5)]
    verifier.reset()
    barrier = threading.Barrier(50)
    codes: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        barrier.wait(30)
        try:
            service.merge(principals[i % 5].id, target.login, "WRONG1234")
        except AccountMergeError as error:
            with lock:
                codes.append(error.code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    allowance = service.throttle.backoff_after
    assert verifier.verifications == allowance
    assert sorted(codes) == sorted(["invalid_credentials"] * allowance
                                   + ["too_many_attempts"] * (50 - allowance))
    with pg_storage.unit_of_work(write=False) as uow:
        login_state = uow.get_throttle(f"login:{target.login}")
        principal_states = [uow.get_throttle(f"principal:{p.id}") for p in principals]
    assert login_state is not None and login_state.consecutive == allowance
    assert sum(len(s.recent) for s in principal_states if s is not None) == allowance
    assert service.get_account(target.account_id).status is AccountStatus.PROVISIONAL


# -- races on PostgreSQL: processes --------------------------------------------------------------


def _run_processes(url: str, prefix: str, jobs: list[list[tuple[str, str, str]]], *,
                   throttle: ThrottlePolicy = GENEROUS) -> list[tuple[list[str], int]]:
    """Run one worker process per list of jobs; their rounds start together.

    Each returns its outcomes (the principal id of a receipt, or an error
    code) and the number of verifications it ran.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs))
    results = context.Queue()
    workers = [context.Process(target=merge_worker, args=(url, prefix, barrier, job, results),
                               kwargs={"throttle": throttle, "start": T0})
               for job in jobs]
    for worker in workers:
        worker.start()
    try:
        out = [results.get(timeout=180) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():  # pragma: no cover - a hung worker
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)
    return out


def _all_children(service: MergeService, ids: list[str]) -> set[str]:
    held: set[str] = set()
    for account_id in ids:
        live = service.resolve(account_id)
        held.update(c.id for c in service.children(live.id))
    return held


def test_processes_racing_to_merge_one_account_have_one_winner_and_lose_no_child(
        pg_storage: SQLAlchemyStorage, postgres_url: str) -> None:
    service = make_service(pg_storage, throttle=GENEROUS)
    rounds, racers = 3, 4
    letters = [service.issue_account(SCHOOL, "Claire Robert", [child(100 + r)])
               for r in range(rounds)]
    principals = [[activated(service, f"Parent {r} {i}", [child(200 + 10 * r + i)])
                   for i in range(racers)] for r in range(rounds)]
    jobs = [[(principals[r][i].id, letters[r].login, letters[r].provisional_password.reveal())
             for r in range(rounds)] for i in range(racers)]
    results = _run_processes(postgres_url, pg_storage.prefix, jobs)
    for r in range(rounds):
        outcomes = [outcomes[r] for outcomes, _ in results]
        winners = [o for o in outcomes if o.isalnum() and len(o) == 32]
        assert len(winners) == 1, outcomes
        assert set(outcomes) - set(winners) <= {"invalid_credentials", "concurrent_update"}
        assert service.resolve(letters[r].account_id).id == winners[0]
        ids = [p.id for p in principals[r]] + [letters[r].account_id]
        assert _all_children(service, ids) == {f"ine-{100 + r}"} | {
            f"ine-{200 + 10 * r + i}" for i in range(racers)}


def test_processes_merging_two_accounts_into_each_other_never_deactivate_both(
        pg_storage: SQLAlchemyStorage, postgres_url: str) -> None:
    service = make_service(pg_storage, throttle=GENEROUS)
    pairs = [(activated(service, "Claire Robert", [child(300 + r)]),
              activated(service, "Marc Robert", [child(400 + r)])) for r in range(6)]
    jobs = [[(a.id, b.login, STRONG) for a, b in pairs],
            [(b.id, a.login, STRONG) for a, b in pairs]]
    results = _run_processes(postgres_url, pg_storage.prefix, jobs)
    for r, (a, b) in enumerate(pairs):
        outcomes = [outcomes[r] for outcomes, _ in results]
        assert sum(o in (a.id, b.id) for o in outcomes) == 1, outcomes
        statuses = [service.get_account(x.id).status for x in (a, b)]
        assert AccountStatus.ACTIVE in statuses, statuses
        assert _all_children(service, [a.id, b.id]) == {f"ine-{300 + r}", f"ine-{400 + r}"}


def test_processes_making_wrong_attempts_run_no_more_verifications_than_allowed(
        pg_storage: SQLAlchemyStorage, postgres_url: str) -> None:
    service = make_service(pg_storage)
    target = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    principals = [activated(service, f"Parent {i}", [child(10 + i)]) for i in range(3)]
    jobs = [[(p.id, target.login, "WRONG1234")] * 4 for p in principals]
    results = _run_processes(postgres_url, pg_storage.prefix, jobs, throttle=ThrottlePolicy())
    verifications = sum(count for _, count in results)
    codes = [code for outcomes, _ in results for code in outcomes]
    allowance = ThrottlePolicy().backoff_after
    assert verifications == allowance
    assert codes.count("invalid_credentials") == allowance
    assert codes.count("too_many_attempts") == len(codes) - allowance
