"""SQLiteStorage: a store in one SQLite file, on the standard :mod:`sqlite3` module.

The file is opened in WAL mode with foreign keys on and a busy timeout.
Every thread gets its own connection, made at its first unit of work, so
the threads of a process can share one :class:`SQLiteStorage`; several
processes can open the same file.  A writing unit of work starts with
``BEGIN IMMEDIATE``: it takes the file's single write lock at once, so
concurrent writers wait for each other (up to the busy timeout) instead of
failing half-way, and the rows a use case reads cannot change before it
writes.  That lock is what ``Fetch(lock=True)`` and ``Fetch.count`` need
(rule 2 of :mod:`account_merge.ports.storage`): nothing more is taken.  A
read-only unit of work starts with a deferred ``BEGIN`` and reads a
consistent snapshot without blocking writers.

A :class:`~account_merge.ports.Fetch` is served by one ``SELECT`` per kind
of thing it names (accounts by login and by id together, with their
credentials), a :class:`~account_merge.ports.ChangeSet` by one
``executemany`` per part, in the change set's order; the SQL text of each
statement is built once, so that :mod:`sqlite3` reuses its prepared
statement.  The store has the optional tiers ``email_index`` and
``notices`` (:mod:`account_merge.ports.tiers`, schema version 4) and
``register`` (:mod:`account_merge.ports.register`, schema version 5),
whose passes page by external id and by child id through indexes, and
``retention`` (:mod:`account_merge.ports.retention`, schema version 6),
whose statements find what is due through indexes.

The schema's version is kept in ``PRAGMA user_version`` and the file is
marked as an account_merge store by ``PRAGMA application_id``; forward
migrations (:data:`MIGRATIONS`) run when a connection first opens an
older file.  A new file is created readable and writable by its owner
only (``0600``; SQLite gives its ``-wal`` and ``-shm`` files the
database file's mode); an existing file keeps its mode.  Rows are
translated to domain objects explicitly; datetimes are stored as ISO-8601
text with their UTC offset.  Driver errors never leave this module: a lock
held past the busy timeout becomes
:class:`~account_merge.exceptions.ConcurrentUpdate`, anything else
:class:`~account_merge.exceptions.StorageError` naming the file.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import OutboxEntry, event_from_payload
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.register import RegisterRecord
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    PSEUDONYMISED,
    Forgotten,
    ascii_lower,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    ExpectationFailed,
    InvalidInput,
    LoginTaken,
    StorageError,
)
from account_merge.ports.register import (
    Closure,
    RegisterChanges,
    RegisterFetch,
    RegisterFetched,
    RegisterPage,
)
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.ports.storage import (
    AccountRecord,
    ChangeSet,
    Fetch,
    Fetched,
    StoredReceipt,
)
from account_merge.storage.bulk import BulkAccount

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage", "migrate"]

#: ``PRAGMA application_id`` of an account_merge file ("AMRG").
APPLICATION_ID: Final = 0x414D5247

#: The forward migrations: ``MIGRATIONS[n]`` takes a file from version n to n + 1.
#: Version 0 is an empty file; each step is a sequence of SQL statements run
#: in the same transaction as the change of ``user_version``.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: the initial schema.
    (
        """CREATE TABLE establishments (
            uai TEXT PRIMARY KEY,
            name TEXT NOT NULL
        )""",
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            login TEXT NOT NULL,
            login_key TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            display_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL,
            created_at TEXT NOT NULL,
            email TEXT,
            merged_into TEXT REFERENCES accounts (id)
        )""",
        """CREATE INDEX accounts_by_merged_into ON accounts (merged_into)
            WHERE merged_into IS NOT NULL""",
        """CREATE TABLE credentials (
            account_id TEXT PRIMARY KEY REFERENCES accounts (id),
            password_hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            expires_at TEXT
        )""",
        """CREATE TABLE children (
            id TEXT PRIMARY KEY,
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL
        )""",
        # A link keeps the child as the letter that carried it named it;
        # ``seq`` gives the order in which children were linked.
        """CREATE TABLE links (
            seq INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            child_id TEXT NOT NULL REFERENCES children (id),
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            establishment_uai TEXT NOT NULL,
            origin_account_id TEXT NOT NULL,
            origin_establishment_uai TEXT NOT NULL,
            via_merge INTEGER NOT NULL,
            linked_at TEXT NOT NULL,
            UNIQUE (account_id, child_id)
        )""",
        "CREATE INDEX links_by_account ON links (account_id, seq)",
        """CREATE TABLE throttles (
            key TEXT PRIMARY KEY,
            consecutive INTEGER NOT NULL,
            last_failure_at TEXT,
            recent TEXT NOT NULL
        )""",
        """CREATE TABLE receipts (
            principal_id TEXT NOT NULL,
            key TEXT NOT NULL,
            login_key TEXT NOT NULL,
            receipt TEXT NOT NULL,
            PRIMARY KEY (principal_id, key)
        )""",
        """CREATE TABLE outbox (
            position INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            payload TEXT NOT NULL,
            published INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_unpublished ON outbox (position) WHERE published = 0",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT,
            account_id TEXT,
            login TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_by_account ON audit (account_id, id) WHERE account_id IS NOT NULL",
        "CREATE INDEX audit_by_actor ON audit (actor, id) WHERE actor IS NOT NULL",
    ),
    # 1 -> 2: remember the order in which accounts were absorbed into each
    # account, so that they are listed in that order.
    (
        "ALTER TABLE accounts ADD COLUMN merged_seq INTEGER",
        "UPDATE accounts SET merged_seq = rowid WHERE merged_into IS NOT NULL",
        "DROP INDEX accounts_by_merged_into",
        """CREATE INDEX accounts_by_merged_into ON accounts (merged_into, merged_seq)
            WHERE merged_into IS NOT NULL""",
    ),
    # 2 -> 3: the time of each account's last successful sign-in (NULL: none
    # yet, which is what every account of an older file reads as).
    (
        "ALTER TABLE accounts ADD COLUMN last_signed_in_at TEXT",
    ),
    # 3 -> 4: the way back.  Tier email_index: the key of each account's address
    # on record.  Tier notices: the delivery state of each notice, and the last
    # outbox position turned into notices (0 in an older file: every event of it
    # is looked at once; the notices of old ones are dropped when made).
    (
        """CREATE TABLE email_index (
            account_id TEXT PRIMARY KEY REFERENCES accounts (id),
            key TEXT NOT NULL
        )""",
        "CREATE INDEX email_index_by_key ON email_index (key, account_id)",
        """CREATE TABLE notices (
            id TEXT PRIMARY KEY,
            position INTEGER NOT NULL REFERENCES outbox (position) ON DELETE CASCADE,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            updated_at TEXT
        )""",
        "CREATE INDEX notices_pending ON notices (position, id) WHERE status = 'pending'",
        """CREATE TABLE notice_cursor (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            position INTEGER NOT NULL
        )""",
    ),
    # 4 -> 5: the school's register (tier ``register``): its records (the
    # children as JSON, [id, first name, last name, UAI], sorted by id), the
    # accounts it closed, and the links found by the establishment whose
    # letter gave them.
    (
        """CREATE TABLE register (
            establishment_uai TEXT NOT NULL,
            external_id TEXT NOT NULL,
            account_id TEXT NOT NULL,
            display_name TEXT NOT NULL,
            email TEXT,
            children TEXT NOT NULL,
            PRIMARY KEY (establishment_uai, external_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX register_by_account ON register (account_id)",
        """CREATE TABLE closures (
            account_id TEXT PRIMARY KEY,
            establishment_uai TEXT NOT NULL,
            closed_at TEXT NOT NULL
        )""",
        "CREATE INDEX links_by_origin ON links (origin_establishment_uai, child_id)",
    ),
    # 5 -> 6: retention.  The indexes that find what is due without a scan
    # (times compared as julianday(), whatever the offset they were written
    # with), and outbox_head: the last outbox position given, so that an
    # entry the purge deletes never gives its position again.
    (
        """CREATE TABLE outbox_head (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            last_position INTEGER NOT NULL
        )""",
        """INSERT INTO outbox_head (one, last_position)
            SELECT 1, max(position) FROM outbox HAVING max(position) IS NOT NULL""",
        """CREATE INDEX credentials_by_expiry ON credentials (julianday(expires_at), account_id)
            WHERE kind = 'provisional'""",
        """CREATE INDEX credentials_to_erase ON credentials (julianday(expires_at))
            WHERE kind = 'provisional' AND password_hash <> '!erased'""",
        """CREATE INDEX accounts_by_last_sign_in ON accounts (julianday(last_signed_in_at), id)
            WHERE status = 'active'""",
        "CREATE INDEX links_by_child ON links (child_id)",
        "CREATE INDEX audit_by_time ON audit (julianday(at), id)",
        "CREATE INDEX audit_by_login ON audit (lower(login)) WHERE login IS NOT NULL",
        "CREATE INDEX throttles_by_last_failure ON throttles (julianday(last_failure_at))",
        "CREATE INDEX notices_by_position ON notices (position)",
        "CREATE INDEX closures_by_time ON closures (julianday(closed_at), account_id)",
    ),
)

#: The schema version this code reads and writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

_CONCURRENCY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

#: What a row the domain refuses raises while it is decoded.
_DECODING_ERRORS = (AccountMergeError, ValueError, KeyError, TypeError, IndexError)


# -- driver errors ---------------------------------------------------------------
def _translate(error: sqlite3.Error, path: str, busy_timeout: float) -> AccountMergeError:
    """The library's error for a driver error on the file at *path*."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(error)
    lowered = text.lower()
    if primary in _CONCURRENCY_CODES or "database is locked" in lowered or "busy" in lowered:
        return ConcurrentUpdate(
            f"{path}: the database stayed locked by another writer for more than "
            f"{busy_timeout:g} s; try again"
        )
    if (primary in _CORRUPTION_CODES or "not a database" in lowered
            or "malformed" in lowered):
        return StorageError(
            path, f"is not a usable account_merge database: the file is corrupt or is "
                  f"not an SQLite database ({text})"
        )
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StorageError(path, f"cannot be opened ({text})")
    return StorageError(path, f"{type(error).__name__}: {text}")


@contextmanager
def _translating(path: str, busy_timeout: float) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as error:
        raise _translate(error, path, busy_timeout) from error


# -- migrations -------------------------------------------------------------------
def _pragma_int(connection: sqlite3.Connection, name: str) -> int:
    row = connection.execute(f"PRAGMA {name}").fetchone()
    return int(row[0])


def _refuse_unknown(connection: sqlite3.Connection, path: str) -> None:
    """Raise StorageError unless the file is empty or an account_merge store we can read."""
    application_id = _pragma_int(connection, "application_id")
    version = _pragma_int(connection, "user_version")
    if application_id != APPLICATION_ID:
        has_objects = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id != 0 or version != 0 or has_objects:
            raise StorageError(path, "is an SQLite database of another application, "
                                     "not an account_merge store")
    if version > SCHEMA_VERSION:
        raise StorageError(path, f"has schema version {version}, newer than the "
                                 f"{SCHEMA_VERSION} this account_merge knows; upgrade "
                                 f"account_merge to open it")


def migrate(connection: sqlite3.Connection, *, path: str = "", to: int = SCHEMA_VERSION) -> int:
    """Bring the file behind *connection* to schema version *to*; return its version.

    *connection* is in autocommit mode (``isolation_level=None``) with no
    transaction open.  The steps run in one ``BEGIN IMMEDIATE`` transaction,
    so concurrent openers of a new file wait for each other and a step is
    wholly applied or not at all.  A file of another application, or
    written by a newer account_merge, raises
    :class:`~account_merge.exceptions.StorageError` (naming *path*) and is
    left untouched.  A file already past *to* is left as it is.
    """
    if not 0 <= to <= SCHEMA_VERSION:
        raise InvalidInput("to", f"must be between 0 and {SCHEMA_VERSION}")
    if (_pragma_int(connection, "application_id") == APPLICATION_ID
            and _pragma_int(connection, "user_version") == to):
        return to
    connection.execute("BEGIN IMMEDIATE")
    try:
        _refuse_unknown(connection, path)
        version = _pragma_int(connection, "user_version")
        for step in MIGRATIONS[version:to]:
            for statement in step:
                connection.execute(statement)
        version = max(version, to)
        connection.execute(f"PRAGMA user_version = {version:d}")
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return version


# -- rows <-> domain --------------------------------------------------------------
# Building a domain object validates every field (a row the domain refuses
# is a StorageError), which costs more than reading the row.  The readers
# below keep the objects of the last rows they decoded, keyed by the row
# itself: the same row (a step reads under lock the accounts it proved a
# moment before) gives the same frozen object without decoding it again; a
# changed row is another key.  A few megabytes at most.
_DECODED_ROWS: Final = 1024
_ROLES: Final = {role.value: role for role in Role}
_STATUSES: Final = {status.value: status for status in AccountStatus}
_KINDS: Final = {kind.value: kind for kind in CredentialKind}
_ACTIONS: Final = {action.value: action for action in AuditAction}
_MERGED: Final = AccountStatus.MERGED.value


def _optional_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_optional_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_ACCOUNT_COLUMNS = ("id, login, role, status, display_name, establishment_uai, created_at, "
                    "email, merged_into, last_signed_in_at")


def _account_from_row(row: Sequence[Any]) -> Account:
    return Account(
        id=row[0], login=row[1], role=_ROLES[row[2]], status=_STATUSES[row[3]],
        display_name=row[4], establishment_uai=row[5],
        created_at=datetime.fromisoformat(row[6]), email=row[7], merged_into=row[8],
        last_signed_in_at=_parse_optional_time(row[9]),
    )


def _account_values(account: Account) -> tuple[Any, ...]:
    """The account's columns, in the order of :data:`_ACCOUNT_COLUMNS`."""
    return (account.id, account.login, account.role.value, account.status.value,
            account.display_name, account.establishment_uai, account.created_at.isoformat(),
            account.email, account.merged_into, _optional_time(account.last_signed_in_at))


def _credential_values(credential: Credential) -> tuple[Any, ...]:
    return (credential.account_id, credential.password_hash, credential.kind.value,
            _optional_time(credential.expires_at))


#: An account and its credential (NULLs when it has none), and its login key last.
_RECORD_COLUMNS = ("a.id, a.login, a.role, a.status, a.display_name, a.establishment_uai,"
                   " a.created_at, a.email, a.merged_into, a.last_signed_in_at,"
                   " c.password_hash, c.kind, c.expires_at, a.login_key")


@functools.lru_cache(maxsize=_DECODED_ROWS)
def _record_from_row(row: tuple[Any, ...]) -> AccountRecord:
    account = _account_from_row(row)
    if row[10] is None:
        return AccountRecord(account, None)
    return AccountRecord(account, Credential(
        account_id=account.id, password_hash=row[10], kind=_KINDS[row[11]],
        expires_at=_parse_optional_time(row[12])))


_LINK_COLUMNS = ("account_id, child_id, first_name, last_name, establishment_uai, "
                 "origin_account_id, origin_establishment_uai, via_merge, linked_at")


@functools.lru_cache(maxsize=_DECODED_ROWS)
def _link_from_row(row: tuple[Any, ...]) -> ChildLink:
    child = Child(id=row[1], first_name=row[2], last_name=row[3], establishment_uai=row[4])
    return ChildLink(account_id=row[0], child=child, origin_account_id=row[5],
                     origin_establishment_uai=row[6], via_merge=bool(row[7]),
                     linked_at=datetime.fromisoformat(row[8]))


def _link_values(link: ChildLink) -> tuple[Any, ...]:
    child = link.child
    return (link.account_id, child.id, child.first_name, child.last_name,
            child.establishment_uai, link.origin_account_id, link.origin_establishment_uai,
            int(link.via_merge), link.linked_at.isoformat())


@functools.lru_cache(maxsize=_DECODED_ROWS)
def _throttle_from_row(row: tuple[Any, ...]) -> ThrottleState:
    return ThrottleState(key=row[0], consecutive=row[1],
                         last_failure_at=_parse_optional_time(row[2]),
                         recent=tuple(datetime.fromisoformat(t) for t in json.loads(row[3])))


def _throttle_values(state: ThrottleState) -> tuple[Any, ...]:
    return (state.key, state.consecutive, _optional_time(state.last_failure_at),
            json.dumps([t.isoformat() for t in state.recent]))


def _receipt_from_row(row: Sequence[Any]) -> StoredReceipt:
    return StoredReceipt(principal_id=row[0], key=row[1], login_key=row[2],
                         receipt=MergeReceipt.from_dict(json.loads(row[3])))


def _receipt_values(stored: StoredReceipt) -> tuple[Any, ...]:
    return (stored.principal_id, stored.key, stored.login_key,
            json.dumps(stored.receipt.to_dict(), ensure_ascii=False))


def _outbox_entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(position=row[0], event=event_from_payload(row[1], json.loads(row[2])),
                       published=bool(row[3]))


_AUDIT_COLUMNS = "id, at, action, outcome, actor, account_id, login, detail"


def _audit_from_row(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(at=datetime.fromisoformat(row[1]), action=_ACTIONS[row[2]],
                       outcome=row[3], actor=row[4], account_id=row[5], login=row[6],
                       detail=row[7])


def _audit_values(record: AuditRecord) -> tuple[Any, ...]:
    return (record.at.isoformat(), record.action.value, record.outcome, record.actor,
            record.account_id, record.login, record.detail)


# -- statements ---------------------------------------------------------------------
# Each text is built once (per number of keys, for the reads), so that the
# connection's statement cache serves it prepared.
def _marks(count: int) -> str:
    return ", ".join("?" * count)


@functools.cache
def _select_records(logins: int, ids: int) -> str:
    """Accounts with their credentials, by *logins* login keys then *ids* ids."""
    where = []
    if logins:
        where.append(f"a.login_key IN ({_marks(logins)})")
    if ids:
        where.append(f"a.id IN ({_marks(ids)})")
    return (f"SELECT {_RECORD_COLUMNS} FROM accounts AS a"
            " LEFT JOIN credentials AS c ON c.account_id = a.id"
            f" WHERE {' OR '.join(where)}")


@functools.cache
def _select_links(ids: int) -> str:
    return (f"SELECT {_LINK_COLUMNS} FROM links WHERE account_id IN ({_marks(ids)})"
            " ORDER BY account_id, seq")


@functools.cache
def _select_absorbed(ids: int) -> str:
    return (f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
            f" WHERE merged_into IN ({_marks(ids)}) AND status = '{_MERGED}'"
            " ORDER BY merged_into, merged_seq")


@functools.cache
def _select_throttles(keys: int) -> str:
    return ("SELECT key, consecutive, last_failure_at, recent FROM throttles"
            f" WHERE key IN ({_marks(keys)})")


@functools.cache
def _select_receipts(count: int) -> str:
    either = " OR ".join(["(principal_id = ? AND key = ?)"] * count)
    return f"SELECT principal_id, key, login_key, receipt FROM receipts WHERE {either}"


@functools.cache
def _select_establishments(count: int) -> str:
    return f"SELECT uai, name FROM establishments WHERE uai IN ({_marks(count)})"


_EXPECT = ("SELECT a.status, c.password_hash FROM accounts AS a"
           " LEFT JOIN credentials AS c ON c.account_id = a.id WHERE a.id = ?")
_PUT_ESTABLISHMENT = ("INSERT INTO establishments (uai, name) VALUES (?, ?)"
                      " ON CONFLICT (uai) DO UPDATE SET name = excluded.name")
# ?1-?10: the account's columns, ?11 its login key.  An account inserted
# already absorbed goes last among those absorbed into the same account.
_INSERT_ACCOUNT = (
    f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}, login_key, merged_seq)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,"
    " CASE WHEN ?9 IS NULL THEN NULL ELSE (SELECT coalesce(max(merged_seq), 0) + 1"
    "  FROM accounts WHERE merged_into = ?9) END)"
)
# An account absorbed into a new holder goes last among the holder's
# absorbed accounts; one whose holder does not change keeps its place.
_UPDATE_ACCOUNT = (
    "UPDATE accounts SET login = ?2, role = ?3, status = ?4, display_name = ?5,"
    " establishment_uai = ?6, created_at = ?7, email = ?8, last_signed_in_at = ?10,"
    " merged_seq = CASE"
    "  WHEN ?9 IS NULL THEN NULL"
    "  WHEN merged_into IS ?9 THEN merged_seq"
    "  ELSE (SELECT coalesce(max(h.merged_seq), 0) + 1 FROM accounts AS h"
    "        WHERE h.merged_into = ?9) END,"
    " merged_into = ?9"
    " WHERE id = ?1"
)
_SIGN_IN = "UPDATE accounts SET last_signed_in_at = ? WHERE id = ?"
_PUT_CREDENTIAL = (
    "INSERT INTO credentials (account_id, password_hash, kind, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (account_id) DO UPDATE SET password_hash = excluded.password_hash,"
    " kind = excluded.kind, expires_at = excluded.expires_at"
)
_DROP_CREDENTIAL = "DELETE FROM credentials WHERE account_id = ?"
_UNLINK = "DELETE FROM links WHERE account_id = ? AND child_id = ?"
_PUT_CHILD = ("INSERT INTO children (id, first_name, last_name, establishment_uai)"
              " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
# A child linked again to the same account keeps its place (its seq).
_LINK = (
    f"INSERT INTO links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account_id, child_id) DO UPDATE SET"
    " first_name = excluded.first_name, last_name = excluded.last_name,"
    " establishment_uai = excluded.establishment_uai,"
    " origin_account_id = excluded.origin_account_id,"
    " origin_establishment_uai = excluded.origin_establishment_uai,"
    " via_merge = excluded.via_merge, linked_at = excluded.linked_at"
)
_PUT_THROTTLE = (
    "INSERT INTO throttles (key, consecutive, last_failure_at, recent) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET consecutive = excluded.consecutive,"
    " last_failure_at = excluded.last_failure_at, recent = excluded.recent"
)
_PUT_RECEIPT = (
    "INSERT INTO receipts (principal_id, key, login_key, receipt) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (principal_id, key) DO UPDATE SET login_key = excluded.login_key,"
    " receipt = excluded.receipt"
)
# ``position`` is one past the largest given: the largest in the outbox, or
# in outbox_head once the purge deleted entries.  Writers are serialised, so
# positions increase in commit order and a rolled-back event leaves no gap.
_APPEND_EVENT = (
    "INSERT INTO outbox (position, name, payload) VALUES (max("
    "coalesce((SELECT max(position) FROM outbox), 0),"
    " coalesce((SELECT last_position FROM outbox_head WHERE one = 1), 0)) + 1, ?, ?)"
)
_MARK_PUBLISHED = "UPDATE outbox SET published = 1 WHERE position = ? AND published = 0"
_APPEND_AUDIT = ("INSERT INTO audit (at, action, outcome, actor, account_id, login, detail)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)")


# -- tier ``register`` ---------------------------------------------------------------
_REGISTER_COLUMNS = "establishment_uai, external_id, account_id, display_name, email, children"


def _register_from_row(row: Sequence[Any]) -> RegisterRecord:
    return RegisterRecord(row[0], row[1], row[2], row[3], row[4], tuple(
        Child(id=c[0], first_name=c[1], last_name=c[2], establishment_uai=c[3])
        for c in json.loads(row[5])))


def _register_values(record: RegisterRecord) -> tuple[Any, ...]:
    return (record.establishment_uai, record.external_id, record.account_id,
            record.display_name, record.email,
            json.dumps([[c.id, c.first_name, c.last_name, c.establishment_uai]
                        for c in record.children], ensure_ascii=False))


@functools.cache
def _select_register_keys(count: int) -> str:
    either = " OR ".join(["(establishment_uai = ? AND external_id = ?)"] * count)
    return f"SELECT {_REGISTER_COLUMNS} FROM register WHERE {either}"


@functools.cache
def _select_register_accounts(count: int) -> str:
    return (f"SELECT {_REGISTER_COLUMNS} FROM register WHERE account_id IN ({_marks(count)})"
            " ORDER BY account_id, establishment_uai, external_id")


@functools.cache
def _select_origin_links(count: int) -> str:
    columns = ", ".join(f"l.{c.strip()}" for c in _LINK_COLUMNS.split(","))
    return (f"SELECT {columns} FROM links AS l JOIN accounts AS a ON a.id = l.account_id"
            f" WHERE l.origin_establishment_uai = ? AND l.child_id IN ({_marks(count)})"
            f" AND a.role = '{Role.RESPONSABLE.value}' ORDER BY l.account_id, l.seq")


@functools.cache
def _select_closures(count: int) -> str:
    return ("SELECT account_id, establishment_uai, closed_at FROM closures"
            f" WHERE account_id IN ({_marks(count)})")


_REGISTER_PAGE = (f"SELECT {_REGISTER_COLUMNS} FROM register"
                  " WHERE establishment_uai = ? AND external_id > ? ORDER BY external_id LIMIT ?")
_LINKED_CHILDREN_PAGE = (
    "SELECT DISTINCT l.child_id FROM links AS l JOIN accounts AS a ON a.id = l.account_id"
    " WHERE l.origin_establishment_uai = ? AND l.child_id > ?"
    f" AND a.role = '{Role.RESPONSABLE.value}' ORDER BY l.child_id LIMIT ?")
_PUT_REGISTER = (
    f"INSERT INTO register ({_REGISTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (establishment_uai, external_id) DO UPDATE SET"
    " account_id = excluded.account_id, display_name = excluded.display_name,"
    " email = excluded.email, children = excluded.children")
_DROP_REGISTER = "DELETE FROM register WHERE establishment_uai = ? AND external_id = ?"
_PUT_CLOSURE = (
    "INSERT INTO closures (account_id, establishment_uai, closed_at) VALUES (?, ?, ?)"
    " ON CONFLICT (account_id) DO UPDATE SET establishment_uai = excluded.establishment_uai,"
    " closed_at = excluded.closed_at")
_DROP_CLOSURE = "DELETE FROM closures WHERE account_id = ?"
# -- tier retention -------------------------------------------------------------------------
# Every statement finds its rows through an index of migration 5 -> 6; a
# partial index serves a query only when the query repeats its WHERE.
_PROVISIONAL = CredentialKind.PROVISIONAL.value
_DUE_UNACTIVATED = (
    f"SELECT {_RECORD_COLUMNS} FROM credentials AS c JOIN accounts AS a ON a.id = c.account_id"
    f" WHERE c.kind = '{_PROVISIONAL}' AND a.status = 'provisional'"
    " AND julianday(c.expires_at) <= julianday(?1){after}"
    " ORDER BY julianday(c.expires_at), c.account_id LIMIT ?4"
)
_AFTER_UNACTIVATED = " AND (julianday(c.expires_at), c.account_id) > (julianday(?2), ?3)"
_DUE_UNUSED = (
    f"SELECT {_RECORD_COLUMNS} FROM accounts AS a"
    " LEFT JOIN credentials AS c ON c.account_id = a.id"
    " WHERE a.status = 'active' AND julianday(a.last_signed_in_at) <= julianday(?1){after}"
    " ORDER BY julianday(a.last_signed_in_at), a.id LIMIT ?4"
)
_AFTER_UNUSED = " AND (julianday(a.last_signed_in_at), a.id) > (julianday(?2), ?3)"
_DUE_CLOSED = (
    f"SELECT {_RECORD_COLUMNS}, k.closed_at FROM closures AS k"
    " JOIN accounts AS a ON a.id = k.account_id"
    " LEFT JOIN credentials AS c ON c.account_id = a.id"
    " WHERE a.status = 'closed' AND julianday(k.closed_at) <= julianday(?1){after}"
    " ORDER BY julianday(k.closed_at), k.account_id LIMIT ?4"
)
_AFTER_CLOSED = " AND (julianday(k.closed_at), k.account_id) > (julianday(?2), ?3)"
_TO_ERASE = (
    f"SELECT c.account_id, a.status FROM credentials AS c JOIN accounts AS a"
    f" ON a.id = c.account_id WHERE c.kind = '{_PROVISIONAL}'"
    f" AND c.password_hash <> '{ERASED_HASH}' AND julianday(c.expires_at) <= julianday(?)"
    " ORDER BY julianday(c.expires_at) LIMIT ?"
)
_ERASE = "UPDATE credentials SET password_hash = ? WHERE account_id = ?"
#: The pseudonymised form of the audit record of the current row
#: (:func:`account_merge.domain.retention.pseudonymised`), account read first.
_PSEUDONYMISE_SET = (
    "detail = ? || coalesce('; establishment ' || coalesce("
    " CASE WHEN substr(actor, 1, 14) = 'establishment:' THEN substr(actor, 15) END,"
    " (SELECT a.establishment_uai FROM accounts AS a WHERE a.id = audit.account_id)), ''),"
    " actor = CASE WHEN substr(actor, 1, 14) = 'establishment:' THEN actor END,"
    " account_id = NULL, login = NULL"
)
#: True for an audit record that names someone
#: (:func:`~account_merge.domain.retention.names_someone`).
_NAMES_SOMEONE = (
    "(account_id IS NOT NULL OR login IS NOT NULL"
    " OR (actor IS NOT NULL AND substr(actor, 1, 14) <> 'establishment:')"
    f" OR (detail IS NOT NULL AND substr(detail, 1, {len(PSEUDONYMISED)}) <> ?))"
)
_MENTIONED = ("UPDATE audit SET detail = replace(detail, ?1, ?2)"
              " WHERE julianday(at) = julianday(?3) AND instr(detail, ?1) > 0")


def _audit_naming(ids: int, logins: int) -> list[tuple[str, int]]:
    """The conditions on audit records naming *ids* accounts or *logins* logins typed, one
    per index (a UNION of them would scan the table), with their number of parameters."""
    conditions = []
    if ids:
        conditions += [(f"account_id IN ({_marks(ids)})", ids), (f"actor IN ({_marks(ids)})", ids)]
    if logins:
        # The index is partial: the query repeats its WHERE.
        conditions.append((f"login IS NOT NULL AND lower(login) IN ({_marks(logins)})", logins))
    return conditions


def _prefix_end(prefix: str) -> str:
    """The first text after every text that starts with *prefix* (binary order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _is_login_clash(error: sqlite3.IntegrityError) -> bool:
    text = str(error)
    return "UNIQUE" in text and ("accounts.login_key" in text or "accounts.id" in text)


# -- the store ----------------------------------------------------------------------
@attrs.define(eq=False)
class _Slot:
    """A connection and the thread that owns it."""

    connection: sqlite3.Connection
    thread: threading.Thread
    in_use: bool = False
    close_when_idle: bool = False


class SQLiteStorage:
    """A store in the SQLite file at *path* (see the module docstring).

    *busy_timeout* is how long, in seconds, a unit of work waits for
    another writer's lock before giving up with ``concurrent_update``.
    Nothing is opened until the first unit of work; the file is created if
    it does not exist (its directory must), readable and writable by its
    owner only.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        path = os.fspath(path)
        if not isinstance(path, str) or not path or path == ":memory:" or path.startswith(
                "file:"):
            raise InvalidInput("path", "must be the path of a file")
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or busy_timeout < 0):
            raise InvalidInput("busy_timeout", "must be a number of seconds, zero or more")
        self.path = path
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    def unit_of_work(self, *, write: bool = True) -> _SQLiteUnitOfWork:
        """A new unit of work; use it in a ``with`` block.

        ``write=True`` takes the write lock at the start (``BEGIN
        IMMEDIATE``); ``write=False`` reads a snapshot (``BEGIN``).
        """
        return _SQLiteUnitOfWork(self, write=write)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in one ``BEGIN IMMEDIATE`` transaction of their own, and commit.

        An empty change set opens no transaction.
        """
        if not changes:
            return
        with self.unit_of_work(write=True) as uow:
            uow.apply(changes)
            uow.commit()

    def bulk_insert(self, rows: Sequence[BulkAccount]) -> None:
        """Store *rows* in one transaction, one ``executemany`` per table.

        Tier ``bulk_load`` (:class:`~account_merge.ports.tiers.BulkLoad`),
        the fast path of :func:`account_merge.storage.bulk.insert_accounts`,
        for tests and benchmarks that need a large store: the accounts and
        their hashes are taken as they are, without events or audit
        records.  A login or id already in use raises ``LoginTaken`` and
        stores none of *rows*.
        """
        responsable = Role.RESPONSABLE.value
        times: dict[datetime | None, str | None] = {None: None}

        def text(at: datetime | None) -> str | None:
            # Bulk rows share a few instants: format each once.
            if at not in times:
                times[at] = _optional_time(at)
            return times[at]

        with self.unit_of_work(write=True) as uow:
            connection = uow._connection()
            with self._translating():
                try:
                    connection.executemany(
                        "INSERT INTO accounts (id, login, login_key, role, status, display_name,"
                        " establishment_uai, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(r.account_id, r.login, r.login_key, responsable, r.status.value,
                          r.display_name, r.establishment_uai, text(r.created_at))
                         for r in rows])
                except sqlite3.IntegrityError as error:
                    if _is_login_clash(error):
                        raise LoginTaken("a login or id of the bulk is in use") from None
                    raise
                connection.executemany(
                    _PUT_CREDENTIAL,
                    [(r.account_id, r.password_hash, r.credential_kind.value,
                      text(r.credential_expires_at)) for r in rows])
                connection.executemany(
                    _PUT_CHILD,
                    [(r.child_id, r.child_first_name, r.child_last_name, r.establishment_uai)
                     for r in rows])
                connection.executemany(
                    f"INSERT INTO links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    [(r.account_id, r.child_id, r.child_first_name, r.child_last_name,
                      r.establishment_uai, r.account_id, r.establishment_uai,
                      text(r.created_at)) for r in rows])
            uow.commit()

    def close(self) -> None:
        """Close every connection not inside a unit of work; the others when it ends.

        The store stays usable: a later unit of work connects again.
        """
        with self._lock:
            if self._pid != os.getpid():
                self._forget_inherited()
                return
            slots, self._slots = self._slots, []
            for slot in slots:
                if slot.in_use:
                    slot.close_when_idle = True
            idle = [slot for slot in slots if not slot.in_use]
        with self._translating():
            for slot in idle:
                slot.connection.close()

    # connections ------------------------------------------------------------------
    def _translating(self) -> AbstractContextManager[None]:
        return _translating(self.path, self.busy_timeout)

    def _error(self, error: sqlite3.Error) -> AccountMergeError:
        return _translate(error, self.path, self.busy_timeout)

    def _forget_inherited(self) -> None:
        """In a forked child: drop the parent's connections without touching them."""
        self._slots = []
        self._local = threading.local()
        self._pid = os.getpid()

    def _acquire(self) -> _Slot:
        """This thread's connection, marked in use; connects on first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_inherited()
            slot: _Slot | None = getattr(self._local, "slot", None)
            if slot is not None and slot.in_use:
                raise RuntimeError("a unit of work of this store is already open in this "
                                   "thread; finish it before opening another")
            if slot is not None and slot in self._slots:
                slot.in_use = True
                return slot
            dead = [s for s in self._slots if not s.thread.is_alive() and not s.in_use]
            self._slots = [s for s in self._slots if s not in dead]
        with self._translating():
            for gone in dead:
                gone.connection.close()
        connection = self._connect()
        slot = _Slot(connection=connection, thread=threading.current_thread(), in_use=True)
        with self._lock:
            self._slots.append(slot)
        self._local.slot = slot
        return slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.in_use = False
            close = slot.close_when_idle
        if close:
            with self._translating():
                slot.connection.close()

    def _create_private(self) -> None:
        """Create the file, empty and ``0600``, if it does not exist yet.

        Made here rather than by SQLite, which would create it with the
        process's default mode; an existing file (also one another opener
        has just created) is left as it is.
        """
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as error:
            raise StorageError(self.path, f"cannot be opened ({error.strerror})") from None
        os.close(descriptor)

    def _connect(self) -> sqlite3.Connection:
        self._create_private()
        connection: sqlite3.Connection | None = None
        try:
            with self._translating():
                connection = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                             isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA foreign_keys = ON")
                connection.execute("BEGIN")  # one snapshot for the checks
                _refuse_unknown(connection, self.path)  # before changing anything
                connection.execute("COMMIT")
                self._use_wal(connection)
                connection.execute("PRAGMA synchronous = FULL")
                migrate(connection, path=self.path)
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        return connection

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL mode (once per file; it persists).

        The switch needs the file to itself and SQLite does not wait for
        it, so concurrent first openers retry until the busy timeout.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as error:
                if (getattr(error, "sqlite_errorcode", 0) & 0xFF not in _CONCURRENCY_CODES
                        or time.monotonic() >= deadline):
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        if str(mode).lower() != "wal":
            raise StorageError(self.path, f"cannot use WAL journal mode (got {mode})")


# -- the way back: tiers email_index and notices ---------------------------------
_INDEX_EMAIL = ("INSERT INTO email_index (account_id, key) VALUES (?, ?)"
                " ON CONFLICT (account_id) DO UPDATE SET key = excluded.key")
_UNINDEX_EMAIL = "DELETE FROM email_index WHERE account_id = ?"
_BY_EMAIL = (f"SELECT {_RECORD_COLUMNS} FROM email_index AS e"
             " JOIN accounts AS a ON a.id = e.account_id"
             " LEFT JOIN credentials AS c ON c.account_id = a.id"
             " WHERE e.key = ? ORDER BY e.account_id LIMIT ?")
_NOTICE_COLUMNS = "id, position, role, status, attempts, updated_at"
_ADD_NOTICE = (f"INSERT INTO notices ({_NOTICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
               " ON CONFLICT (id) DO NOTHING")
_UPDATE_NOTICE = ("UPDATE notices SET position = ?2, role = ?3, status = ?4, attempts = ?5,"
                  " updated_at = ?6 WHERE id = ?1")
_RAISE_CURSOR = ("INSERT INTO notice_cursor (one, position) VALUES (1, ?)"
                 " ON CONFLICT (one) DO UPDATE SET position = max(position, excluded.position)")
_PENDING = ("SELECT n.id, n.position, n.role, n.status, n.attempts, n.updated_at,"
            " o.position, o.name, o.payload, o.published"
            " FROM notices AS n JOIN outbox AS o ON o.position = n.position"
            " WHERE n.status = 'pending' ORDER BY n.position, n.id LIMIT ?")
_NOTICE_STATUSES: Final = {status.value: status for status in NoticeStatus}


def _notice_values(state: NoticeState) -> tuple[Any, ...]:
    return (state.id, state.position, state.role, state.status.value, state.attempts,
            _optional_time(state.updated_at))


def _notice_from_row(row: Sequence[Any]) -> NoticeState:
    return NoticeState(id=row[0], position=row[1], role=row[2],
                       status=_NOTICE_STATUSES[row[3]], attempts=row[4],
                       updated_at=_parse_optional_time(row[5]))


class _SQLiteUnitOfWork:
    def __init__(self, storage: SQLiteStorage, *, write: bool) -> None:
        self._storage = storage
        self._write = write
        self._slot: _Slot | None = None

    # transaction ------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._slot is not None:
            raise RuntimeError("this unit of work is already open")
        slot = self._storage._acquire()
        try:
            self._slot = slot
            self._begin()
        except BaseException:
            self._slot = None
            self._storage._release(slot)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        try:
            if slot.connection.in_transaction:
                try:
                    with self._storage._translating():
                        slot.connection.execute("ROLLBACK")
                except AccountMergeError:
                    # An error already leaving the block says more than this one.
                    if exc is None:
                        raise
        finally:
            self._storage._release(slot)

    def _begin(self) -> None:
        assert self._slot is not None
        with self._storage._translating():
            self._slot.connection.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")

    def _connection(self) -> sqlite3.Connection:
        """The open connection, inside a transaction (a new one after a commit)."""
        if self._slot is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if not self._slot.connection.in_transaction:
            self._begin()
        return self._slot.connection

    def commit(self) -> None:
        if self._slot is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if self._slot.connection.in_transaction:
            with self._storage._translating():
                self._slot.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self._slot is not None and self._slot.connection.in_transaction:
            with self._storage._translating():
                self._slot.connection.execute("ROLLBACK")

    def _unreadable(self, what: str, error: Exception) -> StorageError:
        """A row the domain refuses: a StorageError naming the file."""
        return StorageError(self._storage.path, f"holds {what} that cannot be read ({error!r})")

    # reading ----------------------------------------------------------------------
    def fetch(self, request: Fetch) -> Fetched:
        connection = self._connection()
        try:
            return self._fetch(connection, request)
        except sqlite3.Error as error:
            raise self._storage._error(error) from error

    def _fetch(self, connection: sqlite3.Connection, request: Fetch) -> Fetched:
        found: dict[str, Any] = {}
        what = "an account"
        try:
            logins, ids = request.logins, request.accounts
            if logins or ids:
                by_login: dict[str, AccountRecord] = {}
                accounts: dict[str, AccountRecord] = {}
                wanted_logins, wanted_ids = set(logins), set(ids)
                for row in connection.execute(_select_records(len(logins), len(ids)),
                                              (*logins, *ids)):
                    record = _record_from_row(row)
                    if row[13] in wanted_logins:
                        by_login[row[13]] = record
                    if row[0] in wanted_ids:
                        accounts[row[0]] = record
                found["by_login"], found["accounts"] = by_login, accounts
            if request.links:
                what = "a child link"
                links: dict[str, list[ChildLink]] = {i: [] for i in request.links}
                for row in connection.execute(_select_links(len(request.links)),
                                              request.links):
                    links[row[0]].append(_link_from_row(row))
                found["links"] = {i: tuple(v) for i, v in links.items()}
            if request.absorbed:
                what = "an account"
                absorbed: dict[str, list[Account]] = {i: [] for i in request.absorbed}
                for row in connection.execute(_select_absorbed(len(request.absorbed)),
                                              request.absorbed):
                    absorbed[row[8]].append(_account_from_row(row))
                found["absorbed"] = {i: tuple(v) for i, v in absorbed.items()}
            if request.throttles or request.count:
                what = "a throttle state"
                found["throttles"] = self._throttles(connection, request)
            if request.receipts:
                what = "a receipt"
                pairs = [part for pair in request.receipts for part in pair]
                receipts = {}
                for row in connection.execute(_select_receipts(len(request.receipts)), pairs):
                    stored = _receipt_from_row(row)
                    receipts[stored.principal_id, stored.key] = stored
                found["receipts"] = receipts
            if request.establishments:
                what = "an establishment"
                found["establishments"] = {
                    row[0]: Establishment(uai=row[0], name=row[1])
                    for row in connection.execute(
                        _select_establishments(len(request.establishments)),
                        request.establishments)}
        except _DECODING_ERRORS as error:
            raise self._unreadable(what, error) from error
        return Fetched(**found)

    def _throttles(self, connection: sqlite3.Connection,
                   request: Fetch) -> dict[str, ThrottleState]:
        """The counters *request* reads, and those it counts as they were before."""
        keys = list(dict.fromkeys((*request.throttles, *request.count)))
        rows: dict[str, tuple[Any, ...]] = {
            row[0]: row for row in connection.execute(_select_throttles(len(keys)), keys)}
        out = {key: _throttle_from_row(row) if (row := rows.get(key)) else ThrottleState(key)
               for key in request.throttles}
        if request.count:
            # Counted on the stored text: the times already there are not
            # parsed and formatted again.
            assert request.at is not None  # Fetch checks it
            at, keep = request.at.isoformat(), request.keep
            counted: dict[str, tuple[Any, ...]] = {}
            for key in request.count:
                row = rows.get(key)
                if row is None:
                    out[key], consecutive, recent = ThrottleState(key), 0, []
                else:
                    consecutive, recent = row[1], json.loads(row[3])
                    out[key] = ThrottleState(
                        key=key, consecutive=consecutive,
                        last_failure_at=_parse_optional_time(row[2]),
                        recent=tuple(datetime.fromisoformat(t) for t in recent))
                recent.append(at)
                rows[key] = counted[key] = (key, consecutive + 1, at,
                                            json.dumps(recent[-keep:] if keep > 0 else []))
            connection.executemany(_PUT_THROTTLE, counted.values())
        return out

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        connection = self._connection()
        try:
            rows = connection.execute("SELECT position, name, payload, published FROM outbox"
                                      " WHERE published = 0 ORDER BY position LIMIT ?",
                                      (max(0, limit),)).fetchall()
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        try:
            return [_outbox_entry_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an outbox event", error) from error

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        connection = self._connection()
        limit = max(0, limit)
        try:
            if account_id is None:
                rows = connection.execute(
                    f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?",
                    (limit,)).fetchall()
            else:
                # Each half walks its own index backwards and stops at *limit*.
                rows = connection.execute(
                    f"SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE account_id = ?1"
                    " ORDER BY id DESC LIMIT ?2)"
                    f" UNION SELECT * FROM (SELECT {_AUDIT_COLUMNS} FROM audit WHERE actor = ?1"
                    " ORDER BY id DESC LIMIT ?2)"
                    " ORDER BY id DESC LIMIT ?2",
                    (account_id, limit)).fetchall()
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        try:
            return [_audit_from_row(row) for row in reversed(rows)]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an audit record", error) from error

    # writing ----------------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        connection = self._connection()
        try:
            self._apply(connection, changes)
        except sqlite3.Error as error:
            raise self._storage._error(error) from error

    def _apply(self, connection: sqlite3.Connection, changes: ChangeSet) -> None:
        # Each part in the order ChangeSet gives; an empty part costs nothing.
        for expected in changes.expect:
            row = connection.execute(_EXPECT, (expected.account_id,)).fetchone()
            if (row is None or row[0] != expected.status.value
                    or row[1] != expected.password_hash):
                raise ExpectationFailed()
        if changes.establishments:
            connection.executemany(_PUT_ESTABLISHMENT, [(e.uai, e.name)
                                                        for e in changes.establishments])
        for new in changes.new_accounts:
            # One at a time, to name the login that clashes.
            try:
                connection.execute(_INSERT_ACCOUNT,
                                   (*_account_values(new.account), new.login_key))
            except sqlite3.IntegrityError as error:
                if _is_login_clash(error):
                    raise LoginTaken(new.login_key) from None
                raise
        if changes.accounts:
            cursor = connection.executemany(_UPDATE_ACCOUNT, [_account_values(a)
                                                              for a in changes.accounts])
            if cursor.rowcount != len(changes.accounts):  # one row per id, if stored
                self._missing(connection, [a.id for a in changes.accounts], "to replace")
        if changes.sign_ins:
            cursor = connection.executemany(_SIGN_IN, [(s.at.isoformat(), s.account_id)
                                                       for s in changes.sign_ins])
            if cursor.rowcount != len(changes.sign_ins):
                self._missing(connection, [s.account_id for s in changes.sign_ins],
                              "to sign in")
        if changes.credentials:
            connection.executemany(_PUT_CREDENTIAL, [_credential_values(c)
                                                     for c in changes.credentials])
        if changes.drop_credentials:
            connection.executemany(_DROP_CREDENTIAL, [(i,) for i in changes.drop_credentials])
        if changes.unlink:
            connection.executemany(_UNLINK, [(link.account_id, link.child.id)
                                             for link in changes.unlink])
        if changes.link:
            connection.executemany(_PUT_CHILD, [
                (c.id, c.first_name, c.last_name, c.establishment_uai)
                for c in (link.child for link in changes.link)])
            connection.executemany(_LINK, [_link_values(link) for link in changes.link])
        if changes.throttles:
            connection.executemany(_PUT_THROTTLE, [_throttle_values(s)
                                                   for s in changes.throttles])
        if changes.receipts:
            connection.executemany(_PUT_RECEIPT, [_receipt_values(r) for r in changes.receipts])
        if changes.events:
            connection.executemany(_APPEND_EVENT, [
                (e.name, json.dumps(e.to_payload(), ensure_ascii=False))
                for e in changes.events])
        if changes.published:
            connection.executemany(_MARK_PUBLISHED, [(p,) for p in changes.published])
        if changes.audit:
            connection.executemany(_APPEND_AUDIT, [_audit_values(r) for r in changes.audit])

    # tier ``register`` ----------------------------------------------------------------
    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        connection = self._connection()
        try:
            found: dict[str, Any] = {}
            if request.entries:
                pairs = [part for key in request.entries for part in key]
                found["entries"] = {
                    (r.establishment_uai, r.external_id): r
                    for r in (_register_from_row(row) for row in connection.execute(
                        _select_register_keys(len(request.entries)), pairs))}
            if request.accounts:
                by_account: dict[str, list[RegisterRecord]] = {a: [] for a in request.accounts}
                for row in connection.execute(_select_register_accounts(len(request.accounts)),
                                              request.accounts):
                    by_account[row[2]].append(_register_from_row(row))
                found["by_account"] = {a: tuple(v) for a, v in by_account.items()}
            if request.origin_links:
                links: dict[str, list[ChildLink]] = {c: [] for c in request.origin_links}
                for row in connection.execute(_select_origin_links(len(request.origin_links)),
                                              (request.establishment, *request.origin_links)):
                    links[row[1]].append(_link_from_row(row))
                found["origin_links"] = {c: tuple(v) for c, v in links.items()}
            if request.closures:
                found["closures"] = {
                    row[0]: Closure(row[0], row[1], datetime.fromisoformat(row[2]))
                    for row in connection.execute(_select_closures(len(request.closures)),
                                                  request.closures)}
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        except _DECODING_ERRORS as error:
            raise self._unreadable("a register record", error) from error
        return RegisterFetched(**found)

    def register_apply(self, changes: RegisterChanges) -> None:
        connection = self._connection()
        try:
            if changes.drop:
                connection.executemany(_DROP_REGISTER, changes.drop)
            if changes.put:
                connection.executemany(_PUT_REGISTER, [_register_values(r) for r in changes.put])
            if changes.close:
                connection.executemany(_PUT_CLOSURE, [
                    (c.account_id, c.establishment_uai, c.closed_at.isoformat())
                    for c in changes.close])
            if changes.reopen:
                connection.executemany(_DROP_CLOSURE, [(a,) for a in changes.reopen])
        except sqlite3.Error as error:
            raise self._storage._error(error) from error

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        connection = self._connection()
        try:
            rows = connection.execute(_REGISTER_PAGE,
                                      (establishment_uai, cursor or "", limit)).fetchall()
            items = tuple(_register_from_row(row) for row in rows)
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        except _DECODING_ERRORS as error:
            raise self._unreadable("a register record", error) from error
        return RegisterPage(items, items[-1].external_id if len(items) == limit else None)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        connection = self._connection()
        try:
            ids = tuple(row[0] for row in connection.execute(
                _LINKED_CHILDREN_PAGE, (establishment_uai, cursor or "", limit)))
        except sqlite3.Error as error:
            raise self._storage._error(error) from error
        return RegisterPage(ids, ids[-1] if len(ids) == limit else None)

    def _missing(self, connection: sqlite3.Connection, ids: Iterable[str], what: str) -> None:
        """Raise ExpectationFailed naming the first of *ids* that is not stored, if any."""
        wanted = list(dict.fromkeys(ids))
        stored = {row[0] for row in connection.execute(
            f"SELECT id FROM accounts WHERE id IN ({_marks(len(wanted))})", wanted)}
        absent = next((i for i in wanted if i not in stored), None)
        if absent is not None:
            raise ExpectationFailed(f"no account {absent!r} {what}")

    # tier email_index -------------------------------------------------------------
    def index_email(self, account_id: str, key: str | None) -> None:
        connection = self._connection()
        with self._storage._translating():
            if key is None:
                connection.execute(_UNINDEX_EMAIL, (account_id,))
            else:
                connection.execute(_INDEX_EMAIL, (account_id, key))

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(_BY_EMAIL, (key, max(0, limit))).fetchall()
        try:
            return [_record_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an account", error) from error

    # tier notices -------------------------------------------------------------------
    def notice_cursor(self) -> int:
        connection = self._connection()
        with self._storage._translating():
            row = connection.execute("SELECT position FROM notice_cursor WHERE one = 1"
                                     ).fetchone()
        return 0 if row is None else int(row[0])

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(
                "SELECT position, name, payload, published FROM outbox WHERE position > ?"
                " ORDER BY position LIMIT ?", (position, max(0, limit))).fetchall()
        try:
            return [_outbox_entry_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an outbox event", error) from error

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        connection = self._connection()
        with self._storage._translating():
            connection.executemany(_ADD_NOTICE, [_notice_values(s) for s in states])
            connection.execute(_RAISE_CURSOR, (cursor,))

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(_PENDING, (max(0, limit),)).fetchall()
        try:
            return [(_notice_from_row(row), _outbox_entry_from_row(row[6:])) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("a notice", error) from error

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        connection = self._connection()
        with self._storage._translating():
            connection.executemany(_UPDATE_NOTICE, [_notice_values(s) for s in states])

    # tier retention -------------------------------------------------------------------
    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        connection = self._connection()
        text, after_text, key_at = {
            DueKind.UNACTIVATED: (_DUE_UNACTIVATED, _AFTER_UNACTIVATED, 12),
            DueKind.UNUSED: (_DUE_UNUSED, _AFTER_UNUSED, 9),
            DueKind.CLOSED: (_DUE_CLOSED, _AFTER_CLOSED, 14)}[kind]
        sql = text.format(after=after_text if after is not None else "")
        at, account_id = after if after is not None else (None, None)
        with self._storage._translating():
            rows = connection.execute(sql, (before.isoformat(), _optional_time(at), account_id,
                                            max(0, limit))).fetchall()
        try:
            records = tuple(_record_from_row(tuple(row[:14])) for row in rows)
        except _DECODING_ERRORS as error:
            raise self._unreadable("an account", error) from error
        last = (datetime.fromisoformat(rows[-1][key_at]), rows[-1][0]) \
            if rows and len(rows) == limit else None
        return DuePage(records=records, after=last)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        connection = self._connection()
        with self._storage._translating():
            rows = connection.execute(_TO_ERASE, (expired_by.isoformat(),
                                                  max(0, limit))).fetchall()
            merged = [(i,) for i, status in rows if status == _MERGED]
            connection.executemany(_DROP_CREDENTIAL, merged)
            connection.executemany(_ERASE, [(ERASED_HASH, i) for i, status in rows
                                            if status != _MERGED])
        return len(rows)

    def forget(self, forgotten: Forgotten) -> None:
        connection = self._connection()
        ids = list(forgotten.account_ids)
        with self._storage._translating():
            self._pseudonymise_audit(connection, forgotten)
            connection.executemany(_MENTIONED, [(account_id, DELETED_ACCOUNT, at.isoformat())
                                                for at, account_id in forgotten.created])
            connection.executemany("DELETE FROM throttles WHERE key = ?",
                                   [(k,) for k in forgotten.counter_keys])
            connection.executemany("DELETE FROM throttles WHERE key >= ? AND key < ?",
                                   [(p, _prefix_end(p)) for p in forgotten.counter_prefixes])
            if not ids:
                return
            marks = _marks(len(ids))
            connection.execute(f"DELETE FROM receipts WHERE principal_id IN ({marks})", ids)
            connection.execute(f"DELETE FROM email_index WHERE account_id IN ({marks})", ids)
            # tier ``register``: the records of their letters, their closures
            connection.execute(f"DELETE FROM register WHERE account_id IN ({marks})", ids)
            connection.execute(f"DELETE FROM closures WHERE account_id IN ({marks})", ids)
            children = [row[0] for row in connection.execute(
                f"SELECT DISTINCT child_id FROM links WHERE account_id IN ({marks})", ids)]
            connection.execute(f"DELETE FROM links WHERE account_id IN ({marks})", ids)
            connection.executemany(
                "DELETE FROM children WHERE id = ?1"
                " AND NOT EXISTS (SELECT 1 FROM links WHERE child_id = ?1)",
                [(c,) for c in children])
            connection.execute(f"DELETE FROM credentials WHERE account_id IN ({marks})", ids)
            # Absorbed accounts first: they name their holder.
            connection.execute(f"DELETE FROM accounts WHERE id IN ({marks})"
                               " AND merged_into IS NOT NULL", ids)
            connection.execute(f"DELETE FROM accounts WHERE id IN ({marks})", ids)

    def _pseudonymise_audit(self, connection: sqlite3.Connection,
                            forgotten: Forgotten) -> None:
        for condition, parameters in self._naming(forgotten):
            connection.execute(f"UPDATE audit SET {_PSEUDONYMISE_SET} WHERE {condition}",
                               (PSEUDONYMISED, *parameters))

    @staticmethod
    def _naming(forgotten: Forgotten) -> list[tuple[str, tuple[str, ...]]]:
        """Each condition on the audit records *forgotten* names, with its parameters."""
        ids = forgotten.account_ids
        logins = tuple(ascii_lower(t) for t in forgotten.logins)
        values = iter((ids, ids, logins) if ids else (logins,))
        return [(condition, next(values))
                for condition, _ in _audit_naming(len(ids), len(logins))]

    def _counter_keys(self, connection: sqlite3.Connection, forgotten: Forgotten) -> list[str]:
        """The keys of the stored counters *forgotten* names (one query per prefix: a
        compound SELECT has at most 500 terms)."""
        keys = list(forgotten.counter_keys)
        for prefix in forgotten.counter_prefixes:
            keys += [row[0] for row in connection.execute(
                "SELECT key FROM throttles WHERE key >= ? AND key < ?",
                (prefix, _prefix_end(prefix)))]
        return keys

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        connection = self._connection()
        with self._storage._translating():
            if not pseudonymise:
                return connection.execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit"
                    " WHERE julianday(at) < julianday(?) ORDER BY julianday(at), id LIMIT ?)",
                    (before.isoformat(), max(0, limit))).rowcount
            return connection.execute(
                f"UPDATE audit SET {_PSEUDONYMISE_SET} WHERE id IN (SELECT id FROM audit"
                f" WHERE julianday(at) < julianday(?) AND {_NAMES_SOMEONE}"
                " ORDER BY julianday(at), id LIMIT ?)",
                (PSEUDONYMISED, before.isoformat(), PSEUDONYMISED, max(0, limit))).rowcount

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        connection = self._connection()
        which = "" if published is None else f" AND published = {int(published)}"
        with self._storage._translating():
            rows = connection.execute(
                f"SELECT position, name, payload, published FROM outbox WHERE position > ?"
                f"{which} ORDER BY position LIMIT ?", (after, max(0, limit))).fetchall()
        try:
            return [_outbox_entry_from_row(row) for row in rows]
        except _DECODING_ERRORS as error:
            raise self._unreadable("an outbox event", error) from error

    def delete_outbox(self, positions: Sequence[int]) -> int:
        wanted = sorted(set(positions))
        if not wanted:
            return 0
        connection = self._connection()
        with self._storage._translating():
            connection.execute(
                "INSERT INTO outbox_head (one, last_position)"
                " SELECT 1, coalesce(max(position), 0) FROM outbox WHERE true"
                " ON CONFLICT (one) DO UPDATE SET"
                " last_position = max(last_position, excluded.last_position)")
            return connection.execute(
                f"DELETE FROM outbox WHERE position IN ({_marks(len(wanted))})"
                " AND NOT EXISTS (SELECT 1 FROM notices AS n"
                " WHERE n.position = outbox.position AND n.status = 'pending')",
                wanted).rowcount

    def delete_counters(self, before: datetime, limit: int) -> int:
        connection = self._connection()
        with self._storage._translating():
            return connection.execute(
                "DELETE FROM throttles WHERE key IN (SELECT key FROM throttles"
                " WHERE julianday(last_failure_at) IS NULL"
                " OR julianday(last_failure_at) < julianday(?) LIMIT ?)",
                (before.isoformat(), max(0, limit))).rowcount

    def held_about(self, forgotten: Forgotten) -> Held:
        connection = self._connection()
        ids = forgotten.account_ids
        with self._storage._translating():
            audit_rows = [row for condition, parameters in self._naming(forgotten)
                          for row in connection.execute(
                              f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {condition}",
                              parameters)]
            mentioned = [row for at, account_id in forgotten.created
                         for row in connection.execute(
                             f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE julianday(at) ="
                             " julianday(?) AND instr(detail, ?) > 0",
                             (at.isoformat(), account_id))]
            keys = self._counter_keys(connection, forgotten)
            counters = connection.execute(_select_throttles(len(keys)), keys).fetchall() \
                if keys else []
            receipts = connection.execute(
                f"SELECT principal_id, key, login_key, receipt FROM receipts"
                f" WHERE principal_id IN ({_marks(len(ids))}) ORDER BY principal_id, key",
                ids).fetchall() if ids else []
        try:
            audit = sorted({row[0]: row for row in (*audit_rows, *mentioned)}.values())
            return Held(
                audit=tuple(_audit_from_row(row) for row in audit),
                counters=tuple(sorted((_throttle_from_row(tuple(r)) for r in counters),
                                      key=lambda c: c.key)),
                receipts=tuple((r.principal_id, r.key, r.receipt)
                               for r in map(_receipt_from_row, receipts)))
        except _DECODING_ERRORS as error:
            raise self._unreadable("an audit record, a counter or a receipt", error) from error
