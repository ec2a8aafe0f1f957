"""Secrets never leak (rule I6).

A property test generates passwords (NUL, newlines, lone surrogates,
non-ASCII...) and runs every flow that takes a password, each success and
each failure.  The password must then appear nowhere: not in the logs at
DEBUG, not in the ``repr`` or ``str`` of anything returned or raised (with
the whole exception chain), not in events, audit records or stored rows,
and, for SQLite, not in the bytes of the file and its WAL.  The same holds
for the provisional passwords the library generates, outside the letter
that carries them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from account_merge import Child, InMemoryStorage, MergeService, Secret, SQLiteStorage
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.domain.validation import escape_for_log
from account_merge.exceptions import AccountMergeError
from account_merge.ports import Storage
from account_merge.testing import CountingVerifier, FakeClock, make_establishment
from security_kit import InstrumentedStorage, snapshot

SCHOOL = make_establishment(860001, "Collège Jean Moulin")
UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class AnyPassword:
    """A policy that accepts everything: the property test's passwords all get stored."""

    def check(self, password: str, *, login: str, context: Sequence[str] = ()) -> None:
        pass


def _texts(value: object, seen: set[int] | None = None) -> Iterator[str]:
    """``repr`` and ``str`` of a value, of an exception's arguments and of its whole chain."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    yield repr(value)
    yield str(value)
    if isinstance(value, BaseException):
        for arg in value.args:
            yield from _texts(arg, seen)
        yield from _texts(vars(value), seen)
        for linked in (value.__cause__, value.__context__):
            if linked is not None:
                yield from _texts(linked, seen)


def _sqlite_contents(path: str) -> tuple[list[str], list[bytes]]:
    """Every row of every table, and the raw bytes of the file, its WAL and shared memory."""
    rows: list[str] = []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"accounts", "credentials", "audit", "outbox", "throttles"} <= set(tables)
        for table in tables:
            rows.extend(repr(row) for row in connection.execute(f"SELECT * FROM {table}"))
    finally:
        connection.close()
    blobs = [Path(path + suffix).read_bytes() for suffix in ("", "-wal", "-shm")
             if Path(path + suffix).exists()]
    return rows, blobs


def _sqlalchemy_rows(storage: object) -> list[str]:
    """Every row of every table of a SQLAlchemyStorage (nothing for another store)."""
    try:
        from account_merge.storage.sqlalchemy import SQLAlchemyStorage
    except ImportError:  # the extra is not installed
        return []
    if not isinstance(storage, SQLAlchemyStorage):
        return []
    engine = storage._bind_engine()
    with engine.connect() as connection:
        return [repr(tuple(row)) for table in storage.metadata.sorted_tables
                for row in connection.execute(table.select())]


class Exposure:
    """Everything a password could leak into, gathered during one example."""

    def __init__(self, storage: InstrumentedStorage, caplog: pytest.LogCaptureFixture) -> None:
        self.storage = storage
        self.caplog = caplog
        self.texts: list[str] = []

    def call(self, action: Callable[[], object], expect: str | set[str]) -> Any:
        """Run an action; keep what it returned or raised; check its outcome."""
        try:
            result = action()
        except AccountMergeError as error:
            self.texts.extend(_texts(error))
            wanted = {expect} if isinstance(expect, str) else expect
            assert error.code in wanted, error
            return None
        self.texts.extend(_texts(result))
        assert expect == "ok" or (isinstance(expect, set) and "ok" in expect), expect
        return result

    def gather(self, service: MergeService) -> tuple[list[str], list[bytes]]:
        texts = list(self.texts)
        for record in self.caplog.records:
            texts.append(record.getMessage())
            texts.append(repr(record.args))
            if record.exc_info:
                texts.extend(_texts(record.exc_info[1]))
        texts.append(repr(service.unpublished_events(10**6)))
        texts.extend(repr(e.event.to_payload()) for e in service.unpublished_events(10**6))
        texts.append(repr(service.audit_trail(limit=10**6)))
        texts.append(repr(snapshot(self.storage)))
        blobs: list[bytes] = []
        inner = self.storage.inner
        if isinstance(inner, InMemoryStorage):  # every table, as held
            texts.append(repr(vars(inner._tables)))
        elif isinstance(inner, SQLiteStorage):  # every row, and the raw bytes
            rows, blobs = _sqlite_contents(inner.path)
            texts.extend(rows)
        else:
            texts.extend(_sqlalchemy_rows(inner))
        return texts, blobs


def assert_nowhere(secret: str, texts: list[str], blobs: list[bytes]) -> None:
    encoded = {secret.encode("utf-8", "surrogatepass"),
               json.dumps(secret).strip('"').encode("ascii"),
               json.dumps(secret, ensure_ascii=False).strip('"').encode("utf-8",
                                                                        "surrogatepass")}
    forms = {secret, repr(secret).strip("'\""), escape_for_log(secret, 10**4)}
    for text in texts:
        for form in forms:
            assert form not in text, f"the secret shows in: {text[:300]!r}"
    for blob in blobs:
        for form_bytes in encoded:
            assert form_bytes not in blob, "the secret shows in the raw bytes of the store"


MARKERS = st.text("qxjzwkv", min_size=8, max_size=8).map(lambda m: f"§{m}¤")
ODD = st.sampled_from(["\x00", "\n", "\r\n", "\ud800", "\u2028", "é", "𝔘", "\t", " ", "\\"])
PARTS = st.lists(st.one_of(ODD, st.text(max_size=5)), max_size=5).map("".join)
PASSWORDS = st.builds(lambda a, marker, b: a + marker + b, PARTS, MARKERS, PARTS)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(password=PASSWORDS)
def test_a_password_shows_nowhere_whatever_the_flow(
        make_storage: Callable[[], Storage], caplog: pytest.LogCaptureFixture,
        password: str) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="account_merge")
    storage = InstrumentedStorage(make_storage())
    clock = FakeClock()
    service = MergeService(storage, CountingVerifier(), clock, password_policy=AnyPassword())
    strict = MergeService(storage, CountingVerifier(), clock)  # the CNIL policy
    touchy = MergeService(storage, CountingVerifier(), clock, password_policy=AnyPassword(),
                          throttle=ThrottlePolicy(backoff_after=1))
    seen = Exposure(storage, caplog)
    run = seen.call
    a, b, c, d = (service.issue_account(SCHOOL, f"Parent Numéro {n}",
                                        [Child(f"ine-{n}", "Enfant", "Robert", SCHOOL.uai)])
                  for n in range(4))
    other = "Autre-Mot-de-passe-2027"

    principal = run(lambda: service.activate(a.login, a.provisional_password, Secret(password)),
                    "ok")
    run(lambda: service.authenticate(a.login, password), "ok")
    run(lambda: service.authenticate(a.login, "¤" + password), "invalid_credentials")
    run(lambda: service.authenticate("nobody.here", password), "invalid_credentials")
    run(lambda: service.authenticate(b.login, password), "invalid_credentials")
    run(lambda: service.activate(c.login, password, other), "invalid_credentials")
    run(lambda: service.activate(a.login, password, password), {"password_policy",
                                                                "invalid_credentials"})
    run(lambda: service.merge(principal.id, c.login, password), "invalid_credentials")
    run(lambda: service.merge(principal.id, "nobody.here", Secret(password)),
        "invalid_credentials")
    run(lambda: service.merge(principal.id, c.login, (password * 1025)[:1025]), "invalid_input")
    if run(lambda: strict.activate(b.login, b.provisional_password, password),
           {"ok", "password_policy"}) is None:
        run(lambda: service.activate(b.login, b.provisional_password, password), "ok")
    run(lambda: service.merge(principal.id, b.login, password), "ok")
    run(lambda: service.change_password(principal.id, "¤" + password, other),
        "invalid_credentials")
    run(lambda: service.change_password(principal.id, password, other), "ok")
    run(lambda: service.change_password(principal.id, other, password), "ok")
    run(lambda: service.merge(principal.id, c.login, c.provisional_password, "form-1"), "ok")
    run(lambda: service.merge(principal.id, c.login, c.provisional_password, "form-1"), "ok")
    run(lambda: service.split(SCHOOL, principal.id), "ok")
    for _ in range(2):
        run(lambda: touchy.authenticate(a.login, "¤" + password),
            {"invalid_credentials", "too_many_attempts"})
    run(lambda: touchy.merge(principal.id, d.login, password),
        {"invalid_credentials", "too_many_attempts"})

    texts, blobs = seen.gather(service)
    assert caplog.records, "nothing was logged: the capture does not work"
    assert_nowhere(password, texts, blobs)
    for letter in (a, b, c, d):  # provisional passwords live on their letter only
        assert_nowhere(letter.provisional_password.reveal(), texts, blobs)


@pytest.mark.parametrize("login", ["new\nline", "car\rriage", "esc\x1b[31mape", "nul\x00",
                                   "sep\u2028arator", "para\u2029graph", "bidi\u202eoverride",
                                   "next\x85line", "zero\u200bwidth"])
def test_a_login_with_control_characters_is_refused_and_never_logged_raw(
        instrumented: InstrumentedStorage, caplog: pytest.LogCaptureFixture, login: str) -> None:
    caplog.set_level(logging.DEBUG, logger="account_merge")
    service = MergeService(instrumented, CountingVerifier(), FakeClock())
    letter = service.issue_account(SCHOOL, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", SCHOOL.uai)])
    principal = service.activate(letter.login, letter.provisional_password,
                                 "Mot-de-passe-Sûr-2026")
    for call in (lambda: service.merge(principal.id, login, "x"),
                 lambda: service.activate(login, "x", "Mot-de-passe-Sûr-2027"),
                 lambda: service.authenticate(login, "x")):
        with pytest.raises(AccountMergeError) as raised:
            call()
        assert raised.value.code == "invalid_input"
        assert login not in str(raised.value)
    for record in caplog.records:
        message = record.getMessage()
        assert not any(unicodedata.category(ch) in UNSAFE for ch in message), message
    assert all(login not in repr(r) for r in service.audit_trail(limit=1000))


def test_logged_and_audited_logins_have_control_characters_escaped(
        instrumented: InstrumentedStorage, caplog: pytest.LogCaptureFixture) -> None:
    """What reaches a log line or the audit trail is escaped: one line, nothing hidden."""
    caplog.set_level(logging.DEBUG, logger="account_merge")
    service = MergeService(instrumented, CountingVerifier(), FakeClock())
    letter = service.issue_account(SCHOOL, "Claire Robert",
                                   [Child("ine-1", "Dylan", "Robert", SCHOOL.uai)])
    principal = service.activate(letter.login, letter.provisional_password,
                                 "Mot-de-passe-Sûr-2026")
    with pytest.raises(AccountMergeError):
        service.merge(principal.id, "evil\\nname", "x")
    with pytest.raises(AccountMergeError):
        service.authenticate("evil\\nname", "x")
    messages = [r.getMessage() for r in caplog.records]
    assert any("evil\\\\nname" in m for m in messages), messages
    assert not any("evil\\nname" in m for m in messages)
    assert [r.login for r in service.audit_trail(limit=1000)][-2:] == ["evil\\\\nname"] * 2
    assert escape_for_log("a\nb\r\x00\x1b\u2028\u202e\ud800\\") == (
        "a\\nb\\r\\x00\\x1b\\u2028\\u202e\\ud800\\\\")
    assert escape_for_log("x" * 100) == "x" * 64 + "…"
