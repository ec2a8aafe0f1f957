"""Crash safety: a writer killed at random moments leaves a consistent file.

A child process (``sqlite_workload.py``) issues, activates, merges and
splits on one SQLite file until it is killed with SIGKILL at a random
moment; then a new writer carries on with the same file, and so on.  After
every kill the file must pass SQLite's integrity check, hold the design's
invariants, and hold every operation wholly or not at all: replaying the
outbox (written in the same transaction as each change) must give exactly
the accounts, credentials and links in the tables, and each account's
last sign-in time must be that of its last audited sign-in.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import account_merge
from account_merge import SQLiteStorage
from account_merge.domain.events import (
    AccountActivated,
    AccountIssued,
    AccountsMerged,
    MergeSplit,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32",
                                                    reason="needs SIGKILL")]

WORKLOAD = Path(__file__).with_name("sqlite_workload.py")
KILLS = 24


def start_writer(path: Path, seed: int) -> subprocess.Popen[bytes]:
    source = str(Path(account_merge.__file__).parent.parent)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(WORKLOAD), str(path), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def replay(path: Path) -> tuple[dict[str, tuple[str, str | None]], dict[str, str],
                                 dict[str, dict[str, bool]], set[str], Counter[str]]:
    """What the outbox says the tables hold.

    Accounts (status, merged into), the kind of each account's credential
    (an absorbed account keeps the one it had), links, children issued,
    event counts.
    """
    accounts: dict[str, tuple[str, str | None]] = {}
    credentials: dict[str, str] = {}
    links: dict[str, dict[str, bool]] = {}
    issued: set[str] = set()
    counts: Counter[str] = Counter()
    store = SQLiteStorage(path)
    with store.unit_of_work(write=False) as uow:
        entries = uow.unpublished(10**9)
    store.close()
    assert [e.position for e in entries] == list(range(1, len(entries) + 1))
    for entry in entries:
        event = entry.event
        counts[event.name] += 1
        if isinstance(event, AccountIssued):
            accounts[event.account_id] = ("provisional", None)
            credentials[event.account_id] = "provisional"
            links[event.account_id] = {c: False for c in event.child_ids}
            issued.update(event.child_ids)
        elif isinstance(event, AccountActivated):
            assert accounts[event.account_id] == ("provisional", None)
            accounts[event.account_id] = ("active", None)
            credentials[event.account_id] = "password"
        elif isinstance(event, AccountsMerged):
            principal, absorbed = event.principal_id, event.absorbed_id
            assert accounts[principal] == ("active", None)
            assert accounts[absorbed][0] != "merged"
            accounts[absorbed] = ("merged", principal)
            for other, (status, into) in list(accounts.items()):
                if into == absorbed:
                    accounts[other] = (status, principal)
            moved = [c for c in links[absorbed] if c not in links[principal]]
            assert sorted(moved) == sorted(event.moved_child_ids)
            links[principal].update(dict.fromkeys(moved, True))
            links[absorbed] = {}
        elif isinstance(event, MergeSplit):
            for c in event.moved_child_ids:
                assert links[event.principal_id].pop(c) is True
            accounts[event.new_account_id] = ("provisional", None)
            credentials[event.new_account_id] = "provisional"
            links[event.new_account_id] = dict.fromkeys(event.moved_child_ids, False)
    return accounts, credentials, links, issued, counts


def check_file(path: Path) -> int:
    """Assert the file is sound and every operation whole; return the number of events."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = {row[0]: (row[1], row[2]) for row in connection.execute(
            "SELECT id, status, merged_into FROM accounts")}
        credentials = dict(connection.execute("SELECT account_id, kind FROM credentials"))
        linked: dict[str, dict[str, bool]] = {}
        for account_id, child_id, via_merge in connection.execute(
                "SELECT account_id, child_id, via_merge FROM links"):
            linked.setdefault(account_id, {})[child_id] = bool(via_merge)
        audited = Counter(action for (action,) in connection.execute(
            "SELECT action FROM audit WHERE outcome = 'success'"))
        signed_in = dict(connection.execute(
            "SELECT id, last_signed_in_at FROM accounts WHERE last_signed_in_at IS NOT NULL"))
        sign_ins_audited = dict(connection.execute(  # the last one of each account
            "SELECT account_id, at FROM audit WHERE outcome = 'success'"
            " AND action IN ('activate', 'authenticate') ORDER BY id"))
    finally:
        connection.close()

    # The design's invariants, on the tables alone.
    live = {a for a, (status, _) in stored.items() if status != "merged"}
    for account_id, (status, into) in stored.items():
        if status == "merged":
            assert into in live, f"{account_id} is merged into {into}, not a live account"
            assert not linked.get(account_id), f"merged {account_id} keeps children"
        else:
            assert into is None
            expected = "provisional" if status == "provisional" else "password"
            assert credentials.get(account_id) == expected, account_id
        # An absorbed account keeps its credential, so that its owner can be told
        # where it went (account_merged).
        assert account_id in credentials, f"{account_id} lost its credential"

    # Every operation wholly there or wholly absent: the outbox replays to the tables.
    accounts, kinds, links, issued, counts = replay(path)
    assert stored == accounts
    assert credentials == kinds
    assert {a: c for a, c in linked.items() if c} == {a: c for a, c in links.items() if c}
    # A sign-in's time and its audit record are written together: the time
    # stored is that of the account's last audited activation or sign-in.
    assert signed_in == sign_ins_audited
    held = {c for account_id in live for c in linked.get(account_id, {})}
    assert issued <= held, f"children lost: {issued - held}"
    del audited["authenticate"]  # a sign-in writes no event: checked above
    assert audited == Counter({"issue": counts["account_issued"],
                               "activate": counts["account_activated"],
                               "merge": counts["accounts_merged"],
                               "split": counts["merge_split"]})
    return sum(counts.values())


def test_a_writer_killed_at_random_moments_never_leaves_half_an_operation(
        tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    rng = random.Random(20260901)
    events = 0
    for round_ in range(KILLS):
        writer = start_writer(path, round_)
        assert writer.stdout is not None and writer.stderr is not None
        ready = writer.stdout.readline()
        assert ready == b"ready\n", writer.stderr.read().decode()
        time.sleep(rng.uniform(0.02, 0.6))  # let it run, then kill it wherever it is
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL, writer.stderr.read().decode()
        writer.stdout.close()
        writer.stderr.close()
        now = check_file(path)
        assert now >= events  # nothing committed is ever lost
        events = now
    assert events > KILLS * 4, "the writers did too little work to test anything"
