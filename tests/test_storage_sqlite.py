"""SQLiteStorage: the file, its schema and migrations, connections and driver errors.

The behaviour every store shares is checked by the storage contract
(``test_conformance_sqlite.py``); these tests pin what is particular to a
store in an SQLite file.
"""

from __future__ import annotations

import os
import sqlite3
import stat
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
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.events import AccountActivated
from account_merge.domain.notices import NoticeKind
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    AccountMerged,
    ConcurrentUpdate,
    ExpectationFailed,
    InvalidCredentials,
    InvalidInput,
    StorageError,
)
from account_merge.ports import (
    ChangeSet,
    Expect,
    Fetch,
    LoginTaken,
    NewAccount,
    SignIn,
    StoredReceipt,
)
from account_merge.storage.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, migrate
from account_merge.testing import CapturingMailer, FakeClock, fast_verifier, make_establishment

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
STRONG = "Correct-Horse-Battery-9"
HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"


def account(n: int, **changes: Any) -> Account:
    base = Account(id=f"acc{n}", login=f"parent.{n}", role=Role.RESPONSABLE,
                   status=AccountStatus.PROVISIONAL, display_name=f"Parent {n}",
                   establishment_uai=SCHOOL.uai, created_at=T0)
    return attrs.evolve(base, **changes)


def child(n: int, school: str = SCHOOL.uai) -> Child:
    return Child(f"ine-{n}", f"Enfant{n}", "Robert", school)


def new(*numbers: int, **changes: Any) -> ChangeSet:
    return ChangeSet(new_accounts=[NewAccount(account(n, **changes), f"parent.{n}")
                                   for n in numbers])


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


def fetch(storage: SQLiteStorage, request: Fetch) -> Any:
    with storage.unit_of_work(write=False) as uow:
        return uow.fetch(request)


def accounts(storage: SQLiteStorage, *numbers: int) -> dict[str, Account]:
    """The stored accounts among acc<n>, by id."""
    found = fetch(storage, Fetch(accounts=[f"acc{n}" for n in numbers])).accounts
    return {i: record.account for i, record in found.items()}


def traced(storage: SQLiteStorage) -> list[str]:
    """The SQL this thread's connection to *storage* runs from now on."""
    statements: list[str] = []
    with storage.unit_of_work(write=False):
        pass
    storage._local.slot.connection.set_trace_callback(statements.append)
    return statements


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the file ---------------------------------------------------------------------------
def test_nothing_touches_the_file_before_the_first_unit_of_work(path: Path) -> None:
    store = SQLiteStorage(path)
    assert not path.exists()
    store.close()
    assert not path.exists()
    with store.unit_of_work(write=False) as uow:
        assert uow.fetch(Fetch(accounts=["acc1"])).accounts == {}
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
    storage.write(new(1))
    connection = raw(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    connection.close()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_new_file_and_its_wal_and_shm_files_are_readable_by_their_owner_only(
        path: Path) -> None:
    """12.7: the store holds password hashes and personal data; no other user reads it."""
    previous = os.umask(0o022)  # the usual default, which would give 0644
    try:
        store = SQLiteStorage(path)
        store.write(new(1))
        with store.unit_of_work() as uow:  # the WAL and its index exist while connected
            uow.apply(new(2))
            uow.commit()
            wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
            assert wal.exists() and shm.exists()
            assert {p.name: mode(p) for p in (path, wal, shm)} == {
                path.name: 0o600, wal.name: 0o600, shm.name: 0o600}
        store.close()
    finally:
        os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_an_existing_file_keeps_its_mode(path: Path) -> None:
    """A file its administrator made group-readable (say, for backups) stays so."""
    connection = raw(path)
    migrate(connection)
    connection.close()
    os.chmod(path, 0o640)
    store = SQLiteStorage(path)
    store.write(new(1))
    assert mode(path) == 0o640
    assert mode(f"{path}-wal") == 0o640  # SQLite gives the WAL the database's mode
    store.close()
    assert mode(path) == 0o640


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_an_empty_file_created_by_someone_else_is_used_as_it_is(path: Path) -> None:
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    store = SQLiteStorage(path)
    store.write(new(1))
    assert set(accounts(store, 1)) == {"acc1"}
    assert mode(path) == 0o644
    store.close()


def test_foreign_keys_are_enforced(storage: SQLiteStorage) -> None:
    link = ChildLink(account_id="nobody", child=child(1), origin_account_id="nobody",
                     origin_establishment_uai=SCHOOL.uai, via_merge=False, linked_at=T0)
    with pytest.raises(StorageError, match="FOREIGN KEY"), storage.unit_of_work() as uow:
        uow.apply(ChangeSet(link=[link]))


def test_datetimes_are_stored_as_iso_text_and_come_back_equal_whatever_their_offset(
        storage: SQLiteStorage, path: Path) -> None:
    paris = datetime(2026, 9, 1, 10, 30, tzinfo=ZoneInfo("Europe/Paris"))
    new_york = datetime(2026, 9, 1, 4, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-4)))
    stored = account(1, created_at=paris, status=AccountStatus.ACTIVE,
                     last_signed_in_at=new_york)
    link = ChildLink(account_id="acc1", child=child(1), origin_account_id="acc1",
                     origin_establishment_uai=SCHOOL.uai, via_merge=False, linked_at=new_york)
    state = ThrottleState("signin:parent.1:-", 2, paris, (new_york, paris))
    storage.write(ChangeSet(new_accounts=[NewAccount(stored, "parent.1")], link=[link],
                            throttles=[state]))
    found = fetch(storage, Fetch(accounts=["acc1"], links=["acc1"],
                                 throttles=["signin:parent.1:-"]))
    assert found.accounts["acc1"].account == stored
    assert found.links["acc1"] == (link,)
    assert found.throttles["signin:parent.1:-"] == state
    connection = raw(path)
    assert connection.execute("SELECT created_at, last_signed_in_at FROM accounts").fetchone() == (
        "2026-09-01T10:30:00+02:00", "2026-09-01T04:00:00.123456-04:00")
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
    with pytest.raises(InvalidCredentials):
        service.authenticate(first.login, "Wrong-Horse-Battery-9")
    contents = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    storage.close()
    contents += b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    for password in (first.provisional_password.reveal(), second.provisional_password.reveal(),
                     STRONG, "Wrong-Horse-Battery-9"):
        assert password.encode() not in contents


def test_an_absorbed_account_keeps_its_credential_row(
        service: MergeService, storage: SQLiteStorage, path: Path) -> None:
    """The service tells the owner of an absorbed account where it went (account_merged)."""
    first = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    second = service.issue_account(SCHOOL, "Claire Robert", [child(2)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    other = service.activate(second.login, second.provisional_password, STRONG)
    service.merge(principal.id, other.login, STRONG)
    connection = raw(path)
    assert connection.execute("SELECT a.status, c.kind FROM accounts AS a JOIN credentials AS c"
                              " ON c.account_id = a.id WHERE a.id = ?", (other.id,)
                              ).fetchone() == ("merged", "password")
    connection.close()
    with pytest.raises(AccountMerged):
        service.authenticate(other.login, STRONG)


# -- units of work ------------------------------------------------------------------------
def test_a_second_store_on_the_same_file_sees_committed_work_only(path: Path) -> None:
    writer, reader = SQLiteStorage(path), SQLiteStorage(path)
    try:
        with writer.unit_of_work() as uow:
            uow.apply(new(1))
            assert accounts(reader, 1) == {}
            uow.commit()
        assert accounts(reader, 1) == {"acc1": account(1)}
    finally:
        writer.close()
        reader.close()


def test_an_exception_rolls_back_everything_as_another_store_sees_it(
        storage: SQLiteStorage, path: Path) -> None:
    storage.write(new(1))
    with pytest.raises(ExpectationFailed), storage.unit_of_work() as uow:
        uow.fetch(Fetch(count=["merge:parent.1"], at=T0))
        uow.apply(ChangeSet(
            establishments=[SCHOOL], accounts=[account(1, status=AccountStatus.ACTIVE)],
            credentials=[Credential("acc1", HASH, CredentialKind.PASSWORD)],
            events=[AccountActivated(T0, "acc1")]))
        uow.apply(ChangeSet(accounts=[account(9)]))  # no such account
    other = SQLiteStorage(path)
    found = fetch(other, Fetch(establishments=[SCHOOL.uai], accounts=["acc1"],
                               throttles=["merge:parent.1"]))
    assert found.establishments == {}
    assert found.accounts["acc1"].account == account(1)
    assert found.accounts["acc1"].credential is None
    assert found.throttles["merge:parent.1"] == ThrottleState("merge:parent.1")
    with other.unit_of_work(write=False) as uow:
        assert uow.unpublished(10) == []
    other.close()


def test_work_after_a_commit_or_a_rollback_belongs_to_a_new_transaction(
        storage: SQLiteStorage) -> None:
    with storage.unit_of_work() as uow:
        uow.apply(new(1))
        uow.rollback()
        uow.apply(new(2))
        uow.commit()
        uow.apply(new(3))
    assert accounts(storage, 1, 2, 3) == {"acc2": account(2)}


def test_login_taken_names_the_login_and_the_change_set_is_rolled_back(
        storage: SQLiteStorage) -> None:
    storage.write(new(1))
    clash = NewAccount(account(3), "parent.1")
    with pytest.raises(LoginTaken, match=r"parent\.1"), storage.unit_of_work() as uow:
        uow.apply(new(2) + ChangeSet(new_accounts=[clash]))
    assert set(accounts(storage, 1, 2, 3)) == {"acc1"}


def test_an_unknown_account_among_several_to_replace_or_sign_in_is_named(
        storage: SQLiteStorage) -> None:
    storage.write(new(1))
    with pytest.raises(ExpectationFailed, match="'acc2' to replace"):
        storage.write(ChangeSet(accounts=[account(1, email="c@example.org"), account(2)]))
    with pytest.raises(ExpectationFailed, match="'acc7' to sign in"):
        storage.write(ChangeSet(sign_ins=[SignIn("acc1", T0), SignIn("acc7", T0)]))
    assert accounts(storage, 1) == {"acc1": account(1)}


def test_an_account_reabsorbed_elsewhere_goes_last_in_its_new_holders_list(
        storage: SQLiteStorage) -> None:
    storage.write(new(1, 2, 3, 4, 5))
    merged = {n: account(n, status=AccountStatus.MERGED, merged_into="acc1") for n in (2, 3, 4)}
    with storage.unit_of_work() as uow:
        uow.apply(ChangeSet(accounts=[merged[4], merged[2], merged[3]]))
        uow.apply(ChangeSet(accounts=[account(3, status=AccountStatus.MERGED,
                                              merged_into="acc5")]))
        uow.apply(ChangeSet(accounts=[merged[3], merged[4]]))  # acc4 does not move
        uow.commit()
    absorbed = fetch(storage, Fetch(absorbed=["acc1", "acc5"])).absorbed
    assert absorbed == {"acc1": (merged[4], merged[2], merged[3]), "acc5": ()}


def test_threads_opening_a_new_file_together_all_get_a_usable_store(tmp_path: Path) -> None:
    """The first openers race to create the file and the schema and to switch to WAL."""
    for round_ in range(10):
        store = SQLiteStorage(tmp_path / f"new-{round_}.sqlite3")
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_and_write(n: int, store: SQLiteStorage = store,
                           barrier: threading.Barrier = barrier,
                           errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                store.write(new(n))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert len(accounts(store, *range(6))) == 6
        store.close()


def test_a_unit_of_work_cannot_be_nested_in_the_same_thread(storage: SQLiteStorage) -> None:
    with (storage.unit_of_work(write=False), pytest.raises(RuntimeError, match="already open"),
          storage.unit_of_work(write=False)):
        pass
    assert accounts(storage, 1) == {}


def test_methods_outside_a_with_block_are_refused(storage: SQLiteStorage) -> None:
    uow = storage.unit_of_work()
    for call in (lambda: uow.fetch(Fetch(accounts=["acc1"])), lambda: uow.apply(new(1)),
                 lambda: uow.unpublished(1), lambda: uow.audit_records(None, 1), uow.commit):
        with pytest.raises(RuntimeError, match="with"):
            call()


def test_close_waits_for_a_unit_of_work_in_progress_and_the_store_stays_usable(
        storage: SQLiteStorage) -> None:
    """close() closes idle connections at once, a busy one when its unit of work ends."""
    inside, closed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with storage.unit_of_work() as uow:
                uow.apply(new(1))
                inside.set()
                closed.wait(10)
                uow.apply(new(2))
                uow.commit()
        except BaseException as error:
            errors.append(error)

    storage.write(new(3))  # this thread's connection, idle
    thread = threading.Thread(target=write)
    thread.start()
    inside.wait(10)
    storage.close()
    closed.set()
    thread.join(10)
    assert errors == []
    assert accounts(storage, 1, 2, 3) == {f"acc{n}": account(n) for n in (1, 2, 3)}


def test_write_is_one_immediate_transaction_and_an_empty_change_set_opens_none(
        storage: SQLiteStorage) -> None:
    statements = traced(storage)
    storage.write(ChangeSet())
    assert statements == []
    storage.write(new(1) + ChangeSet(audit=[AuditRecord(T0, AuditAction.ISSUE, "success")]))
    assert statements[0] == "BEGIN IMMEDIATE"
    assert statements[-1] == "COMMIT"
    assert len(statements) == 4


def test_a_failed_expectation_is_checked_before_anything_is_written(
        storage: SQLiteStorage) -> None:
    storage.write(new(1))
    statements = traced(storage)
    with pytest.raises(ExpectationFailed):
        storage.write(ChangeSet(expect=[Expect("acc1", AccountStatus.ACTIVE, None)],
                                sign_ins=[SignIn("acc1", T0)]))
    assert [s.split()[0] for s in statements] == ["BEGIN", "SELECT", "ROLLBACK"]


def test_a_fetch_reads_each_kind_of_thing_in_one_statement(storage: SQLiteStorage) -> None:
    """However many keys it names: accounts by login and by id together, then the rest."""
    storage.write(new(1, 2, 3) + ChangeSet(establishments=[SCHOOL]))
    statements = traced(storage)
    with storage.unit_of_work() as uow:
        found = uow.fetch(Fetch(
            logins=["parent.1", "parent.2", "nobody"], accounts=["acc2", "acc3", "acc9"],
            links=["acc1", "acc2"], absorbed=["acc1", "acc2"], throttles=["principal:acc1"],
            count=["merge:parent.2", "merge:parent.3"], at=T0,
            receipts=[("acc1", "k1"), ("acc2", "k2")], establishments=[SCHOOL.uai, "0000000A"],
            lock=True))
        uow.commit()
    assert set(found.by_login) == {"parent.1", "parent.2"}
    assert set(found.accounts) == {"acc2", "acc3"}
    kinds = [s.split()[0] for s in statements]
    # BEGIN IMMEDIATE; accounts; links; absorbed; counters, then the two counted
    # (one executemany); receipts; establishments; COMMIT.
    assert kinds == ["BEGIN", "SELECT", "SELECT", "SELECT", "SELECT", "INSERT", "INSERT",
                     "SELECT", "SELECT", "COMMIT"]


def test_a_change_set_runs_one_statement_per_row_of_each_part(storage: SQLiteStorage) -> None:
    storage.write(new(1, 2))
    statements = traced(storage)
    storage.write(ChangeSet(
        expect=[Expect("acc1", AccountStatus.PROVISIONAL, None)],
        accounts=[account(2, status=AccountStatus.MERGED, merged_into="acc1")],
        sign_ins=[SignIn("acc1", T0)],
        link=[ChildLink("acc1", child(1), "acc1", SCHOOL.uai, False, T0)],
        throttles=[ThrottleState("merge:parent.2")],
        receipts=[StoredReceipt("acc1", "k", "parent.2", MergeReceipt("acc1", "acc2", (), ()))],
        events=[AccountActivated(T0, "acc1")],
        audit=[AuditRecord(T0, AuditAction.MERGE, "success")],
    ))
    kinds = [s.split()[0] for s in statements]
    assert kinds == ["BEGIN", "SELECT", "UPDATE", "UPDATE", "INSERT", "INSERT", "INSERT",
                     "INSERT", "INSERT", "INSERT", "COMMIT"]


def test_every_statement_of_the_use_cases_is_served_by_an_index(path: Path) -> None:
    """Costs must not grow with the store: no statement scans a whole table."""
    statements: list[str] = []

    class TracingStorage(SQLiteStorage):
        def _connect(self) -> sqlite3.Connection:
            connection = super()._connect()
            connection.set_trace_callback(statements.append)
            return connection

    store = TracingStorage(path)
    service = MergeService(store, fast_verifier(), FakeClock(T0),
                           secret_key="a test secret key of the host",
                           links={"password_reset": "https://ent.example/mdp/{token}",
                                  "email_verification": "https://ent.example/courriel/{token}"})
    first = service.issue_account(SCHOOL, "Claire Robert", [child(1)])
    second = service.issue_account(SCHOOL, "Claire Robert", [child(2)])
    third = service.issue_account(SCHOOL, "Marc Robert", [child(3)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    other = service.activate(third.login, third.provisional_password, STRONG)
    service.authenticate(first.login, STRONG)
    with pytest.raises(InvalidCredentials):
        service.merge(principal.id, second.login, "WRONG123")
    service.merge(principal.id, second.login, second.provisional_password, "key-1")
    service.merge(other.id, first.login, STRONG)  # moves what principal absorbed
    with pytest.raises(AccountMerged):
        service.authenticate(first.login, STRONG)
    service.split(SCHOOL, other.id)
    # The way back: an address confirmed, a password reset, a login reminder, a letter.
    mailer = CapturingMailer()
    service.request_email_change(other.id, STRONG, "claire@example.org")
    service.deliver_notices(mailer)
    service.confirm_email(mailer.sent[-1].url.rsplit("/", 1)[1])  # type: ignore[union-attr]
    service.request_password_reset("claire@example.org")
    service.request_login_reminder("claire@example.org")
    service.deliver_notices(mailer)
    reset = mailer.last(NoticeKind.PASSWORD_RESET).url
    service.reset_password(reset.rsplit("/", 1)[1], "Tournesol-Bleu-Vif-2028")  # type: ignore[union-attr]
    service.reissue_letter(SCHOOL, other.id)
    service.deliver_notices(mailer)
    service.resolve(second.account_id)
    service.children(other.id)
    service.mark_published([e.position for e in service.unpublished_events(2)])
    service.audit_trail(other.id)
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
            # Sorting is for rows already limited (the two halves of the audit trail).
            assert "TEMP B-TREE" not in step or " UNION " in sql, (sql, plan)
            if not step.startswith("SCAN "):
                continue
            bounded = ("USING INDEX outbox_unpublished" in step  # only unpublished rows
                       or "USING INDEX notices_pending" in step  # only pending notices
                       or step.startswith("SCAN (subquery")      # rows already limited
                       or (step == "SCAN audit" and "ORDER BY id DESC LIMIT" in sql))
            assert bounded, (sql, plan)


def test_a_row_the_domain_refuses_is_a_storage_error_naming_the_file(
        storage: SQLiteStorage, path: Path) -> None:
    storage.write(new(1, 2) + ChangeSet(
        link=[ChildLink("acc1", child(1), "acc1", SCHOOL.uai, False, T0)]))
    connection = raw(path)
    connection.execute("UPDATE accounts SET status = 'frozen' WHERE id = 'acc2'")
    connection.execute("UPDATE links SET linked_at = 'yesterday'")
    connection.close()
    for request, what in ((Fetch(accounts=["acc2"]), "an account"),
                          (Fetch(logins=["parent.2"]), "an account"),
                          (Fetch(links=["acc1"]), "a child link")):
        with pytest.raises(StorageError, match=what) as raised:
            fetch(storage, request)
        assert raised.value.store == str(path)
    assert set(accounts(storage, 1)) == {"acc1"}


# -- migrations -----------------------------------------------------------------------------
def _old_rows(connection: sqlite3.Connection, version: int) -> None:
    """Rows as a store at *version* (1 or more) wrote them: a family with two absorbed letters."""
    connection.execute("INSERT INTO establishments (uai, name) VALUES (?, ?)",
                       (SCHOOL.uai, SCHOOL.name))
    columns = ("id, login, login_key, role, status, display_name, establishment_uai, created_at,"
               " merged_into")
    rows = [(f"acc{n}", f"parent.{n}", f"parent.{n}", "responsable", status, f"Parent {n}",
             SCHOOL.uai, T0.isoformat(), into)
            for n, status, into in ((1, "active", None), (3, "merged", "acc1"),
                                    (2, "merged", "acc1"), (4, "active", None))]
    if version >= 2:  # absorbed in the order of merged_seq, not of rowid
        connection.executemany(f"INSERT INTO accounts ({columns}, merged_seq)"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(*row, {"acc2": 1, "acc3": 2}.get(row[0])) for row in rows])
    else:  # absorbed in the order they were written
        connection.executemany(
            f"INSERT INTO accounts ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", sorted(rows))
    connection.executemany(
        "INSERT INTO credentials (account_id, password_hash, kind, expires_at) VALUES (?, ?, ?, ?)",
        [("acc1", HASH, "password", None), ("acc2", HASH, "provisional",
                                            (T0 + timedelta(days=90)).isoformat())])
    for n in (1, 2):
        connection.execute("INSERT INTO children (id, first_name, last_name, establishment_uai)"
                           " VALUES (?, ?, ?, ?)", (f"ine-{n}", f"Enfant{n}", "Robert", SCHOOL.uai))
        connection.execute(
            "INSERT INTO links (account_id, child_id, first_name, last_name, establishment_uai,"
            " origin_account_id, origin_establishment_uai, via_merge, linked_at)"
            " VALUES ('acc1', ?, ?, 'Robert', ?, ?, ?, ?, ?)",
            (f"ine-{n}", f"Enfant{n}", SCHOOL.uai, f"acc{n}", SCHOOL.uai, n - 1, T0.isoformat()))
    connection.execute("INSERT INTO throttles (key, consecutive, last_failure_at, recent)"
                       " VALUES ('merge:parent.4', 1, ?, ?)",
                       (T0.isoformat(), f'["{T0.isoformat()}"]'))
    connection.execute("INSERT INTO outbox (position, name, payload) VALUES (1, ?, ?)",
                       ("account_activated",
                        f'{{"occurred_at": "{T0.isoformat()}", "account_id": "acc1"}}'))
    connection.execute("INSERT INTO audit (at, action, outcome, actor, account_id)"
                       " VALUES (?, 'activate', 'success', 'acc1', 'acc1')", (T0.isoformat(),))


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_a_file_of_every_older_version_is_migrated_on_open_and_reads_back(
        path: Path, version: int) -> None:
    connection = raw(path)
    assert migrate(connection, path=str(path), to=version) == version
    assert connection.execute("PRAGMA user_version").fetchone()[0] == version
    if version:
        _old_rows(connection, version)
    connection.close()

    store = SQLiteStorage(path)
    merged = [account(n, status=AccountStatus.MERGED, merged_into="acc1") for n in (2, 3)]
    with store.unit_of_work() as uow:
        found = uow.fetch(Fetch(accounts=["acc1", "acc2", "acc4"], links=["acc1"],
                                absorbed=["acc1"], throttles=["merge:parent.4"]))
        if version:
            assert found.accounts["acc1"].account == account(1, status=AccountStatus.ACTIVE)
            assert found.accounts["acc1"].credential == Credential(
                "acc1", HASH, CredentialKind.PASSWORD)
            assert found.accounts["acc2"].credential == Credential(
                "acc2", HASH, CredentialKind.PROVISIONAL, T0 + timedelta(days=90))
            assert found.absorbed["acc1"] == tuple(merged)
            assert [(link.child, link.via_merge) for link in found.links["acc1"]] == [
                (child(1), False), (child(2), True)]
            assert found.throttles["merge:parent.4"] == ThrottleState(
                "merge:parent.4", 1, T0, (T0,))
            assert [e.event for e in uow.unpublished(10)] == [AccountActivated(T0, "acc1")]
            assert [r.outcome for r in uow.audit_records("acc1", 10)] == ["success"]
        else:
            assert found.accounts == {}
            uow.apply(new(1, 2, 3, 4, status=AccountStatus.ACTIVE))
            uow.apply(ChangeSet(accounts=merged))
        # What the new schema adds works on the old rows: the register finds their links.
        assert uow.linked_children_page(SCHOOL.uai, None, 10).items == (
            ("ine-1", "ine-2") if version else ())
        assert uow.register_page(SCHOOL.uai, None, 10).items == ()
        later = account(4, status=AccountStatus.MERGED, merged_into="acc1")
        uow.apply(ChangeSet(accounts=[later], sign_ins=[SignIn("acc1", T0 + timedelta(1))]))
        uow.commit()
    found = fetch(store, Fetch(accounts=["acc1"], absorbed=["acc1"]))
    assert found.absorbed["acc1"] == (*merged, later)
    assert found.accounts["acc1"].account.last_signed_in_at == T0 + timedelta(1)
    # The way back's tiers (version 4) work on the old rows: the old events are
    # looked at once for notices.
    with store.unit_of_work() as uow:
        uow.index_email("acc1", "claire@example.org")
        assert [r.account.id for r in uow.accounts_by_email("claire@example.org", 5)] == ["acc1"]
        assert uow.notice_cursor() == 0
        assert [e.position for e in uow.outbox_after(0, 10)] == ([1] if version else [])
        uow.commit()
    # Retention (version 6): an old file's last event deleted, its position is not given again.
    with store.unit_of_work() as uow:
        assert uow.delete_outbox([1]) == (1 if version else 0)
        uow.apply(ChangeSet(events=[AccountActivated(T0, "acc4")]))
        assert [e.position for e in uow.outbox_page(0, 10)] == [2 if version else 1]
        uow.commit()
    store.close()
    connection = raw(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
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
    with pytest.raises(StorageError, match="cannot be opened") as raised, store.unit_of_work():
        pass
    assert raised.value.store == str(tmp_path / "no-such-directory" / "ent.sqlite3")


def test_a_writer_held_past_the_busy_timeout_is_a_concurrent_update(path: Path) -> None:
    store = SQLiteStorage(path, busy_timeout=0.05)
    store.write(new(1))
    blocker = raw(path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ConcurrentUpdate) as raised, store.unit_of_work():
            pass
        assert raised.value.code == "concurrent_update"
        with pytest.raises(ConcurrentUpdate):
            store.write(new(2))
        assert accounts(store, 1) == {"acc1": account(1)}  # readers do not wait for writers
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.write(new(2))
    store.close()
