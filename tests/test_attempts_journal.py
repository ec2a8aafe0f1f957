"""The attempts journal of a SQLite database (account_merge.storage.attempts).

Where it is and how every store of a database agrees on it; what it
refuses; the counters it adopts from an earlier release; the order of the
audit trail across both files; a journal that cannot commit; in-memory
databases.  Through SQLAlchemyStorage, whose two modes (engine and
session) must find the same counters; the Django store's own tests are in
tests/django.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, InvalidInput, StorageError
from account_merge.ports import ChangeSet, Fetch
from account_merge.storage.attempts import (
    JournalRecord,
    JournalTransaction,
    file_journal,
    journal_path,
    merge_trails,
    split_attempts,
)
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from sqlalchemy_kit import SCHOOL, STRONG, T0, activated, child, make_service

KEY = "merge:claire.robert"


def counted(storage: SQLAlchemyStorage, times: int = 1, key: str = KEY) -> None:
    """Count *times* failures under *key*, each in a unit of work of its own."""
    for _ in range(times):
        with storage.unit_of_work() as uow:
            uow.fetch(Fetch(count=[key], at=T0))
            uow.commit()


def count_of(storage: SQLAlchemyStorage, key: str = KEY) -> int:
    with storage.unit_of_work(write=False) as uow:
        return uow.fetch(Fetch(throttles=[key])).throttles[key].consecutive


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "ent.sqlite3"


@pytest.fixture
def engines() -> Iterator[list[sqlalchemy.Engine]]:
    made: list[sqlalchemy.Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def store(engines: list[sqlalchemy.Engine], database: Path, **options: Any) -> SQLAlchemyStorage:
    """A store on its own engine on *database*, with its tables."""
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    engines.append(engine)
    storage = SQLAlchemyStorage(engine, **options)
    storage.create_schema()
    return storage


# -- where it is ---------------------------------------------------------------------------
def test_the_journal_is_beside_the_database_and_readable_by_its_owner_only(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    counted(store(engines, database))
    journal = Path(f"{database}-attempts.sqlite3")
    assert journal.is_file()
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert journal_path(database) == str(journal.resolve())


def test_a_template_names_the_journal_from_the_database(tmp_path: Path) -> None:
    elsewhere = tmp_path / "journaux"
    assert journal_path(tmp_path / "ent.sqlite3", f"{elsewhere}/{{name}}.attempts") == \
        str(elsewhere / "ent.sqlite3.attempts")
    with pytest.raises(InvalidInput, match="database"):
        SQLAlchemyStorage.from_url("sqlite://", attempts_journal="{base}-attempts.sqlite3")
    with pytest.raises(InvalidInput):
        SQLAlchemyStorage.from_url("sqlite://", attempts_journal="{database")


def test_both_modes_and_every_engine_on_the_file_count_in_one_place(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    """Where the counters are is the database's, not the mode's: they always agree."""
    first, second = store(engines, database), store(engines, database)
    counted(first, 2)
    counted(second, 1)
    with Session(engines[0]) as session:
        hosted = SQLAlchemyStorage(session=session)
        counted(hosted, 1)
        session.rollback()  # the host rolls back: the count stays
    assert count_of(first) == count_of(second) == 4


def test_a_store_told_to_keep_the_attempts_elsewhere_is_refused(
        engines: list[sqlalchemy.Engine], database: Path, tmp_path: Path) -> None:
    """A disagreement is loud, whichever store comes first."""
    default, elsewhere = store(engines, database), store(
        engines, database, attempts_journal=str(tmp_path / "autre-{name}"))
    counted(default)
    with pytest.raises(StorageError, match="give every store of this database the same"):
        counted(elsewhere)

    other = tmp_path / "other.sqlite3"
    custom, plain = store(engines, other, attempts_journal=str(tmp_path / "j-{name}")), \
        store(engines, other)
    counted(custom)
    with pytest.raises(StorageError, match=r"signpost.*kept in .*j-other\.sqlite3"):
        counted(plain)
    third = store(engines, other, attempts_journal=str(tmp_path / "k-{name}"))
    with pytest.raises(StorageError, match="says the failed attempts"):
        counted(third)
    again = store(engines, other, attempts_journal=str(tmp_path / "j-{name}"))
    counted(again)
    assert count_of(custom) == 2


def test_a_journal_of_another_database_is_refused(
        engines: list[sqlalchemy.Engine], tmp_path: Path) -> None:
    shared = str(tmp_path / "one-journal.sqlite3")
    counted(store(engines, tmp_path / "a.sqlite3", attempts_journal=shared))
    with pytest.raises(StorageError, match="give each database a journal of its own"):
        counted(store(engines, tmp_path / "b.sqlite3", attempts_journal=shared))


def test_a_moved_database_takes_its_journal_along(
        engines: list[sqlalchemy.Engine], tmp_path: Path) -> None:
    """A restore into another folder: the journal follows the database it served."""
    before = tmp_path / "avant"
    before.mkdir()
    first = store(engines, before / "ent.sqlite3")
    counted(first, 3)
    engines.pop().dispose()
    first.close()
    after = tmp_path / "apres"
    shutil.move(before, after)
    assert count_of(store(engines, after / "ent.sqlite3")) == 3


def test_a_file_that_is_not_a_journal_is_refused_naming_it(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    storage = store(engines, database)
    Path(f"{database}-attempts.sqlite3").write_bytes(b"not a journal at all " * 200)
    with pytest.raises(StorageError) as raised:
        counted(storage)
    assert raised.value.store.endswith("ent.sqlite3-attempts.sqlite3")


def test_two_prefixes_on_one_database_keep_their_counters_apart(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    first, second = store(engines, database), store(engines, database, prefix="autre_")
    counted(first, 2)
    assert count_of(second) == 0
    second.forget_attempts()
    assert count_of(first) == 2
    first.forget_attempts()
    assert count_of(first) == 0


# -- in memory -----------------------------------------------------------------------------
def test_an_in_memory_database_has_an_in_memory_journal_of_its_own(
        engines: list[sqlalchemy.Engine], tmp_path: Path) -> None:
    def memory_store() -> SQLAlchemyStorage:
        engine = sqlalchemy.create_engine("sqlite://", poolclass=StaticPool,
                                          connect_args={"check_same_thread": False})
        engines.append(engine)
        storage = SQLAlchemyStorage(engine)
        storage.create_schema()
        return storage

    one, other = memory_store(), memory_store()
    counted(one, 2)
    assert count_of(SQLAlchemyStorage(engines[0])) == 2  # same engine, same database
    assert count_of(other) == 0
    assert list(tmp_path.iterdir()) == []


# -- upgrading -----------------------------------------------------------------------------
def test_counters_kept_in_the_database_by_an_earlier_release_are_adopted_once(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    storage = store(engines, database)
    throttles = storage.metadata.tables["account_merge_throttles"]
    with engines[0].begin() as conn:
        conn.execute(throttles.insert(), [
            {"key": KEY, "consecutive": 4, "last_failure_at": T0,
             "recent": [T0.isoformat(timespec="microseconds")] * 4},
            {"key": "merge:at.rest", "consecutive": 0, "last_failure_at": None, "recent": []}])
    assert count_of(storage) == 4
    counted(storage)
    with engines[0].begin() as conn:  # an old process writing there is not read again
        conn.execute(throttles.update().values(consecutive=40))
    assert count_of(store(engines, database)) == 5


# -- the audit trail -------------------------------------------------------------------------
def record(outcome: str, n: int) -> AuditRecord:
    return AuditRecord(T0, AuditAction.MERGE, outcome, actor=f"acc{n}")


def test_the_audit_trail_comes_back_in_the_order_written_across_both_files(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    storage = store(engines, database)
    written = [record("success", 1), record("invalid_credentials", 2),
               record("invalid_credentials", 3), record("success", 4),
               record("too_many_attempts", 5), record("success", 6)]
    for one in written[:3]:
        storage.write(ChangeSet(audit=[one]))
    storage.write(ChangeSet(audit=written[3:]))  # one change set, both files
    with storage.unit_of_work(write=False) as uow:
        assert uow.audit_records(None, 100) == written
        assert uow.audit_records(None, 4) == written[2:]
        assert uow.audit_records("acc5", 100) == [written[4]]
    assert Path(f"{database}-attempts.sqlite3").is_file()


def test_merging_trails_keeps_each_trails_order_and_the_last_records() -> None:
    main = [(1, record("success", 1)), (5, record("success", 5))]
    journal = [JournalRecord(0, 1, record("invalid_credentials", 0)),
               JournalRecord(1, 2, record("invalid_credentials", 2)),
               JournalRecord(1, 3, record("invalid_credentials", 3)),
               JournalRecord(7, 4, record("invalid_credentials", 7))]
    assert [r.actor for r in merge_trails(main, journal, 10)] == \
        ["acc0", "acc1", "acc2", "acc3", "acc5", "acc7"]
    assert [r.actor for r in merge_trails(main, journal, 2)] == ["acc5", "acc7"]
    assert merge_trails(main, journal, 0) == []


def test_a_change_set_splits_into_the_databases_part_and_the_journals() -> None:
    changes = ChangeSet(throttles=[ThrottleState(KEY)],
                        audit=[record("success", 1), record("invalid_credentials", 2)])
    rest, attempts = split_attempts(changes)
    assert rest == ChangeSet(audit=[record("success", 1)])
    assert attempts.throttles == (ThrottleState(KEY),)
    assert attempts.placed(before=9, after=10, kept=1) == [(10, record("invalid_credentials", 2))]
    assert split_attempts(ChangeSet(audit=[record("success", 1)]))[1].failures == ()


# -- the two files' commits ----------------------------------------------------------------
def test_a_journal_that_cannot_commit_leaves_the_database_unchanged(
        engines: list[sqlalchemy.Engine], database: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal commits first: if it cannot, the merge does not happen either."""
    storage = store(engines, database)
    service = make_service(storage)
    principal = activated(service, "Claire Robert", [child(1)])
    letter = service.issue_account(SCHOOL, "Claire Robert", [child(2)])
    real = JournalTransaction.commit
    commits: list[int] = []

    def failing_second(self: JournalTransaction) -> None:
        commits.append(1)
        if len(commits) == 2:  # step 3 of the merge: the attempt given back
            raise StorageError("journal", "the disk is full")
        real(self)

    monkeypatch.setattr(JournalTransaction, "commit", failing_second)
    with pytest.raises(AccountMergeError):
        service.merge(principal.id, letter.login, letter.provisional_password)
    monkeypatch.setattr(JournalTransaction, "commit", real)
    assert service.children(principal.id) == (child(1),)
    assert service.merge(principal.id, letter.login,
                         letter.provisional_password).children == (child(1), child(2))


def test_no_password_reaches_the_journal(engines: list[sqlalchemy.Engine],
                                         database: Path) -> None:
    storage = store(engines, database)
    service = make_service(storage)
    principal = activated(service, "Claire Robert", [child(1)])
    secret = "Secret-Garden-4711"
    for _ in range(3):
        with pytest.raises(AccountMergeError):
            service.authenticate(principal.login, secret)
    storage.close()
    journal = Path(f"{database}-attempts.sqlite3")
    for path in (journal, Path(f"{journal}-wal")):
        if path.exists():
            assert secret.encode() not in path.read_bytes()
    assert service.authenticate(principal.login, STRONG).id == principal.id
    assert os.path.getsize(journal) > 0


def test_one_thread_cannot_hold_two_units_of_work_on_the_journal(
        engines: list[sqlalchemy.Engine], database: Path) -> None:
    storage = store(engines, database)
    counted(storage)
    journal = file_journal(database)
    outer = journal.transaction("sqlalchemy:account_merge_", write=False)
    outer.fetch(Fetch(throttles=[KEY]))
    try:
        with pytest.raises(RuntimeError, match="already open in this thread"):
            journal.transaction("sqlalchemy:account_merge_", write=False).fetch(
                Fetch(throttles=[KEY]))
    finally:
        outer.rollback()
