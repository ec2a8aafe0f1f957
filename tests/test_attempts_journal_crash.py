"""A process that dies between the attempts journal and the database.

On SQLite the failed attempts are kept in a file of their own (the
attempts journal), which a step commits first, then the database.  A
child process (``attempts_workload.py``) dies at the worst moments:

- right after the journal's commit of a merge's last step, before the
  database's: the merge is lost, as a host's rollback would lose it, and
  nothing else breaks: the children are where they were, the letter can
  still be merged, the attempt stays given back;
- right after the count of a wrong password, before its audit record:
  the count is kept (it was committed before the password was checked),
  the record of that one failure is lost, and no answer was given;
- at random moments (SIGKILL) while it answers wrong sign-ins and merges
  families: both files stay sound, the invariants hold, and every answer
  the attacker got was counted and audited; at most the attempt in flight
  is counted without its audit record.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from account_merge import Child, MergeService
from account_merge.domain.audit import AuditAction
from account_merge.domain.logins import login_key
from account_merge.domain.throttle import merge_key, principal_key, signin_key
from account_merge.ports import Fetch
from account_merge.storage.sqlalchemy import SQLAlchemyStorage
from account_merge.testing import fast_verifier, make_establishment

WORKLOAD = Path(__file__).with_name("attempts_workload.py")
SCHOOL = make_establishment(860001, "Collège Jean Moulin")
STRONG = "Correct-Horse-Battery-9"
CRASHED = 17
KILLS = 8


def start(database: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKLOAD), str(database), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "ent.sqlite3"


@pytest.fixture
def opened(database: Path) -> Iterator[tuple[SQLAlchemyStorage, MergeService]]:
    """The store as a new process finds it, on a new engine."""
    engine = sqlalchemy.create_engine(f"sqlite:///{database}", connect_args={"timeout": 30})
    storage = SQLAlchemyStorage(engine)
    storage.create_schema()
    yield storage, MergeService(storage, fast_verifier())
    storage.close()
    engine.dispose()


def sound(*paths: Path) -> None:
    """SQLite's integrity check passes on each file."""
    for path in paths:
        connection = sqlite3.connect(path)
        try:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",), path
        finally:
            connection.close()


def journal_of(database: Path) -> Path:
    return Path(f"{database}-attempts.sqlite3")


def counters(storage: SQLAlchemyStorage, *keys: str) -> list[int]:
    with storage.unit_of_work(write=False) as uow:
        found = uow.fetch(Fetch(throttles=keys)).throttles
    return [found[key].consecutive for key in keys]


def test_dying_after_the_journal_commits_a_merge_loses_the_merge_and_nothing_else(
        database: Path, opened: tuple[SQLAlchemyStorage, MergeService]) -> None:
    storage, service = opened
    first = service.issue_account(SCHOOL, "Claire Robert",
                                  [Child("ine-1", "Dylan", "Robert", SCHOOL.uai)])
    letter = service.issue_account(SCHOOL, "Claire Robert",
                                   [Child("ine-2", "Florian", "Robert", SCHOOL.uai)])
    principal = service.activate(first.login, first.provisional_password, STRONG)
    events_before = len(service.unpublished_events(1000))

    child = start(database, "merge", principal.id, letter.login)
    _, errors = child.communicate(letter.provisional_password.reveal() + "\n", timeout=120)
    assert child.returncode == CRASHED, errors[-2000:]

    sound(database, journal_of(database))
    assert [c.first_name for c in service.children(principal.id)] == ["Dylan"]
    assert service.get_account(letter.account_id).status.value == "provisional"
    assert len(service.unpublished_events(1000)) == events_before
    assert [r for r in service.audit_trail(None, 1000) if r.action is AuditAction.MERGE] == []
    # Counted in step 1, given back in step 3: the journal holds the attempt returned.
    assert counters(storage, merge_key(login_key(letter.login)),
                    principal_key(principal.id)) == [0, 0]
    receipt = service.merge(principal.id, letter.login, letter.provisional_password)
    assert [c.first_name for c in receipt.children] == ["Dylan", "Florian"]


def test_dying_after_counting_a_wrong_password_keeps_the_count_and_gives_no_answer(
        database: Path, opened: tuple[SQLAlchemyStorage, MergeService]) -> None:
    storage, service = opened
    letter = service.issue_account(SCHOOL, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", SCHOOL.uai)])
    service.activate(letter.login, letter.provisional_password, STRONG)

    child = start(database, "failure", letter.login)
    output, errors = child.communicate(timeout=120)
    assert child.returncode == CRASHED, errors[-2000:]

    assert [e["event"] for e in events(output)] == ["ready"]  # no answer was given
    sound(database, journal_of(database))
    assert counters(storage, signin_key(login_key(letter.login), None)) == [1]
    # Lost: the audit record of that one failure, whose answer never left the process.
    assert [r for r in service.audit_trail(None, 1000)
            if r.action is AuditAction.AUTHENTICATE] == []


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_killed_at_random_every_answer_was_counted_and_audited(
        database: Path, opened: tuple[SQLAlchemyStorage, MergeService]) -> None:
    storage, service = opened
    target = service.issue_account(SCHOOL, "Cible Robert",
                                   [Child("ine-cible", "Léa", "Robert", SCHOOL.uai)])
    service.activate(target.login, target.provisional_password, STRONG)
    key = signin_key(login_key(target.login), None)
    rng = random.Random(20260901)
    answered = merged = 0
    principals: list[str] = []
    for kill in range(KILLS):
        child = start(database, "hammer", target.login, str(kill))
        assert child.stdout is not None
        assert json.loads(child.stdout.readline())["event"] == "ready"
        time.sleep(rng.uniform(0.2, 1.2))
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(timeout=60)
        done = events(output)
        answered += sum(1 for e in done if e["event"] == "answered")
        merged += sum(1 for e in done if e["event"] == "merged")
        principals += [e["principal"] for e in done if e["event"] == "merged"]

        sound(database, journal_of(database))
        (count,) = counters(storage, key)
        audited = sum(1 for r in service.audit_trail(None, 10**6)
                      if r.action is AuditAction.AUTHENTICATE and r.login == target.login
                      and r.outcome == "invalid_credentials")
        # What the attacker learnt was counted, then audited; a kill loses at most the
        # audit record of the attempt in flight, never its count.
        assert answered <= audited <= count <= audited + kill + 1
        for principal in principals:  # a merge answered is a merge made
            assert len(service.children(principal)) == 2
        no_child_lost(database)
    assert answered > 0 and merged > 0


def no_child_lost(database: Path) -> None:
    """Every child is linked to a live account; an absorbed account is one hop from one."""
    connection = sqlite3.connect(database)
    try:
        orphans = connection.execute(
            "SELECT DISTINCT l.child_id FROM account_merge_links AS l WHERE NOT EXISTS ("
            " SELECT 1 FROM account_merge_links AS k JOIN account_merge_accounts AS a"
            " ON a.id = k.account_id WHERE k.child_id = l.child_id AND a.status != 'merged')"
        ).fetchall()
        chains = connection.execute(
            "SELECT a.id FROM account_merge_accounts AS a JOIN account_merge_accounts AS h"
            " ON h.id = a.merged_into WHERE a.status = 'merged' AND h.status = 'merged'"
        ).fetchall()
    finally:
        connection.close()
    assert orphans == [] and chains == []

