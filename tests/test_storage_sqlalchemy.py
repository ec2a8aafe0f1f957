"""SQLAlchemyStorage on a real PostgreSQL server and on a SQLite file.

What the conformance suite (tests/test_conformance_sqlalchemy.py) does not
pin: the service's whole story, errors naming the URL, PostgreSQL's locks
and lost races, SQLite's write lock, and the host's session.  The tables
and their upgrade are in tests/test_sqlalchemy_schema.py, round trips in
tests/test_sqlalchemy_round_trips.py, races in tests/test_sqlalchemy_races.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from account_merge import AccountStatus, Child, MergeService
from account_merge.domain.account import Account
from account_merge.domain.audit import AuditAction
from account_merge.domain.child import ChildLink
from account_merge.domain.events import AccountActivated
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.logins import login_key
from account_merge.domain.throttle import ThrottleState, merge_key, signin_key
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    ExpectationFailed,
    InvalidCredentials,
    StorageError,
    TooManyAttempts,
)
from account_merge.ports import ChangeSet, Expect, Fetch
from account_merge.storage.sqlalchemy import SQLAlchemyStorage, make_metadata
from sqlalchemy_kit import (
    OTHER_SCHOOL,
    SCHOOL,
    T0,
    account,
    activated,
    apply,
    child,
    fresh_prefix,
    make_service,
    new,
    pg_engine,
    pg_storage,
    sqlite_engine,
    sqlite_storage,
    storage,
)

__all__ = ["pg_engine", "pg_storage", "sqlite_storage", "storage"]


def fetch(store: SQLAlchemyStorage, request: Fetch) -> Any:
    with store.unit_of_work(write=False) as uow:
        return uow.fetch(request)


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


def test_after_a_change_of_school_each_letter_shows_its_own_school(
        storage: SQLAlchemyStorage) -> None:
    """Defect 12.2: the lycée's letter names the child as the lycée knows it, and splits there.

    This store kept one row per child id, so the lycée's letter showed the
    collège, and the split asked for the collège's authority.
    """
    service = make_service(storage)
    at_college = Child("ine-7", "Dylan", "Robert", SCHOOL.uai)
    at_lycee = Child("ine-7", "Dylan-Léo", "Robert", OTHER_SCHOOL.uai)
    principal = activated(service, "Claire Robert", [at_college])
    letter = service.issue_account(OTHER_SCHOOL, "Claire Robert", [at_lycee])
    assert service.children(letter.account_id) == (at_lycee,)
    assert service.children(principal.id) == (at_college,)
    other = activated(service, "Marc Robert", [child(8)])
    service.merge(other.id, letter.login, letter.provisional_password)
    assert service.children(other.id) == (child(8), at_lycee)
    split = service.split(OTHER_SCHOOL, other.id)
    assert split.moved == (at_lycee,)
    assert service.children(split.new_account_id) == (at_lycee,)


def test_aware_datetimes_come_back_equal_and_in_utc(storage: SQLAlchemyStorage) -> None:
    paris = timezone(timedelta(hours=2))
    created = T0.replace(microsecond=123456).astimezone(paris)
    apply(storage, new(account(1, created_at=created, last_signed_in_at=created)))
    stored = fetch(storage, Fetch(accounts=["acc1"])).accounts["acc1"].account
    assert stored.created_at == created == stored.last_signed_in_at
    assert stored.created_at.utcoffset() == timedelta(0)


def test_a_unit_of_work_goes_on_after_commit_and_rollback(storage: SQLAlchemyStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.apply(new(account(1)))
        uow.commit()
        uow.apply(new(account(2)))
        uow.rollback()
        uow.apply(new(account(3)))
        uow.commit()
        uow.apply(new(account(4)))
    found = fetch(storage, Fetch(accounts=[f"acc{n}" for n in (1, 2, 3, 4)])).accounts
    assert sorted(found) == ["acc1", "acc3"]


def test_a_unit_of_work_outside_its_with_block_refuses_work(
        storage: SQLAlchemyStorage) -> None:
    uow = storage.unit_of_work()
    with pytest.raises(RuntimeError, match="with"):
        uow.fetch(Fetch(accounts=["acc1"]))
    with uow:
        pass
    with pytest.raises(RuntimeError, match="with"):
        uow.commit()


def test_storage_write_is_alone_and_all_or_nothing(storage: SQLAlchemyStorage) -> None:
    """On PostgreSQL one statement in autocommit: a failed precondition writes nothing."""
    storage.write(new(account(1)))
    with pytest.raises(ExpectationFailed):
        storage.write(ChangeSet(expect=[Expect("acc1", AccountStatus.ACTIVE, None)],
                                establishments=[SCHOOL],
                                throttles=[ThrottleState("merge:x", 1, T0, (T0,))]))
    found = fetch(storage, Fetch(establishments=[SCHOOL.uai], throttles=["merge:x"]))
    assert found.establishments == {} and found.throttles["merge:x"] == ThrottleState("merge:x")


def test_a_stored_row_the_domain_refuses_is_a_storage_error(
        storage: SQLAlchemyStorage) -> None:
    apply(storage, new(account(1)))
    accounts = storage.metadata.tables[f"{storage.prefix}accounts"]
    with storage._bind_engine().begin() as conn:
        conn.execute(accounts.update().values(status="lost"))
    with pytest.raises(StorageError, match="cannot be read"):
        fetch(storage, Fetch(accounts=["acc1"]))


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
    for call in (lambda: service.get_account("acc1"),
                 lambda: service.mark_published([1])):  # storage.write, in autocommit
        with pytest.raises(StorageError) as raised:
            call()
        assert raised.value.code == "storage_error"
        assert raised.value.store.startswith(
            "postgresql+psycopg://postgres:***@/account_merge_test")
        assert "s3cret" not in str(raised.value)
    storage.close()


def test_missing_tables_raise_a_storage_error_that_says_how_to_create_them(
        tmp_path: Path, pg_engine: sqlalchemy.Engine) -> None:
    for store in (SQLAlchemyStorage(pg_engine, prefix=fresh_prefix()),
                  SQLAlchemyStorage.from_url(f"sqlite:///{tmp_path / 'empty.sqlite3'}")):
        with pytest.raises(StorageError, match=r"create_schema\(\)"), store.unit_of_work() as uow:
            uow.fetch(Fetch(accounts=["acc1"]))
        store.close()


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
        uow.fetch(Fetch(accounts=["acc1"]))
    assert fetch(storage, Fetch(accounts=["acc1"])).accounts == {}  # a new connection
    storage.metadata.drop_all(storage._bind_engine())
    storage.close()


# -- PostgreSQL locks and the errors of lost races -------------------------------------


def _hold_row_lock(engine: sqlalchemy.Engine, table: Table, account_id: str) -> Any:
    conn = engine.connect()
    conn.execute(select(table).where(table.c.id == account_id).with_for_update())
    return conn


def test_a_locked_fetch_holds_row_locks_until_the_unit_of_work_ends(
        pg_storage: SQLAlchemyStorage, pg_engine: sqlalchemy.Engine) -> None:
    accounts = pg_storage.metadata.tables[f"{pg_storage.prefix}accounts"]
    apply(pg_storage, new(account(1), account(2)))
    with pg_storage.unit_of_work() as uow:
        assert set(uow.fetch(Fetch(accounts=["acc2", "acc1"], lock=True)).accounts) == {
            "acc1", "acc2"}
        with pg_engine.connect() as other:
            with pytest.raises(sqlalchemy.exc.OperationalError, match="could not obtain lock"):
                other.execute(select(accounts).where(accounts.c.id == "acc1")
                              .with_for_update(nowait=True))
            other.rollback()
            uow.commit()
            assert other.execute(select(accounts.c.id).where(accounts.c.id == "acc1")
                                 .with_for_update(nowait=True)).scalar() == "acc1"


def test_a_locked_fetch_that_waited_reads_what_the_holder_committed(
        pg_storage: SQLAlchemyStorage) -> None:
    """A statement reads the snapshot it began with: after the wait, the store reads again.

    The holder only adds a link to the account it locked; without a
    second read, the waiter would get the links as they were before the
    holder committed.
    """
    apply(pg_storage, new(account(1)))
    holding = threading.Event()
    seen: list[Any] = []

    def holder() -> None:
        with pg_storage.unit_of_work() as uow:
            uow.fetch(Fetch(accounts=["acc1"], lock=True))
            holding.set()
            time.sleep(0.3)
            uow.apply(ChangeSet(link=[_link("acc1", 5)]))
            uow.commit()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    with pg_storage.unit_of_work() as uow:
        seen.append(uow.fetch(Fetch(accounts=["acc1"], links=["acc1"], lock=True)).links)
        uow.commit()
    thread.join(10)
    assert [[link.child.id for link in links["acc1"]] for links in seen] == [["ine-5"]]


def _link(account_id: str, n: int) -> ChildLink:
    return ChildLink(account_id=account_id, child=child(n), origin_account_id=account_id,
                     origin_establishment_uai=SCHOOL.uai, via_merge=False, linked_at=T0)


@pytest.mark.parametrize("step", ["fetch", "write"])
def test_a_lock_timeout_becomes_concurrent_update(pg_engine: sqlalchemy.Engine,
                                                  step: str) -> None:
    """The timeout is set by the statement itself, in a unit of work or in autocommit."""
    storage = SQLAlchemyStorage(pg_engine, prefix=fresh_prefix(), lock_timeout=0.05)
    storage.create_schema()
    apply(storage, new(account(1)))
    holder = _hold_row_lock(pg_engine, storage.metadata.tables[f"{storage.prefix}accounts"],
                            "acc1")
    try:
        with pytest.raises(ConcurrentUpdate, match="lock timeout"):
            if step == "fetch":
                with storage.unit_of_work() as uow:
                    uow.fetch(Fetch(accounts=["acc1"], lock=True))
            else:
                storage.write(ChangeSet(accounts=[account(1, email="c@example.org")]))
    finally:
        holder.close()
        storage.metadata.drop_all(pg_engine)


def test_a_deadlock_becomes_concurrent_update(pg_storage: SQLAlchemyStorage) -> None:
    """Two units of work lock two rows in opposite orders (which the service never does)."""
    apply(pg_storage, new(account(1), account(2)))
    both_hold_one = threading.Barrier(2)
    outcomes: list[str] = []

    def lock(first: str, second: str) -> None:
        try:
            with pg_storage.unit_of_work() as uow:
                uow.fetch(Fetch(accounts=[first], lock=True))
                both_hold_one.wait(10)
                uow.fetch(Fetch(accounts=[second], lock=True))
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
    apply(pg_storage, new(account(1)))
    with repeatable.unit_of_work() as stale:
        assert stale.fetch(Fetch(accounts=["acc1"])).accounts["acc1"].account == account(1)
        apply(pg_storage, ChangeSet(accounts=[account(1, status=AccountStatus.ACTIVE)]))
        with pytest.raises(ConcurrentUpdate, match="could not serialize"):
            stale.fetch(Fetch(accounts=["acc1"], lock=True))
        with pytest.raises(ConcurrentUpdate, match="roll back"):
            stale.fetch(Fetch(accounts=["acc1"]))  # the failed transaction is not reused
        stale.rollback()
        assert stale.fetch(Fetch(accounts=["acc1"])).accounts["acc1"].account == account(
            1, status=AccountStatus.ACTIVE)


def test_a_counter_read_for_writing_stays_locked_until_the_unit_of_work_ends(
        pg_engine: sqlalchemy.Engine) -> None:
    storage = SQLAlchemyStorage(pg_engine, prefix=fresh_prefix(), lock_timeout=0.05)
    storage.create_schema()
    try:
        with storage.unit_of_work() as first:
            found = first.fetch(Fetch(throttles=["merge:claire"], lock=True)).throttles
            assert found == {"merge:claire": ThrottleState("merge:claire")}
            with pytest.raises(ConcurrentUpdate), storage.unit_of_work() as second:
                second.fetch(Fetch(throttles=["merge:claire"], lock=True))
            with pytest.raises(ConcurrentUpdate), storage.unit_of_work() as counting:
                counting.fetch(Fetch(count=["merge:claire"], at=T0))
            with storage.unit_of_work(write=False) as reader:  # readers do not wait
                assert reader.fetch(Fetch(throttles=["merge:claire"])).throttles == found
            with storage.unit_of_work() as other_key:
                other_key.fetch(Fetch(throttles=["merge:marc"], lock=True))
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
            reader.fetch(Fetch(accounts=["acc1"]))
            other.execute("BEGIN IMMEDIATE")  # a reader does not block writers
            other.execute("ROLLBACK")
        with storage.unit_of_work() as writer:
            writer.fetch(Fetch(accounts=["acc1"]))  # only a read, but BEGIN IMMEDIATE
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
            uow.fetch(Fetch(accounts=["acc1"]))
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
        uow.apply(new(account(1)))
        raise RuntimeError("the library's work fails")
    with storage.unit_of_work() as uow:
        uow.apply(new(account(2)))
        uow.commit()
    factory.commit()
    factory.remove()
    with host_engine.connect() as conn:
        assert conn.execute(select(notes.c.text)).scalar() == "written by the host"
    found = fetch(SQLAlchemyStorage(host_engine, prefix=host_prefix),
                  Fetch(accounts=["acc1", "acc2"])).accounts
    assert [r.account for r in found.values()] == [account(2)]


# -- inside a host's session on PostgreSQL: failures outlive the host's rollback ----------

WRONG = "Wrong-Password-42"


def _merge_story(service: MergeService) -> tuple[Account, NotificationLetter]:
    """An activated principal and a letter of another school, committed."""
    principal = activated(service, "Claire Robert", [child(1)])
    letter = service.issue_account(OTHER_SCHOOL, "Claire Robert", [child(2, OTHER_SCHOOL.uai)])
    return principal, letter


def _outcomes(service: MergeService, action: AuditAction) -> list[str]:
    return [r.outcome for r in service.audit_trail() if r.action is action]


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
    assert _outcomes(committed, AuditAction.MERGE) == (
        ["invalid_credentials"] * committed.throttle.backoff_after + ["too_many_attempts"])


def test_in_a_session_wrong_sign_ins_count_even_when_the_host_rolls_back(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage) -> None:
    committed = make_service(pg_storage)
    principal = activated(committed, "Claire Robert", [child(1)])
    with Session(pg_engine) as session:
        service = make_service(SQLAlchemyStorage(session=session, prefix=pg_storage.prefix))
        for _ in range(3):
            with pytest.raises(InvalidCredentials):
                service.authenticate(principal.login, WRONG, client="192.0.2.1")
            session.rollback()
    key = signin_key(login_key(principal.login), "192.0.2.1")
    assert fetch(pg_storage, Fetch(throttles=[key])).throttles[key].consecutive == 3
    assert _outcomes(committed, AuditAction.AUTHENTICATE) == ["invalid_credentials"] * 3


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
        assert _outcomes(committed, AuditAction.MERGE) == ["success"]
    else:
        assert status is AccountStatus.PROVISIONAL
        assert "accounts_merged" not in events
        assert _outcomes(committed, AuditAction.MERGE) == []
        assert committed.children(principal.id) == (child(1),)


def test_in_a_session_the_hosts_connection_holds_no_lock_on_a_counter(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage) -> None:
    """While the host's transaction is still open after a failure, others use the counter."""
    committed = make_service(pg_storage)
    principal, letter = _merge_story(committed)
    other = SQLAlchemyStorage(pg_engine, prefix=pg_storage.prefix, lock_timeout=0.5)
    key = merge_key(login_key(letter.login))
    with Session(pg_engine) as session:
        service = make_service(SQLAlchemyStorage(session=session, prefix=pg_storage.prefix))
        with pytest.raises(InvalidCredentials):
            service.merge(principal.id, letter.login, WRONG)
        assert session.in_transaction()
        with other.unit_of_work() as uow:
            state = uow.fetch(Fetch(throttles=[key], lock=True)).throttles[key]
            assert state.consecutive == 1
            uow.apply(ChangeSet(throttles=[state]))
            uow.commit()
        session.rollback()


def test_in_a_session_a_deadlock_through_the_hosts_thread_ends_in_concurrent_update(
        pg_engine: sqlalchemy.Engine, pg_storage: SQLAlchemyStorage) -> None:
    """A lock cycle the server cannot see is broken by the side connection's lock timeout.

    The host's transaction holds the outbox (an event written, not yet
    committed); another writer holds a counter and waits for the outbox;
    the host's next unit of work waits for that counter on its side
    connection.
    """
    holding_the_counter = threading.Event()
    finished: list[str] = []

    def other_writer() -> None:
        with pg_storage.unit_of_work() as uow:
            uow.fetch(Fetch(throttles=["merge:claire.robert"], lock=True))
            holding_the_counter.set()
            uow.apply(ChangeSet(events=[AccountActivated(occurred_at=T0, account_id="acc2")]))
            uow.commit()
        finished.append("committed")

    with Session(pg_engine) as session:
        storage = SQLAlchemyStorage(session=session, prefix=pg_storage.prefix, lock_timeout=0.2)
        with storage.unit_of_work() as uow:
            uow.apply(ChangeSet(events=[AccountActivated(occurred_at=T0, account_id="acc1")]))
            uow.commit()
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert holding_the_counter.wait(60)
        with pytest.raises(ConcurrentUpdate), storage.unit_of_work() as uow:
            uow.fetch(Fetch(throttles=["merge:claire.robert"], lock=True))
        session.rollback()
    thread.join()
    assert finished == ["committed"]
