"""DjangoStorage: the store in the project's database, through Django's ORM.

It meets the storage contract of :mod:`account_merge.ports.storage`
(rules 1 to 6 there) on PostgreSQL and SQLite; what it decides is written
here.

Units of work.  Each unit of work is a :func:`django.db.transaction.atomic`
block on one database alias: ``commit()`` leaves the block normally (a
COMMIT, or the release of a savepoint when the unit of work runs inside a
transaction the host already opened), and leaving the ``with`` block
without ``commit()`` rolls it back.  After ``commit()`` the unit of work
stays usable: the next statement opens a new block.  The alias is the
``using`` given to :class:`DjangoStorage`, else the project's database
routers decide (``db_for_write`` for a writing unit of work,
``db_for_read`` for a reading one, asked about the app's models).

Inside a transaction of the host (``ATOMIC_REQUESTS``, a view wrapped in
``atomic``), the library's writes are only durable when the host commits,
except what rule 6 of the contract keeps, on PostgreSQL: the failed-attempt
counters (counted by :class:`~account_merge.ports.Fetch`, read, locked and
written by :class:`~account_merge.ports.ChangeSet`) and the audit records
of failures go through a *side connection*, a second connection of this
thread to the same database, in a transaction of the unit of work's own
that ``commit()`` commits first (then releases the savepoint) and a
rollback rolls back.  So a view that lets the library's error escape its
atomic request cannot erase a failed attempt, nor lift the throttling
with it.  Events and the audit records of successes stay in the host's
transaction: they commit or roll back with the change they describe.  The
side connection is made when first needed, kept for the thread like
Django's own (closed at the end of a request unless ``CONN_MAX_AGE`` keeps
it, or by :meth:`DjangoStorage.close`), and waits at most
``side_lock_timeout`` seconds for a lock, so that the two connections of
one thread, which the server cannot see waiting on each other, never
wait forever.

On SQLite a second connection could only wait for the write lock the
host's transaction holds, so the store keeps the failed-attempt counters
and the audit records of failures in the *attempts journal*
(:mod:`account_merge.storage.attempts`), a SQLite file of their own beside
the database (``<database>-attempts.sqlite3``; in memory for an in-memory
database), written by the store's own connection in a transaction of the
unit of work's own that ``commit()`` commits first.  It does so in every
unit of work on SQLite, inside a host's transaction or not, so that every
store of the database finds its counters in one place, and it reads,
counts and locks them there (the journal's transaction of a writing unit
of work begins ``IMMEDIATE``, after the database's write lock is taken);
``audit_records`` interleaves both trails in the order they were written.

Concurrency.  On PostgreSQL (READ COMMITTED): ``Fetch(lock=True)`` locks
the counters it names, then the accounts by id: a counter with a
transaction-level advisory lock on its key (so that a counter not stored
yet is protected too) and ``SELECT ... FOR UPDATE``, the accounts with
``SELECT ... FOR UPDATE`` ordered by id; a counted key (``Fetch.count``)
is always locked so, then read and written back in the same transaction,
before the unit of work reads anything else.  A change set's ``expect``
locks the accounts it checks, in id order.  Appending events takes one
advisory lock for the outbox, so positions are gap-free and become
visible in order.  On SQLite, a writing unit of work takes the
database's write lock with its first statement (as ``BEGIN IMMEDIATE``
would; with Django 5.1's ``"transaction_mode": "IMMEDIATE"`` option,
Django already does), so writers wait for each other up to the
connection's ``timeout`` instead of failing half-way, and every
read-modify-write runs under that lock.  Serialization failures,
deadlocks, lock timeouts and "database is locked" become
:class:`~account_merge.exceptions.ConcurrentUpdate`, which the service
retries; any other database error becomes
:class:`~account_merge.exceptions.StorageError` naming the alias and the
database (never its password).

Rows are translated to domain objects explicitly; a row the domain
refuses is a ``StorageError`` too.  Each :meth:`fetch` costs one query
per kind of thing it reads (and, to count attempts, one more to lock the
counters on PostgreSQL and one to write them); :meth:`apply` writes each
part of a change set with one bulk statement.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Max, Q
from django.db.models.functions import Lower, Substr
from django.utils.connection import ConnectionDoesNotExist

from account_merge.contrib.django import models as m
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
    pseudonymised,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import (
    AccountMergeError,
    ConcurrentUpdate,
    ExpectationFailed,
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
from account_merge.storage.attempts import (
    Attempts,
    AttemptsJournal,
    JournalTransaction,
    check_template,
    file_journal,
    memory_journal,
    merge_trails,
    split_attempts,
)

__all__ = ["DEFAULT_SIDE_LOCK_TIMEOUT", "DjangoStorage", "close_obsolete_side_connections",
           "close_side_connections"]

T = TypeVar("T")

#: SQLSTATEs of a lost race on PostgreSQL: serialization failure,
#: deadlock, lock not available (a lock timeout).
_CONCURRENT_SQLSTATES: Final = frozenset({"40001", "40P01", "55P03"})
_UNIQUE_VIOLATION: Final = "23505"
_LOCKED_TEXTS: Final = ("database is locked", "database table is locked")
_SUCCESS: Final = "success"
_MERGED: Final = AccountStatus.MERGED.value

#: Seconds a side connection waits for a lock before ``concurrent_update``.
DEFAULT_SIDE_LOCK_TIMEOUT: Final = 5.0
#: The suffix of a side connection's alias (registered for its thread only).
_SIDE_SUFFIX: Final = "~account_merge_side"
#: The app's rows in an attempts journal, beside other stores' (SQLite).
_JOURNAL_NAMESPACE: Final = f"django:{m.Throttle._meta.db_table}"

_ACCOUNT_FIELDS: Final = ("login", "role", "status", "display_name", "establishment_uai",
                          "created_at", "email", "merged_into", "merged_seq",
                          "last_signed_in_at")
_LINK_FIELDS: Final = ("first_name", "last_name", "establishment_uai", "origin_account_id",
                       "origin_establishment_uai", "via_merge", "linked_at")


# -- times -------------------------------------------------------------------------------
def _to_db(value: datetime) -> datetime:
    utc = value.astimezone(UTC)
    return utc if settings.USE_TZ else utc.replace(tzinfo=None)


def _optional_to_db(value: datetime | None) -> datetime | None:
    return None if value is None else _to_db(value)


def _from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _optional_from_db(value: datetime | None) -> datetime | None:
    return None if value is None else _from_db(value)


# -- rows <-> domain ---------------------------------------------------------------------
def _account_from_row(row: m.Account) -> Account:
    return Account(
        id=row.id, login=row.login, role=Role(row.role), status=AccountStatus(row.status),
        display_name=row.display_name, establishment_uai=row.establishment_uai,
        created_at=_from_db(row.created_at), email=row.email, merged_into=row.merged_into_id,
        last_signed_in_at=_optional_from_db(row.last_signed_in_at),
    )


def _account_row(account: Account, *, login_key: str | None = None,
                 merged_seq: int | None = None) -> m.Account:
    row = m.Account(
        id=account.id, login=account.login, role=account.role.value,
        status=account.status.value, display_name=account.display_name,
        establishment_uai=account.establishment_uai, created_at=_to_db(account.created_at),
        email=account.email, merged_into_id=account.merged_into, merged_seq=merged_seq,
        last_signed_in_at=_optional_to_db(account.last_signed_in_at),
    )
    if login_key is not None:
        row.login_key = login_key
    return row


def _credential_from_row(row: m.Credential) -> Credential:
    return Credential(account_id=row.account_id, password_hash=row.password_hash,
                      kind=CredentialKind(row.kind),
                      expires_at=_optional_from_db(row.expires_at))


def _credential_row(credential: Credential) -> m.Credential:
    return m.Credential(account_id=credential.account_id,
                        password_hash=credential.password_hash, kind=credential.kind.value,
                        expires_at=_optional_to_db(credential.expires_at))


def _record_from_row(row: m.Account) -> AccountRecord:
    # select_related("credential") cached the credential, or its absence.
    credential: m.Credential | None = getattr(row, "credential", None)
    return AccountRecord(_account_from_row(row),
                         None if credential is None else _credential_from_row(credential))


def _link_from_row(row: m.ChildLink) -> ChildLink:
    # The child as the letter that carried it named it (rule 5): the link's columns.
    child = Child(id=row.child_id, first_name=row.first_name, last_name=row.last_name,
                  establishment_uai=row.establishment_uai)
    return ChildLink(account_id=row.account_id, child=child,
                     origin_account_id=row.origin_account_id,
                     origin_establishment_uai=row.origin_establishment_uai,
                     via_merge=row.via_merge, linked_at=_from_db(row.linked_at))


def _link_row(link: ChildLink) -> m.ChildLink:
    child = link.child
    return m.ChildLink(account_id=link.account_id, child_id=child.id,
                       first_name=child.first_name, last_name=child.last_name,
                       establishment_uai=child.establishment_uai,
                       origin_account_id=link.origin_account_id,
                       origin_establishment_uai=link.origin_establishment_uai,
                       via_merge=link.via_merge, linked_at=_to_db(link.linked_at))


def _throttle_from_row(row: m.Throttle) -> ThrottleState:
    return ThrottleState(key=row.key, consecutive=row.consecutive,
                         last_failure_at=_optional_from_db(row.last_failure_at),
                         recent=tuple(_from_db(datetime.fromisoformat(t)) for t in row.recent))


def _throttle_row(state: ThrottleState) -> m.Throttle:
    return m.Throttle(key=state.key, consecutive=state.consecutive,
                      last_failure_at=_optional_to_db(state.last_failure_at),
                      recent=[t.astimezone(UTC).isoformat() for t in state.recent])


def _receipt_from_row(row: m.Receipt) -> StoredReceipt:
    return StoredReceipt(principal_id=row.principal_id, key=row.key, login_key=row.login_key,
                         receipt=MergeReceipt.from_dict(row.receipt))


def _outbox_entry_from_row(row: m.OutboxEvent) -> OutboxEntry:
    return OutboxEntry(position=row.position, event=event_from_payload(row.name, row.payload),
                       published=row.published)


def _audit_from_row(row: m.AuditEntry) -> AuditRecord:
    return AuditRecord(at=_from_db(row.at), action=AuditAction(row.action), outcome=row.outcome,
                       actor=row.actor, account_id=row.account_id, login=row.login,
                       detail=row.detail)


def _audit_row(record: AuditRecord) -> m.AuditEntry:
    return m.AuditEntry(at=_to_db(record.at), action=record.action.value,
                        outcome=record.outcome, actor=record.actor,
                        account_id=record.account_id, login=record.login,
                        detail=record.detail)


def _register_from_row(row: m.RegisterEntry) -> RegisterRecord:
    return RegisterRecord(row.establishment_uai, row.external_id, row.account_id,
                          row.display_name, row.email, tuple(
                              Child(id=c[0], first_name=c[1], last_name=c[2],
                                    establishment_uai=c[3]) for c in row.children))


def _register_row(record: RegisterRecord) -> m.RegisterEntry:
    return m.RegisterEntry(
        establishment_uai=record.establishment_uai, external_id=record.external_id,
        account_id=record.account_id, display_name=record.display_name, email=record.email,
        children=[[c.id, c.first_name, c.last_name, c.establishment_uai]
                  for c in record.children])


def _last_by(items: Iterable[T], key: Any) -> list[T]:
    """*items* without repeats of a key: each key's last item, at its first place."""
    kept: dict[Any, T] = {}
    for item in items:
        kept[key(item)] = item
    return list(kept.values())


def _lock_number(namespace: str, key: str) -> int:
    """A signed 64-bit advisory lock number for *key* (collisions only serialise more)."""
    digest = hashlib.blake2b(f"account_merge:{namespace}:{key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


# -- errors ------------------------------------------------------------------------------
def _describe(connection: BaseDatabaseWrapper) -> str:
    """The store's name in errors: alias, engine and database, never a password."""
    name = connection.settings_dict.get("NAME") or ""
    return f"django:{connection.alias} ({connection.vendor} {name})".replace(" )", ")")


def _sqlstate(error: DatabaseError) -> str | None:
    cause = error.__cause__
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return None if state is None else str(state)


def _is_lost_race(error: DatabaseError) -> bool:
    if _sqlstate(error) in _CONCURRENT_SQLSTATES:
        return True
    text = str(error).lower()
    return any(locked in text for locked in _LOCKED_TEXTS)


def _is_account_clash(error: IntegrityError) -> bool:
    """A unique constraint of the account table (its id or its login key) refused a row."""
    table = m.Account._meta.db_table
    if _sqlstate(error) == _UNIQUE_VIOLATION:
        diag = getattr(error.__cause__, "diag", None)
        return getattr(diag, "table_name", None) == table
    return f"unique constraint failed: {table}." in str(error).lower()


def _translate(error: DatabaseError, connection: BaseDatabaseWrapper) -> AccountMergeError:
    store = _describe(connection)
    if _is_lost_race(error):
        return ConcurrentUpdate(f"{store}: the rows were locked or changed by a concurrent "
                                f"writer ({type(error).__name__}); try again")
    return StorageError(store, f"{type(error).__name__}: {error}")


# -- side connections --------------------------------------------------------------------
class _ThreadSides(threading.local):
    def __init__(self) -> None:
        self.aliases: set[str] = set()


_thread_sides = _ThreadSides()


def _side_alias(main: BaseDatabaseWrapper) -> str:
    """The alias of this thread's side connection to *main*'s database, made if needed.

    The side connection is registered in ``django.db.connections`` for this
    thread only (Django keeps connections per thread), so that the ORM and
    ``transaction.atomic`` can use it; it is not in ``DATABASES``, so
    Django's own connection management leaves it alone.
    """
    alias = f"{main.alias}{_SIDE_SUFFIX}"
    try:
        connections[alias]
    except ConnectionDoesNotExist:
        settings_dict = copy.deepcopy(main.settings_dict)
        options = settings_dict.setdefault("OPTIONS", {})
        options.pop("pool", None)  # a connection of its own, not one of the host's pool
        connections[alias] = type(main)(settings_dict, alias)
        _thread_sides.aliases.add(alias)
    return alias


def close_side_connections(*, only_obsolete: bool = False, **_: Any) -> None:
    """Close this thread's side connections (see the module docstring).

    With *only_obsolete*, close only those Django would close at the end of
    a request (unusable, or older than ``CONN_MAX_AGE``).  The app connects
    it to ``request_started`` and ``request_finished`` that way.
    """
    for alias in sorted(_thread_sides.aliases):
        try:
            side = connections[alias]
        except ConnectionDoesNotExist:
            _thread_sides.aliases.discard(alias)
            continue
        if only_obsolete:
            side.close_if_unusable_or_obsolete()
            continue
        with suppress(DatabaseError):
            side.close()
        del connections[alias]
        _thread_sides.aliases.discard(alias)


def close_obsolete_side_connections(**_: Any) -> None:
    """Receiver of ``request_started`` / ``request_finished``: as Django does for its own."""
    close_side_connections(only_obsolete=True)


# -- the store ---------------------------------------------------------------------------
class DjangoStorage:
    """The store in a database of the Django project (see the module docstring).

    *using* is a database alias; None lets the project's routers choose.
    *side_lock_timeout* bounds, in seconds, the lock waits of the side
    connection (PostgreSQL, inside a host's transaction).
    *attempts_journal* is where the attempts journal of a SQLite database
    is, a template of :func:`~account_merge.storage.attempts.journal_path`
    (default ``"{database}-attempts.sqlite3"``); every store of one
    database must be given the same.  Nothing connects before the first
    unit of work, and connections are Django's own: one per thread, opened
    and closed as Django does.
    """

    def __init__(self, using: str | None = None, *,
                 side_lock_timeout: float = DEFAULT_SIDE_LOCK_TIMEOUT,
                 attempts_journal: str | os.PathLike[str] | None = None) -> None:
        if isinstance(side_lock_timeout, bool) or not isinstance(side_lock_timeout,
                                                                 int | float) \
                or side_lock_timeout <= 0:
            raise ValueError("side_lock_timeout must be a positive number of seconds")
        self.using = using
        self.side_lock_timeout = float(side_lock_timeout)
        self.attempts_journal = check_template(attempts_journal)
        self._journals: set[AttemptsJournal] = set()
        self._journals_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DjangoStorage(using={self.using!r})"

    def unit_of_work(self, *, write: bool = True) -> _DjangoUnitOfWork:
        """A new unit of work on this thread's connection; use it in a ``with`` block."""
        return _DjangoRetention(self, write=write)

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own, and commit.

        Inside a host's transaction on PostgreSQL, a change set of failed
        attempts only (``changes.only_attempts``) is one transaction of the
        side connection, and nothing reaches the host's; on SQLite, one
        transaction of the attempts journal.
        """
        with self.unit_of_work(write=True) as uow:
            uow.apply(changes)
            uow.commit()

    def close(self) -> None:
        """Close this thread's side connections and journal connections; Django owns the others."""
        close_side_connections()
        with self._journals_lock:
            journals = list(self._journals)
        for journal in journals:
            journal.close()

    def forget_attempts(self, using: str | None = None) -> None:
        """Empty this store's part of the attempts journal of a SQLite database.

        For tests: the journal outlives the rollback of a test case's
        transaction, as it outlives a request's (rule 6), so a suite that
        counts failures starts each test with this.  *using* is the alias
        (default: the store's for writing).  Nothing on another database.
        """
        connection = connections[using or self.alias(write=True)]
        if connection.vendor == "sqlite":
            self._journal_of(connection).forget(_JOURNAL_NAMESPACE)

    def _journal_of(self, connection: BaseDatabaseWrapper) -> AttemptsJournal:
        """The attempts journal of the SQLite database of *connection* (made if needed)."""
        name = str(connection.settings_dict.get("NAME") or "")
        if connection.is_in_memory_db():  # type: ignore[attr-defined]
            found = memory_journal(f"django:{name}")
        else:
            found = file_journal(name, self.attempts_journal)
        with self._journals_lock:
            self._journals.add(found)
        return found

    def alias(self, *, write: bool) -> str:
        """The database alias a unit of work uses."""
        if self.using is not None:
            return self.using
        chosen = router.db_for_write(m.Account) if write else router.db_for_read(m.Account)
        return str(chosen)

    def bulk_insert(self, rows: Sequence[Any]) -> None:
        """Tier ``bulk_load``: store many accounts in one transaction, all or none.

        *rows* are :class:`~account_merge.storage.bulk.BulkAccount` rows; a
        login or id in use raises ``LoginTaken`` and stores none of them.
        """
        with self.unit_of_work(write=True) as uow:
            uow.insert_bulk(rows)
            uow.commit()


class _DjangoUnitOfWork:
    """One transaction (or savepoint), and its side transaction when it needs one."""

    def __init__(self, storage: DjangoStorage, *, write: bool) -> None:
        self._storage = storage
        self._write = write
        self._alias: str | None = None
        self._connection: BaseDatabaseWrapper | None = None
        self._atomic: transaction.Atomic | None = None
        self._side: str | None = None
        self._side_atomic: transaction.Atomic | None = None
        self._journal_tx: JournalTransaction | None = None
        self._hosted: bool | None = None  # decided when a transaction begins
        # (merged_into, merged_seq) of the accounts this transaction locked, and of
        # those they absorbed: replacing them needs no read of them again.
        self._locked: dict[str, tuple[str | None, int | None]] = {}

    # transaction ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._alias is not None:
            raise RuntimeError("this unit of work is already open")
        alias = self._storage.alias(write=self._write)
        self._alias = alias
        try:
            self._connection = connections[alias]
            if self._write and self._connection.vendor == "sqlite":
                self._main()  # the write lock, at once
        except BaseException:
            self._alias = self._connection = None
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._end(commit=False)
        except AccountMergeError:
            # An error already leaving the block says more than this one.
            if exc is None:
                raise
        finally:
            self._alias = self._connection = None

    def commit(self) -> None:
        if self._alias is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        self._end(commit=True)

    def rollback(self) -> None:
        self._end(commit=False)

    @property
    def _conn(self) -> BaseDatabaseWrapper:
        if self._alias is None or self._connection is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        return self._connection

    @property
    def _postgres(self) -> bool:
        return self._conn.vendor == "postgresql"

    def _is_hosted(self) -> bool:
        """True if this transaction runs inside one the host opened (decided as it begins)."""
        if self._hosted is None:
            conn = self._conn
            self._hosted = bool(conn.in_atomic_block) or (
                conn.connection is not None and not conn.get_autocommit())
        return self._hosted

    def _uses_side(self) -> bool:
        return self._postgres and self._is_hosted()

    def _uses_journal(self) -> bool:
        """On SQLite, always: the counters of a database are in one place for all its stores."""
        return self._conn.vendor == "sqlite"

    def _journal(self) -> JournalTransaction:
        """This unit of work's transaction of the attempts journal (SQLite, rule 6)."""
        self._main()  # the database's write lock first, then the journal's: one order
        if self._journal_tx is None:
            self._journal_tx = self._storage._journal_of(self._conn).transaction(
                _JOURNAL_NAMESPACE, write=self._write, legacy=self._kept_throttles)
        return self._journal_tx

    def _kept_throttles(self) -> list[ThrottleState]:
        """The counters kept in the database before the journal (which adopts them once)."""
        with self._translating():
            rows = list(m.Throttle.objects.using(self._main()).filter(
                Q(consecutive__gt=0) | Q(last_failure_at__isnull=False)))
        with self._decoding("a throttle state"):
            return [_throttle_from_row(row) for row in rows]

    def _main(self) -> str:
        """The alias of the main connection, in this unit of work's transaction."""
        conn = self._conn
        if self._atomic is None:
            self._is_hosted()
            atomic = transaction.atomic(using=self._alias)
            with self._translating():
                atomic.__enter__()
            self._atomic = atomic
            if self._write and conn.vendor == "sqlite":
                try:
                    with self._translating():
                        self._take_sqlite_write_lock()
                except BaseException:
                    with suppress(AccountMergeError):
                        self._end(commit=False)
                    raise
        assert self._alias is not None
        return self._alias

    def _counters(self) -> str:
        """The alias counters and audit records of failures go through (rule 6)."""
        if not self._uses_side():
            return self._main()
        if self._side_atomic is None:
            with self._translating():
                side = _side_alias(self._conn)
                atomic = transaction.atomic(using=side)
                atomic.__enter__()
                self._side, self._side_atomic = side, atomic
                millis = max(1, round(self._storage.side_lock_timeout * 1000))
                with connections[side].cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = {millis}")
        assert self._side is not None
        return self._side

    def _take_sqlite_write_lock(self) -> None:
        """Take the write lock now, as ``BEGIN IMMEDIATE`` would.

        A write as the first statement of the transaction waits for the
        lock (up to the connection's timeout) before reading anything, so
        no snapshot can go stale before this unit of work writes.
        """
        conn = self._conn
        if getattr(conn, "transaction_mode", None) in {"IMMEDIATE", "EXCLUSIVE"}:
            return
        table = conn.ops.quote_name(m.Establishment._meta.db_table)
        with conn.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET name = name WHERE 0 = 1")

    def _end(self, *, commit: bool) -> None:
        """Commit (the side transaction first) or roll back both; the next statement begins anew."""
        side, side_atomic, self._side, self._side_atomic = (self._side, self._side_atomic,
                                                             None, None)
        atomic, self._atomic = self._atomic, None
        journal = self._journal_tx
        self._hosted = None
        self._locked = {}
        try:
            if side_atomic is not None:
                with self._translating():
                    if not commit:
                        transaction.set_rollback(True, using=side)
                    side_atomic.__exit__(None, None, None)
            if journal is not None:
                if commit:
                    journal.commit()
                else:
                    journal.rollback()
        except BaseException:
            if journal is not None and commit:
                with suppress(AccountMergeError):
                    journal.rollback()
            # The side transaction could not commit: nothing reaches the host's either.
            if atomic is not None:
                with suppress(DatabaseError):
                    transaction.set_rollback(True, using=self._alias)
                    atomic.__exit__(None, None, None)
            raise
        if atomic is not None:
            with self._translating():
                if not commit:
                    transaction.set_rollback(True, using=self._alias)
                atomic.__exit__(None, None, None)

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except DatabaseError as error:
            raise _translate(error, self._conn) from error

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turn a row the domain refuses into a StorageError naming the database."""
        try:
            yield
        except (AccountMergeError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, StorageError):
                raise
            raise StorageError(_describe(self._conn),
                               f"holds {what} that cannot be read ({type(error).__name__}: "
                               f"{error})") from error

    def _advisory_locks(self, db: str, namespace: str, keys: Sequence[str]) -> None:
        """On PostgreSQL: lock *keys*, in this order, until the transaction ends."""
        if not keys:
            return
        numbers = [_lock_number(namespace, key) for key in keys]
        with connections[db].cursor() as cursor:
            # unnest() yields the array in order: the locks are taken in key order.
            cursor.execute("SELECT pg_advisory_xact_lock(n) FROM unnest(%s::bigint[]) AS n",
                           [numbers])

    # reading -------------------------------------------------------------------------
    def fetch(self, request: Fetch) -> Fetched:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        with self._translating():
            # Counters first, then accounts by id: the contract's lock order.
            throttles = self._fetch_throttles(request)
            db = self._main()
            by_login, accounts = self._fetch_accounts(db, request)
            links = self._fetch_links(db, request.links)
            absorbed = self._fetch_absorbed(db, request.absorbed,
                                            locked=request.lock and self._write)
            receipts = self._fetch_receipts(db, request.receipts)
            establishments = self._fetch_establishments(db, request.establishments)
        return Fetched(by_login=by_login, accounts=accounts, links=links, absorbed=absorbed,
                       throttles=throttles, receipts=receipts, establishments=establishments)

    def _fetch_throttles(self, request: Fetch) -> dict[str, ThrottleState]:
        locking = request.lock and self._write
        guarded = sorted({*request.count, *(request.throttles if locking else ())})
        plain = () if locking else request.throttles
        if not guarded and not plain:
            return {}
        if self._uses_journal():
            return self._journal().fetch(request)
        db = self._counters()
        rows = m.Throttle.objects.using(db)
        found: dict[str, m.Throttle] = {}
        if guarded:
            query = rows.filter(key__in=guarded)
            if self._postgres:
                self._advisory_locks(db, "throttle", guarded)
                query = query.select_for_update()
            found.update((row.key, row) for row in query)
        if plain:
            found.update((row.key, row) for row in rows.filter(key__in=sorted(set(plain))))
        with self._decoding("a throttle state"):
            states = {key: _throttle_from_row(row) for key, row in found.items()}
        out = {key: states.get(key, ThrottleState(key)) for key in request.throttles}
        if request.count:
            assert request.at is not None
            at, keep = request.at, request.keep
            counted = []
            for key in request.count:
                before = out[key] = states.get(key, ThrottleState(key))
                counted.append(ThrottleState(key=key, consecutive=before.consecutive + 1,
                                             last_failure_at=at,
                                             recent=(*before.recent, at)[-keep:]))
            self._put_throttles(db, counted)
        return out

    def _fetch_accounts(self, db: str, request: Fetch,
                        ) -> tuple[dict[str, AccountRecord], dict[str, AccountRecord]]:
        ids, keys = sorted(set(request.accounts)), sorted(set(request.logins))
        rows = m.Account.objects.using(db).select_related("credential")
        found: list[m.Account] = []
        if ids and request.lock and self._write and self._postgres:
            # Locked in id order; the logins (never locked) are read apart.
            found.extend(rows.filter(id__in=ids).order_by("id")
                         .select_for_update(of=("self",)))
            if keys:
                found.extend(rows.filter(login_key__in=keys))
        elif ids or keys:
            found.extend(rows.filter(Q(id__in=ids) | Q(login_key__in=keys)))
        wanted_ids, wanted_keys = set(ids), set(keys)
        by_login: dict[str, AccountRecord] = {}
        accounts: dict[str, AccountRecord] = {}
        if request.lock and self._write:
            self._locked.update((row.id, (row.merged_into_id, row.merged_seq))
                                for row in found if row.id in wanted_ids)
        with self._decoding("an account"):
            for row in found:
                record = _record_from_row(row)
                if row.id in wanted_ids:
                    accounts[row.id] = record
                if row.login_key in wanted_keys:
                    by_login[row.login_key] = record
        return by_login, accounts

    def _fetch_links(self, db: str, account_ids: Sequence[str]) -> dict[str, tuple[ChildLink, ...]]:
        if not account_ids:
            return {}
        out: dict[str, list[ChildLink]] = {i: [] for i in account_ids}
        rows = (m.ChildLink.objects.using(db).filter(account_id__in=sorted(set(account_ids)))
                .order_by("account_id", "id"))
        with self._decoding("a child link"):
            for row in rows:
                out[row.account_id].append(_link_from_row(row))
        return {i: tuple(links) for i, links in out.items()}

    def _fetch_absorbed(self, db: str, account_ids: Sequence[str], *, locked: bool,
                        ) -> dict[str, tuple[Account, ...]]:
        if not account_ids:
            return {}
        out: dict[str, list[Account]] = {i: [] for i in account_ids}
        rows = (m.Account.objects.using(db)
                .filter(merged_into_id__in=sorted(set(account_ids)), status=_MERGED)
                .order_by("merged_into_id", "merged_seq", "id"))
        with self._decoding("an account"):
            for row in rows:
                out[str(row.merged_into_id)].append(_account_from_row(row))
                if locked and row.merged_into_id in self._locked:
                    # Protected by its holder's lock (rule 2).
                    self._locked[row.id] = (row.merged_into_id, row.merged_seq)
        return {i: tuple(accounts) for i, accounts in out.items()}

    def _fetch_receipts(self, db: str, keys: Sequence[tuple[str, str]],
                        ) -> dict[tuple[str, str], StoredReceipt]:
        if not keys:
            return {}
        wanted = Q()
        for principal_id, key in set(keys):
            wanted |= Q(principal_id=principal_id, key=key)
        with self._decoding("a receipt"):
            return {(row.principal_id, row.key): _receipt_from_row(row)
                    for row in m.Receipt.objects.using(db).filter(wanted)}

    def _fetch_establishments(self, db: str, uais: Sequence[str]) -> dict[str, Establishment]:
        if not uais:
            return {}
        rows = m.Establishment.objects.using(db).filter(uai__in=sorted(set(uais)))
        with self._decoding("an establishment"):
            return {row.uai: Establishment(uai=row.uai, name=row.name) for row in rows}

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        with self._translating():
            rows = list(m.OutboxEvent.objects.using(self._main()).filter(published=False)
                        .order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in rows]

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        with self._translating():
            rows = m.AuditEntry.objects.using(self._main()).all()
            if account_id is not None:
                rows = rows.filter(Q(account_id=account_id) | Q(actor=account_id))
            newest = list(rows.order_by("-id")[:max(0, limit)])
        with self._decoding("an audit record"):
            main = [(row.id, _audit_from_row(row)) for row in reversed(newest)]
        if not self._uses_journal():
            return [record for _, record in main]
        # The journal's records of failures, in their places among the database's.
        with self._translating():
            journal = self._journal().audit_records(account_id, limit)
        return merge_trails(main, journal, limit)

    # writing -------------------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> None:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        attempts = Attempts()
        if self._uses_journal():
            changes, attempts = split_attempts(changes)
        side_audit = [r for r in changes.audit if r.outcome != _SUCCESS] \
            if self._uses_side() else []
        main_audit = [r for r in changes.audit if r not in side_audit] \
            if side_audit else list(changes.audit)
        with self._translating():
            on_main = bool(changes) and not (changes.only_attempts and self._uses_side())
            db = self._main() if on_main or attempts else ""
            if changes.expect:
                self._check_expectations(db, changes)
            if changes.establishments:
                m.Establishment.objects.using(db).bulk_create(
                    [m.Establishment(uai=e.uai, name=e.name)
                     for e in _last_by(changes.establishments, lambda e: e.uai)],
                    update_conflicts=True, unique_fields=["uai"], update_fields=["name"])
            if changes.new_accounts:
                self._insert_accounts(db, changes)
            if changes.accounts:
                self._replace_accounts(db, changes.accounts)
            for sign_in in changes.sign_ins:
                if not m.Account.objects.using(db).filter(id=sign_in.account_id).update(
                        last_signed_in_at=_to_db(sign_in.at)):
                    raise ExpectationFailed(f"no account {sign_in.account_id!r}")
            if changes.credentials:
                m.Credential.objects.using(db).bulk_create(
                    [_credential_row(c)
                     for c in _last_by(changes.credentials, lambda c: c.account_id)],
                    update_conflicts=True, unique_fields=["account"],
                    update_fields=["password_hash", "kind", "expires_at"])
            if changes.drop_credentials:
                m.Credential.objects.using(db).filter(
                    account_id__in=sorted(set(changes.drop_credentials))).delete()
            if changes.unlink:
                gone = Q()
                for link in changes.unlink:
                    gone |= Q(account_id=link.account_id, child_id=link.child.id)
                m.ChildLink.objects.using(db).filter(gone).delete()
            if changes.link:
                self._link(db, changes.link)
            if changes.throttles:
                self._put_throttles(self._counters(), changes.throttles)
            if changes.receipts:
                m.Receipt.objects.using(db).bulk_create(
                    [m.Receipt(principal_id=s.principal_id, key=s.key, login_key=s.login_key,
                               receipt=s.receipt.to_dict())
                     for s in _last_by(changes.receipts, lambda s: (s.principal_id, s.key))],
                    update_conflicts=True, unique_fields=["principal_id", "key"],
                    update_fields=["login_key", "receipt"])
            if changes.events:
                self._append_events(db, changes)
            if changes.published:
                m.OutboxEvent.objects.using(db).filter(
                    position__in=sorted(set(changes.published)), published=False,
                ).update(published=True)
            if attempts:
                self._journal_attempts(db, attempts, main_audit)
            elif main_audit:
                m.AuditEntry.objects.using(db).bulk_create([_audit_row(r) for r in main_audit])
            if side_audit:
                m.AuditEntry.objects.using(self._counters()).bulk_create(
                    [_audit_row(r) for r in side_audit])

    def _journal_attempts(self, db: str, attempts: Attempts,
                          main_audit: Sequence[AuditRecord]) -> None:
        """Counters and records of failures into the journal (SQLite, rule 6).

        The change set's other records go into the database, and each
        failure remembers which of the database's records it follows.
        """
        journal = self._journal()
        journal.put_throttles(attempts.throttles)
        rows = m.AuditEntry.objects.using(db)
        if not attempts.failures:
            rows.bulk_create([_audit_row(r) for r in main_audit])
            return
        before = int(rows.aggregate(last=Max("id"))["last"] or 0)
        after = before
        if main_audit:
            rows.bulk_create([_audit_row(r) for r in main_audit])
            after = int(rows.aggregate(last=Max("id"))["last"] or 0)
        journal.append_failures(attempts.placed(before, after, len(main_audit)))

    def _check_expectations(self, db: str, changes: ChangeSet) -> None:
        ids = sorted({e.account_id for e in changes.expect})
        rows = m.Account.objects.using(db).filter(id__in=ids).select_related("credential")
        if self._postgres and self._write:
            rows = rows.order_by("id").select_for_update(of=("self",))
        current: dict[str, tuple[str, str | None]] = {}
        for row in rows:
            credential: m.Credential | None = getattr(row, "credential", None)
            current[row.id] = (row.status,
                               None if credential is None else credential.password_hash)
        for expected in changes.expect:
            if current.get(expected.account_id) != (expected.status.value,
                                                     expected.password_hash):
                raise ExpectationFailed()

    def _insert_accounts(self, db: str, changes: ChangeSet) -> None:
        new = changes.new_accounts
        seqs = self._next_seqs(db, {n.account.merged_into for n in new} - {None})
        rows = []
        for item in new:
            target = item.account.merged_into
            seq = None
            if target is not None:
                seq = seqs[target]
                seqs[target] += 1
            rows.append(_account_row(item.account, login_key=item.login_key, merged_seq=seq))
        if len({r.id for r in rows}) != len(rows) or len({r.login_key for r in rows}) != len(rows):
            raise LoginTaken(new[0].login_key)
        try:
            m.Account.objects.using(db).bulk_create(rows)
        except IntegrityError as error:
            if _is_account_clash(error):
                raise LoginTaken(", ".join(n.login_key for n in new)) from None
            raise

    def _next_seqs(self, db: str, targets: set[str | None]) -> dict[str, int]:
        """The next ``merged_seq`` of each account in *targets*."""
        wanted = sorted(t for t in targets if t is not None)
        if not wanted:
            return {}
        last = dict(m.Account.objects.using(db).filter(merged_into_id__in=wanted)
                    .values("merged_into_id").annotate(last=Max("merged_seq"))
                    .values_list("merged_into_id", "last"))
        return {t: int(last.get(t) or 0) + 1 for t in wanted}

    def _replace_accounts(self, db: str, accounts: Sequence[Account]) -> None:
        latest = _last_by(accounts, lambda a: a.id)
        before = {a.id: self._locked[a.id] for a in latest if a.id in self._locked}
        unread = [a.id for a in latest if a.id not in before]
        if unread:
            before.update((row[0], (row[1], row[2])) for row in m.Account.objects.using(db)
                          .filter(id__in=unread).values_list("id", "merged_into_id",
                                                             "merged_seq"))
        missing = [a.id for a in latest if a.id not in before]
        if missing:
            raise ExpectationFailed(f"no account {missing[0]!r} to replace")
        moved = {a.merged_into for a in latest if a.merged_into != before[a.id][0]}
        seqs = self._next_seqs(db, moved)
        rows = []
        # Absorbed in the order the change set names them (rule 4).
        for account in latest:
            old_target, old_seq = before[account.id]
            seq = old_seq
            if account.merged_into != old_target:
                seq = None
                if account.merged_into is not None:
                    seq = seqs[account.merged_into]
                    seqs[account.merged_into] += 1
            rows.append(_account_row(account, merged_seq=seq))
        m.Account.objects.using(db).bulk_update(rows, list(_ACCOUNT_FIELDS))
        self._locked.update((row.id, (row.merged_into_id, row.merged_seq)) for row in rows
                            if row.id in self._locked)

    def _link(self, db: str, links: Sequence[ChildLink]) -> None:
        # The child as first named (the links keep each letter's naming).
        children: dict[str, Child] = {}
        for link in links:
            children.setdefault(link.child.id, link.child)
        m.Child.objects.using(db).bulk_create(
            [m.Child(id=c.id, first_name=c.first_name, last_name=c.last_name,
                     establishment_uai=c.establishment_uai) for c in children.values()],
            ignore_conflicts=True)
        # A child linked again to the same account keeps its row, so its place.
        m.ChildLink.objects.using(db).bulk_create(
            [_link_row(link)
             for link in _last_by(links, lambda link: (link.account_id, link.child.id))],
            update_conflicts=True, unique_fields=["account", "child"],
            update_fields=list(_LINK_FIELDS))

    def _put_throttles(self, db: str, states: Sequence[ThrottleState]) -> None:
        m.Throttle.objects.using(db).bulk_create(
            [_throttle_row(s) for s in _last_by(states, lambda s: s.key)],
            update_conflicts=True, unique_fields=["key"],
            update_fields=["consecutive", "last_failure_at", "recent"])

    def _append_events(self, db: str, changes: ChangeSet) -> None:
        # One writer at a time appends (the advisory lock on PostgreSQL, the
        # write lock on SQLite), so max + 1 leaves no gap, even after a rollback.
        if self._postgres:
            self._advisory_locks(db, "outbox", [""])
        rows = m.OutboxEvent.objects.using(db)
        last = self._last_position(db)
        rows.bulk_create([m.OutboxEvent(position=last + n, name=event.name,
                                        payload=event.to_payload())
                          for n, event in enumerate(changes.events, 1)])

    # tier ``register`` (the school's register) -------------------------------------
    def register_fetch(self, request: RegisterFetch) -> RegisterFetched:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        found: dict[str, Any] = {}
        with self._translating():
            db = self._main()
            entries = m.RegisterEntry.objects.using(db)
            if request.entries:
                wanted = Q()
                for uai, external_id in set(request.entries):
                    wanted |= Q(establishment_uai=uai, external_id=external_id)
                with self._decoding("a register entry"):
                    found["entries"] = {(r.establishment_uai, r.external_id): r
                                        for r in map(_register_from_row, entries.filter(wanted))}
            if request.accounts:
                by_account: dict[str, list[RegisterRecord]] = {a: [] for a in request.accounts}
                rows = (entries.filter(account_id__in=sorted(set(request.accounts)))
                        .order_by("account_id", "establishment_uai", "external_id"))
                with self._decoding("a register entry"):
                    for row in rows:
                        by_account[row.account_id].append(_register_from_row(row))
                found["by_account"] = {a: tuple(v) for a, v in by_account.items()}
            if request.origin_links:
                origin: dict[str, list[ChildLink]] = {c: [] for c in request.origin_links}
                links = (m.ChildLink.objects.using(db)
                         .filter(origin_establishment_uai=request.establishment,
                                 child_id__in=sorted(set(request.origin_links)),
                                 account__role=Role.RESPONSABLE.value)
                         .order_by("account_id", "id"))
                with self._decoding("a child link"):
                    for link in links:
                        origin[link.child_id].append(_link_from_row(link))
                found["origin_links"] = {c: tuple(v) for c, v in origin.items()}
            if request.closures:
                closures = m.RegisterClosure.objects.using(db).filter(
                    account_id__in=sorted(set(request.closures)))
                with self._decoding("a closure"):
                    found["closures"] = {
                        c.account_id: Closure(c.account_id, c.establishment_uai,
                                              _from_db(c.closed_at)) for c in closures}
        return RegisterFetched(**found)

    def register_apply(self, changes: RegisterChanges) -> None:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        if not changes:
            return
        with self._translating():
            db = self._main()
            if changes.drop:
                gone = Q()
                for uai, external_id in changes.drop:
                    gone |= Q(establishment_uai=uai, external_id=external_id)
                m.RegisterEntry.objects.using(db).filter(gone).delete()
            if changes.put:
                m.RegisterEntry.objects.using(db).bulk_create(
                    [_register_row(r) for r in _last_by(changes.put, lambda r: r.key)],
                    update_conflicts=True, unique_fields=["establishment_uai", "external_id"],
                    update_fields=["account", "display_name", "email", "children"])
            if changes.close:
                m.RegisterClosure.objects.using(db).bulk_create(
                    [m.RegisterClosure(account_id=c.account_id,
                                       establishment_uai=c.establishment_uai,
                                       closed_at=_to_db(c.closed_at))
                     for c in _last_by(changes.close, lambda c: c.account_id)],
                    update_conflicts=True, unique_fields=["account"],
                    update_fields=["establishment_uai", "closed_at"])
            if changes.reopen:
                m.RegisterClosure.objects.using(db).filter(
                    account_id__in=sorted(set(changes.reopen))).delete()

    def register_page(self, establishment_uai: str, cursor: str | None,
                      limit: int) -> RegisterPage:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        with self._translating():
            rows = m.RegisterEntry.objects.using(self._main()).filter(
                establishment_uai=establishment_uai)
            if cursor is not None:
                rows = rows.filter(external_id__gt=cursor)
            page = list(rows.order_by("external_id")[:max(0, limit)])
        with self._decoding("a register entry"):
            items = tuple(_register_from_row(row) for row in page)
        return RegisterPage(items, items[-1].external_id if len(items) == limit else None)

    def linked_children_page(self, establishment_uai: str, cursor: str | None,
                             limit: int) -> RegisterPage:
        self._conn  # noqa: B018 - refuses a unit of work used outside its block
        with self._translating():
            rows = m.ChildLink.objects.using(self._main()).filter(
                origin_establishment_uai=establishment_uai,
                account__role=Role.RESPONSABLE.value)
            if cursor is not None:
                rows = rows.filter(child_id__gt=cursor)
            ids = tuple(rows.order_by("child_id").values_list("child_id", flat=True)
                        .distinct()[:max(0, limit)])
        return RegisterPage(ids, ids[-1] if len(ids) == limit else None)
    @staticmethod
    def _last_position(db: str) -> int:
        """The last outbox position given: in the outbox, or in its head once the
        purge deleted events (tier retention)."""
        last = m.OutboxEvent.objects.using(db).aggregate(last=Max("position"))["last"]
        head = m.OutboxHead.objects.using(db).filter(id=1).values_list(
            "last_position", flat=True).first()
        return max(int(last or 0), int(head or 0))

    # tier bulk_load ------------------------------------------------------------------
    def insert_bulk(self, rows: Sequence[Any]) -> None:
        """Store :class:`~account_merge.storage.bulk.BulkAccount` rows (see ``bulk_insert``)."""
        if not rows:
            return
        db = self._main()
        responsable = Role.RESPONSABLE.value
        with self._translating():
            accounts = [m.Account(id=r.account_id, login=r.login, login_key=r.login_key,
                                  role=responsable, status=r.status.value,
                                  display_name=r.display_name,
                                  establishment_uai=r.establishment_uai,
                                  created_at=_to_db(r.created_at)) for r in rows]
            try:
                m.Account.objects.using(db).bulk_create(accounts)
            except IntegrityError as error:
                if _is_account_clash(error):
                    raise LoginTaken("a login or id of the bulk") from None
                raise
            m.Credential.objects.using(db).bulk_create([
                m.Credential(account_id=r.account_id, password_hash=r.password_hash,
                             kind=r.credential_kind.value,
                             expires_at=_optional_to_db(r.credential_expires_at))
                for r in rows])
            m.Child.objects.using(db).bulk_create(
                [m.Child(id=r.child_id, first_name=r.child_first_name,
                         last_name=r.child_last_name, establishment_uai=r.establishment_uai)
                 for r in rows], ignore_conflicts=True)
            m.ChildLink.objects.using(db).bulk_create([
                m.ChildLink(account_id=r.account_id, child_id=r.child_id,
                            first_name=r.child_first_name, last_name=r.child_last_name,
                            establishment_uai=r.establishment_uai,
                            origin_account_id=r.account_id,
                            origin_establishment_uai=r.establishment_uai, via_merge=False,
                            linked_at=_to_db(r.created_at))
                for r in rows])

    # tiers email_index and notices (the way back) -------------------------------------
    def index_email(self, account_id: str, key: str | None) -> None:
        with self._translating():
            rows = m.EmailIndexEntry.objects.using(self._main())
            if key is None:
                rows.filter(account_id=account_id).delete()
            else:
                rows.bulk_create([m.EmailIndexEntry(account_id=account_id, key=key)],
                                 update_conflicts=True, unique_fields=["account"],
                                 update_fields=["key"])

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        with self._translating():
            found = list(m.Account.objects.using(self._main()).select_related("credential")
                         .filter(email_index__key=key).order_by("id")[:max(0, limit)])
        with self._decoding("an account"):
            return [_record_from_row(row) for row in found]

    def notice_cursor(self) -> int:
        with self._translating():
            found = (m.NoticeCursor.objects.using(self._main()).filter(id=1)
                     .values_list("position", flat=True).first())
        return 0 if found is None else int(found)

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        with self._translating():
            rows = list(m.OutboxEvent.objects.using(self._main()).filter(position__gt=position)
                        .order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in rows]

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        with self._translating():
            db = self._main()
            m.Notice.objects.using(db).bulk_create(
                [_notice_row(state) for state in states], ignore_conflicts=True)
            cursors = m.NoticeCursor.objects.using(db)
            # Raised, never lowered (two deliveries may run at once).
            if not cursors.filter(id=1, position__lt=cursor).update(position=cursor):
                cursors.bulk_create([m.NoticeCursor(id=1, position=cursor)],
                                    ignore_conflicts=True)

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        with self._translating():
            rows = list(m.Notice.objects.using(self._main()).select_related("event")
                        .filter(status=NoticeStatus.PENDING.value)
                        .order_by("event_id", "id")[:max(0, limit)])
        with self._decoding("a notice"):
            return [(_notice_from_row(row), _outbox_entry_from_row(row.event)) for row in rows]

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        if not states:
            return
        with self._translating():
            m.Notice.objects.using(self._main()).bulk_update(
                [_notice_row(state) for state in states],
                ["event", "role", "status", "attempts", "updated_at"])


def _notice_row(state: NoticeState) -> m.Notice:
    return m.Notice(id=state.id, event_id=state.position, role=state.role,
                    status=state.status.value, attempts=state.attempts,
                    updated_at=_optional_to_db(state.updated_at))


def _notice_from_row(row: m.Notice) -> NoticeState:
    return NoticeState(id=row.id, position=int(row.event_id), role=row.role,
                       status=NoticeStatus(row.status), attempts=row.attempts,
                       updated_at=_optional_from_db(row.updated_at))


# -- tier retention ----------------------------------------------------------------------
_ESTABLISHMENT = "establishment:"


def _naming_someone() -> Q:
    """The audit rows :func:`~account_merge.domain.retention.names_someone` is true of
    (on rows annotated with ``actor_head`` and ``detail_head``)."""
    return (Q(account_id__isnull=False) | Q(login__isnull=False)
            | (Q(actor__isnull=False) & ~Q(actor_head=_ESTABLISHMENT))
            | (Q(detail__isnull=False) & ~Q(detail_head=PSEUDONYMISED)))


def _prefix_end(prefix: str) -> str:
    """The first text after every text that starts with *prefix* (binary order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _counters_named(forgotten: Forgotten) -> list[Q]:
    """The counters *forgotten* names: its keys, then each prefix's range (one query
    each: an OR of hundreds of them is too deep for SQLite)."""
    found = [Q(key__in=list(forgotten.counter_keys))] if forgotten.counter_keys else []
    return found + [Q(key__gte=p, key__lt=_prefix_end(p)) for p in forgotten.counter_prefixes]


class _DjangoRetention(_DjangoUnitOfWork):
    """The unit of work with tier ``retention`` (the journal's part too, on SQLite)."""

    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        db = self._main()
        rows = m.Account.objects.using(db).select_related("credential")
        if kind is DueKind.UNACTIVATED:
            field = "credential__expires_at"
            rows = rows.filter(status=AccountStatus.PROVISIONAL.value,
                               credential__kind=CredentialKind.PROVISIONAL.value,
                               credential__expires_at__lte=_to_db(before))
        elif kind is DueKind.UNUSED:
            field = "last_signed_in_at"
            rows = rows.filter(status=AccountStatus.ACTIVE.value,
                               last_signed_in_at__lte=_to_db(before))
        else:  # closed by the register, by the closure's time
            field = "closure__closed_at"
            rows = rows.filter(status=AccountStatus.CLOSED.value,
                               closure__closed_at__lte=_to_db(before)).annotate(
                closed_at=F("closure__closed_at"))
        if after is not None:
            at = _to_db(after[0])
            rows = rows.filter(Q(**{f"{field}__gt": at}) | Q(**{field: at, "id__gt": after[1]}))
        with self._translating():
            found = list(rows.order_by(field, "id")[:max(0, limit)])
        with self._decoding("an account"):
            records = tuple(_record_from_row(row) for row in found)
        last = None
        if records and len(records) == limit:
            record = records[-1]
            when: datetime | None
            if kind is DueKind.CLOSED:
                when = _from_db(found[-1].closed_at)  # type: ignore[attr-defined]
            else:
                when = (record.credential.expires_at if kind is DueKind.UNACTIVATED
                        and record.credential is not None else record.account.last_signed_in_at)
            assert when is not None
            last = (when, record.account.id)
        return DuePage(records=records, after=last)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        db = self._main()
        credentials = m.Credential.objects.using(db)
        with self._translating():
            found = list(credentials.filter(
                kind=CredentialKind.PROVISIONAL.value, expires_at__lte=_to_db(expired_by))
                .exclude(password_hash=ERASED_HASH).order_by("expires_at")
                .values_list("account_id", "account__status")[:max(0, limit)])
            merged = [i for i, status in found if status == _MERGED]
            others = [i for i, status in found if status != _MERGED]
            erased = 0
            if merged:
                erased += credentials.filter(account_id__in=merged).exclude(
                    password_hash=ERASED_HASH).delete()[0]
            if others:
                erased += credentials.filter(account_id__in=others).exclude(
                    password_hash=ERASED_HASH).update(password_hash=ERASED_HASH)
        return erased

    def _audit_rows(self, db: str) -> Any:
        return m.AuditEntry.objects.using(db).alias(
            login_lower=Lower("login"), actor_head=Substr("actor", 1, len(_ESTABLISHMENT)),
            detail_head=Substr("detail", 1, len(PSEUDONYMISED)))

    def _naming(self, db: str, forgotten: Forgotten) -> list[m.AuditEntry]:
        ids, logins = list(forgotten.account_ids), [ascii_lower(t) for t in forgotten.logins]
        found = {row.id: row for row in self._audit_rows(db).filter(
            Q(account_id__in=ids) | Q(actor__in=ids) | Q(login_lower__in=logins))}
        return [found[i] for i in sorted(found)]

    def _mentioning(self, db: str, forgotten: Forgotten) -> list[tuple[m.AuditEntry, str]]:
        return [(row, account_id) for at, account_id in forgotten.created
                for row in m.AuditEntry.objects.using(db).filter(
                    at=_to_db(at), detail__contains=account_id)]

    @staticmethod
    def _establishments(db: str, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        return dict(m.Account.objects.using(db).filter(id__in=list(ids)).values_list(
            "id", "establishment_uai"))

    def _rewrite(self, db: str, rows: Sequence[m.AuditEntry]) -> None:
        if rows:
            m.AuditEntry.objects.using(db).bulk_update(
                rows, ["actor", "account_id", "login", "detail"], batch_size=500)

    def forget(self, forgotten: Forgotten) -> None:
        db = self._main()
        ids = list(forgotten.account_ids)
        with self._translating():
            places = self._establishments(db, ids)
            if self._uses_journal():
                self._journal().forget(forgotten, places)
            named = self._naming(db, forgotten)
            places.update(self._establishments(
                db, sorted({r.account_id for r in named if r.account_id} - set(places))))
            changed = []
            for row in named:
                record = pseudonymised(_audit_from_row(row), places.get(row.account_id or ""))
                row.actor, row.account_id, row.login, row.detail = (
                    record.actor, record.account_id, record.login, record.detail)
                changed.append(row)
            for row, account_id in self._mentioning(db, forgotten):
                row.detail = (row.detail or "").replace(account_id, DELETED_ACCOUNT)
                changed.append(row)
            self._rewrite(db, changed)
            for condition in _counters_named(forgotten):
                m.Throttle.objects.using(db).filter(condition).delete()
            if not ids:
                return
            m.Receipt.objects.using(db).filter(principal_id__in=ids).delete()
            m.EmailIndexEntry.objects.using(db).filter(account_id__in=ids).delete()
            m.RegisterEntry.objects.using(db).filter(account_id__in=ids).delete()
            m.RegisterClosure.objects.using(db).filter(account_id__in=ids).delete()
            children = set(m.ChildLink.objects.using(db).filter(account_id__in=ids)
                           .values_list("child_id", flat=True))
            m.ChildLink.objects.using(db).filter(account_id__in=ids).delete()
            m.Child.objects.using(db).filter(id__in=children, links__isnull=True).delete()
            m.Credential.objects.using(db).filter(account_id__in=ids).delete()
            # Absorbed accounts first: they name their holder.
            m.Account.objects.using(db).filter(id__in=ids, merged_into__isnull=False).delete()
            m.Account.objects.using(db).filter(id__in=ids).delete()

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        db = self._main()
        with self._translating():
            rows = self._audit_rows(db).filter(at__lt=_to_db(before))
            if pseudonymise:
                rows = rows.filter(_naming_someone())
            due = list(rows.order_by("at", "id")[:max(0, limit)])
            if not pseudonymise:
                m.AuditEntry.objects.using(db).filter(id__in=[r.id for r in due]).delete()
            else:
                places = self._establishments(db, sorted({r.account_id for r in due
                                                          if r.account_id}))
                for row in due:
                    record = pseudonymised(_audit_from_row(row),
                                           places.get(row.account_id or ""))
                    row.actor, row.account_id, row.login, row.detail = (
                        record.actor, record.account_id, record.login, record.detail)
                self._rewrite(db, due)
            ended = len(due)
            if not self._uses_journal() or ended >= limit:
                return ended
            return ended + self._journal().end_audit(
                before, limit - ended, pseudonymise=pseudonymise,
                establishments=lambda ids: self._establishments(db, ids))

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        rows = m.OutboxEvent.objects.using(self._main()).filter(position__gt=after)
        if published is not None:
            rows = rows.filter(published=published)
        with self._translating():
            found = list(rows.order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in found]

    def delete_outbox(self, positions: Sequence[int]) -> int:
        wanted = sorted(set(positions))
        if not wanted:
            return 0
        db = self._main()
        with self._translating():
            pending = set(m.Notice.objects.using(db).filter(
                event_id__in=wanted, status=NoticeStatus.PENDING.value).values_list(
                "event_id", flat=True))
            doomed = [p for p in wanted if p not in pending]
            if not doomed:
                return 0
            if self._postgres:  # as appending does: one writer of positions at a time
                self._advisory_locks(db, "outbox", [""])
            last = self._last_position(db)
            heads = m.OutboxHead.objects.using(db)
            if not heads.filter(id=1).update(last_position=last):
                heads.bulk_create([m.OutboxHead(id=1, last_position=last)])
            m.Notice.objects.using(db).filter(event_id__in=doomed).delete()
            _, deleted = m.OutboxEvent.objects.using(db).filter(position__in=doomed).delete()
            return deleted.get(m.OutboxEvent._meta.label, 0)

    def delete_counters(self, before: datetime, limit: int) -> int:
        db = self._main()
        with self._translating():
            keys = list(m.Throttle.objects.using(db).filter(
                Q(last_failure_at__isnull=True) | Q(last_failure_at__lt=_to_db(before)))
                .values_list("key", flat=True)[:max(0, limit)])
            deleted = m.Throttle.objects.using(db).filter(key__in=keys).delete()[0]
            if not self._uses_journal() or deleted >= limit:
                return deleted
            return deleted + self._journal().delete_counters(before, limit - deleted)

    def held_about(self, forgotten: Forgotten) -> Held:
        db = self._main()
        with self._translating():
            rows = {row.id: row for row in self._naming(db, forgotten)}
            rows.update((row.id, row) for row, _ in self._mentioning(db, forgotten))
            counter_rows = [row for condition in _counters_named(forgotten)
                            for row in m.Throttle.objects.using(db).filter(condition)]
            receipts = list(m.Receipt.objects.using(db).filter(
                principal_id__in=list(forgotten.account_ids)).order_by("principal_id", "key"))
            journaled: list[Any] = []
            kept: list[ThrottleState] = []
            if self._uses_journal():
                journaled, kept = self._journal().held_about(forgotten)
        with self._decoding("an audit record, a counter or a receipt"):
            main = [(i, _audit_from_row(rows[i])) for i in sorted(rows)]
            by_key = {row.key: _throttle_from_row(row) for row in counter_rows}
            by_key.update((c.key, c) for c in kept)  # the journal's are the current ones
            return Held(
                audit=tuple(merge_trails(main, journaled, len(main) + len(journaled))),
                counters=tuple(by_key[k] for k in sorted(by_key)),
                receipts=tuple((r.principal_id, r.key, MergeReceipt.from_dict(r.receipt))
                               for r in receipts))
