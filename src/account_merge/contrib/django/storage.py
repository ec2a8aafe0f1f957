"""DjangoStorage: the store in the project's database, through Django's ORM.

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
``atomic``, Django's ``TestCase``), the library's writes are only durable
when the host commits.  That includes the failed-attempt counters of the
throttle: a view that lets ``AccountMergeError`` propagate out of an
atomic request rolls them back.  Views that call the service should
catch the library's errors (and show :func:`account_merge.messages.error_message`),
or not run in a request transaction.

Concurrency.  On PostgreSQL (READ COMMITTED): ``lock_accounts`` is a
``SELECT ... FOR UPDATE`` ordered by id; in a writing unit of work,
``get_throttle`` and ``get_receipt`` first take a transaction-level
advisory lock on their key (so that a counter that does not exist yet is
protected too), then read with ``FOR UPDATE``; ``append_event`` takes one
advisory lock for the outbox, so positions are gap-free and become
visible in order.  Locks are taken in one order (receipt, accounts by id,
counters, outbox).  On SQLite, a writing unit of work takes the
database's write lock with its first statement (as ``BEGIN IMMEDIATE``
would; with Django 5.1's ``"transaction_mode": "IMMEDIATE"`` option,
Django already does), so writers wait for each other up to the
connection's ``timeout`` instead of failing half-way.  Serialization
failures, deadlocks, lock timeouts and "database is locked" become
:class:`~account_merge.exceptions.ConcurrentUpdate`, which the service
retries; any other database error becomes
:class:`~account_merge.exceptions.StorageError` naming the alias and the
database (never its password).

Rows are translated to domain objects explicitly; a row the domain
refuses is a ``StorageError`` too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, Self, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Max, Q, QuerySet

from account_merge.contrib.django import models as m
from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event, OutboxEntry, event_from_payload
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState
from account_merge.exceptions import AccountMergeError, ConcurrentUpdate, StorageError
from account_merge.ports import LoginTaken, StoredReceipt

__all__ = ["DjangoStorage"]

P = ParamSpec("P")
T = TypeVar("T")

#: SQLSTATEs of a lost race on PostgreSQL: serialization failure,
#: deadlock, lock not available.
_CONCURRENT_SQLSTATES: Final = frozenset({"40001", "40P01", "55P03"})
_LOCKED_TEXTS: Final = ("database is locked", "database table is locked")


# -- times -----------------------------------------------------------------------------
def _to_db(value: datetime) -> datetime:
    utc = value.astimezone(UTC)
    return utc if settings.USE_TZ else utc.replace(tzinfo=None)


def _optional_to_db(value: datetime | None) -> datetime | None:
    return None if value is None else _to_db(value)


def _from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _optional_from_db(value: datetime | None) -> datetime | None:
    return None if value is None else _from_db(value)


# -- rows <-> domain ---------------------------------------------------------------------
def _account_from_row(row: m.Account) -> Account:
    return Account(
        id=row.id, login=row.login, role=Role(row.role), status=AccountStatus(row.status),
        display_name=row.display_name, establishment_uai=row.establishment_uai,
        created_at=_from_db(row.created_at), email=row.email, merged_into=row.merged_into_id,
    )


def _account_fields(account: Account) -> dict[str, Any]:
    return {
        "login": account.login, "role": account.role.value, "status": account.status.value,
        "display_name": account.display_name, "establishment_uai": account.establishment_uai,
        "created_at": _to_db(account.created_at), "email": account.email,
        "merged_into_id": account.merged_into,
    }


def _credential_from_row(row: m.Credential) -> Credential:
    return Credential(account_id=row.account_id, password_hash=row.password_hash,
                      kind=CredentialKind(row.kind),
                      expires_at=_optional_from_db(row.expires_at))


def _link_from_row(row: m.ChildLink) -> ChildLink:
    child = Child(id=row.child_id, first_name=row.first_name, last_name=row.last_name,
                  establishment_uai=row.establishment_uai)
    return ChildLink(account_id=row.account_id, child=child,
                     origin_account_id=row.origin_account_id,
                     origin_establishment_uai=row.origin_establishment_uai,
                     via_merge=row.via_merge, linked_at=_from_db(row.linked_at))


def _throttle_from_row(row: m.Throttle) -> ThrottleState:
    return ThrottleState(key=row.key, consecutive=row.consecutive,
                         last_failure_at=_optional_from_db(row.last_failure_at),
                         recent=tuple(datetime.fromisoformat(t) for t in row.recent))


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


def _first(rows: QuerySet[Any, T]) -> T | None:
    """The first row of an unordered query (no ORDER BY, unlike ``first()``)."""
    found = list(rows[:1])
    return found[0] if found else None


def _lock_number(namespace: str, key: str) -> int:
    """A signed 64-bit advisory lock number for *key* (collisions only serialise more)."""
    digest = hashlib.blake2b(f"account_merge:{namespace}:{key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


# -- the store -----------------------------------------------------------------------------
class DjangoStorage:
    """The store in a database of the Django project (see the module docstring).

    *using* is a database alias; None lets the project's routers choose.
    Nothing connects before the first unit of work, and connections are
    Django's own: one per thread, opened and closed as Django does.
    """

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def __repr__(self) -> str:
        return f"DjangoStorage(using={self.using!r})"

    def unit_of_work(self, *, write: bool = True) -> _DjangoUnitOfWork:
        """A new unit of work on this thread's connection; use it in a ``with`` block."""
        return _DjangoUnitOfWork(self, write=write)

    def close(self) -> None:
        """Nothing to release: Django owns the connections."""

    def alias(self, *, write: bool) -> str:
        """The database alias a unit of work uses."""
        if self.using is not None:
            return self.using
        chosen = router.db_for_write(m.Account) if write else router.db_for_read(m.Account)
        return str(chosen)


def _describe(connection: BaseDatabaseWrapper) -> str:
    """The store's name in errors: alias, engine and database, never a password."""
    name = connection.settings_dict.get("NAME") or ""
    return f"django:{connection.alias} ({connection.vendor} {name})".replace(" )", ")")


def _is_lost_race(error: DatabaseError) -> bool:
    cause = error.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate in _CONCURRENT_SQLSTATES:
        return True
    text = str(error).lower()
    return any(locked in text for locked in _LOCKED_TEXTS)


def _translate(error: DatabaseError, connection: BaseDatabaseWrapper) -> AccountMergeError:
    store = _describe(connection)
    if _is_lost_race(error):
        return ConcurrentUpdate(f"{store}: the rows were locked or changed by a concurrent "
                                f"writer ({error}); try again")
    return StorageError(store, f"{type(error).__name__}: {error}")


def _in_unit_of_work(
    method: Callable[Concatenate[_DjangoUnitOfWork, P], T],
) -> Callable[Concatenate[_DjangoUnitOfWork, P], T]:
    """Run *method* inside the open transaction, with database errors translated."""

    @functools.wraps(method)
    def wrapper(self: _DjangoUnitOfWork, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._ensure_transaction()
        with self._translating():
            return method(self, *args, **kwargs)

    return wrapper


class _DjangoUnitOfWork:
    def __init__(self, storage: DjangoStorage, *, write: bool) -> None:
        self._storage = storage
        self._write = write
        self._alias: str | None = None
        self._connection: BaseDatabaseWrapper | None = None
        self._atomic: transaction.Atomic | None = None

    # transaction ------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._alias is not None:
            raise RuntimeError("this unit of work is already open")
        alias = self._storage.alias(write=self._write)
        self._alias = alias
        try:
            self._connection = connections[alias]
            self._begin()
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

    def _begin(self) -> None:
        assert self._alias is not None and self._connection is not None
        atomic = transaction.atomic(using=self._alias)
        with self._translating():
            atomic.__enter__()
        self._atomic = atomic
        if self._write and self._connection.vendor == "sqlite":
            try:
                with self._translating():
                    self._take_sqlite_write_lock()
            except BaseException:
                with contextlib.suppress(AccountMergeError):
                    self._end(commit=False)
                raise

    def _take_sqlite_write_lock(self) -> None:
        """Take the write lock now, as ``BEGIN IMMEDIATE`` would.

        A write as the first statement of the transaction waits for the
        lock (up to the connection's timeout) before reading anything, so
        no snapshot can go stale before this unit of work writes.
        """
        assert self._connection is not None
        if getattr(self._connection, "transaction_mode", None) in {"IMMEDIATE", "EXCLUSIVE"}:
            return
        table = self._connection.ops.quote_name(m.Establishment._meta.db_table)
        with self._connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET name = name WHERE 0 = 1")

    def _end(self, *, commit: bool) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is None:
            return
        with self._translating():
            if commit:
                atomic.__exit__(None, None, None)
            else:
                transaction.set_rollback(True, using=self._alias)
                atomic.__exit__(None, None, None)

    def _ensure_transaction(self) -> None:
        if self._alias is None:
            raise RuntimeError("use the unit of work in a 'with' block")
        if self._atomic is None:
            self._begin()

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except DatabaseError as error:
            assert self._connection is not None
            raise _translate(error, self._connection) from error

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turn a row the domain refuses into a StorageError naming the database."""
        try:
            yield
        except (AccountMergeError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, StorageError):
                raise
            assert self._connection is not None
            raise StorageError(_describe(self._connection),
                               f"holds {what} that cannot be read ({error!r})") from error

    @property
    def _db(self) -> str:
        assert self._alias is not None
        return self._alias

    @property
    def _postgres_writer(self) -> bool:
        assert self._connection is not None
        return self._write and self._connection.vendor == "postgresql"

    def _advisory_lock(self, namespace: str, key: str) -> None:
        """On PostgreSQL, in a writing unit of work: lock *key* until the transaction ends."""
        if not self._postgres_writer:
            return
        assert self._connection is not None
        with self._connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_number(namespace, key)])

    # establishments -------------------------------------------------------------------
    @_in_unit_of_work
    def get_establishment(self, uai: str) -> Establishment | None:
        row = _first(m.Establishment.objects.using(self._db).filter(uai=uai))
        if row is None:
            return None
        with self._decoding("an establishment"):
            return Establishment(uai=row.uai, name=row.name)

    @_in_unit_of_work
    def put_establishment(self, establishment: Establishment) -> None:
        m.Establishment.objects.using(self._db).bulk_create(
            [m.Establishment(uai=establishment.uai, name=establishment.name)],
            update_conflicts=True, unique_fields=["uai"], update_fields=["name"])

    # accounts -------------------------------------------------------------------------
    @_in_unit_of_work
    def get_account(self, account_id: str) -> Account | None:
        row = _first(m.Account.objects.using(self._db).filter(id=account_id))
        if row is None:
            return None
        with self._decoding("an account"):
            return _account_from_row(row)

    @_in_unit_of_work
    def get_account_id_by_login(self, login_key: str) -> str | None:
        found = _first(m.Account.objects.using(self._db).filter(login_key=login_key)
                       .values_list("id", flat=True))
        return None if found is None else str(found)

    @_in_unit_of_work
    def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        rows = m.Account.objects.using(self._db).filter(id__in=ids).order_by("id")
        if self._postgres_writer:
            rows = rows.select_for_update()
        with self._decoding("an account"):
            return {row.id: _account_from_row(row) for row in rows}

    @_in_unit_of_work
    def add_account(self, account: Account, login_key: str) -> None:
        fields = _account_fields(account)
        fields["merged_seq"] = self._next_merged_seq(account.merged_into)
        try:
            # A savepoint: a refused insert leaves the unit of work usable.
            with transaction.atomic(using=self._db):
                m.Account.objects.using(self._db).create(id=account.id, login_key=login_key,
                                                         **fields)
        except IntegrityError:
            taken = m.Account.objects.using(self._db).filter(
                Q(id=account.id) | Q(login_key=login_key)).exists()
            if taken:
                raise LoginTaken(login_key) from None
            raise

    def _next_merged_seq(self, merged_into: str | None) -> int | None:
        if merged_into is None:
            return None
        last = (m.Account.objects.using(self._db).filter(merged_into_id=merged_into)
                .aggregate(last=Max("merged_seq"))["last"])
        return int(last or 0) + 1

    @_in_unit_of_work
    def update_account(self, account: Account) -> None:
        rows = m.Account.objects.using(self._db).filter(id=account.id)
        before = _first(rows.values_list("merged_into_id", "merged_seq"))
        if before is None:
            raise KeyError(account.id)
        fields = _account_fields(account)
        if before[0] == account.merged_into:
            fields["merged_seq"] = before[1]
        else:
            fields["merged_seq"] = self._next_merged_seq(account.merged_into)
        rows.update(**fields)

    @_in_unit_of_work
    def accounts_merged_into(self, account_id: str) -> list[Account]:
        rows = m.Account.objects.using(self._db).filter(
            merged_into_id=account_id, status=AccountStatus.MERGED.value).order_by("merged_seq")
        with self._decoding("an account"):
            return [_account_from_row(row) for row in rows]

    # credentials ----------------------------------------------------------------------
    @_in_unit_of_work
    def get_credential(self, account_id: str) -> Credential | None:
        row = _first(m.Credential.objects.using(self._db).filter(account_id=account_id))
        if row is None:
            return None
        with self._decoding("a credential"):
            return _credential_from_row(row)

    @_in_unit_of_work
    def put_credential(self, credential: Credential) -> None:
        m.Credential.objects.using(self._db).bulk_create(
            [m.Credential(account_id=credential.account_id,
                          password_hash=credential.password_hash, kind=credential.kind.value,
                          expires_at=_optional_to_db(credential.expires_at))],
            update_conflicts=True, unique_fields=["account"],
            update_fields=["password_hash", "kind", "expires_at"])

    @_in_unit_of_work
    def delete_credential(self, account_id: str) -> None:
        m.Credential.objects.using(self._db).filter(account_id=account_id).delete()

    # children -------------------------------------------------------------------------
    @_in_unit_of_work
    def links(self, account_id: str) -> list[ChildLink]:
        rows = m.ChildLink.objects.using(self._db).filter(account_id=account_id).order_by("id")
        with self._decoding("a child link"):
            return [_link_from_row(row) for row in rows]

    @_in_unit_of_work
    def add_links(self, links: Sequence[ChildLink]) -> None:
        children = m.Child.objects.using(self._db)
        rows = m.ChildLink.objects.using(self._db)
        for link in links:
            child = link.child
            children.bulk_create(
                [m.Child(id=child.id, first_name=child.first_name, last_name=child.last_name,
                         establishment_uai=child.establishment_uai)],
                ignore_conflicts=True)
            # A child linked again to the same account keeps its place in the list.
            rows.bulk_create(
                [m.ChildLink(account_id=link.account_id, child_id=child.id,
                             first_name=child.first_name, last_name=child.last_name,
                             establishment_uai=child.establishment_uai,
                             origin_account_id=link.origin_account_id,
                             origin_establishment_uai=link.origin_establishment_uai,
                             via_merge=link.via_merge, linked_at=_to_db(link.linked_at))],
                update_conflicts=True, unique_fields=["account", "child"],
                update_fields=["first_name", "last_name", "establishment_uai",
                               "origin_account_id", "origin_establishment_uai", "via_merge",
                               "linked_at"])

    @_in_unit_of_work
    def remove_links(self, links: Sequence[ChildLink]) -> None:
        rows = m.ChildLink.objects.using(self._db)
        for link in links:
            rows.filter(account_id=link.account_id, child_id=link.child.id).delete()

    # throttling -----------------------------------------------------------------------
    @_in_unit_of_work
    def get_throttle(self, key: str) -> ThrottleState | None:
        self._advisory_lock("throttle", key)
        rows = m.Throttle.objects.using(self._db).filter(key=key)
        if self._postgres_writer:
            rows = rows.select_for_update()
        row = _first(rows)
        if row is None:
            return None
        with self._decoding("a throttle state"):
            return _throttle_from_row(row)

    @_in_unit_of_work
    def put_throttle(self, state: ThrottleState) -> None:
        m.Throttle.objects.using(self._db).bulk_create(
            [m.Throttle(key=state.key, consecutive=state.consecutive,
                        last_failure_at=_optional_to_db(state.last_failure_at),
                        recent=[t.isoformat() for t in state.recent])],
            update_conflicts=True, unique_fields=["key"],
            update_fields=["consecutive", "last_failure_at", "recent"])

    # idempotency ----------------------------------------------------------------------
    @_in_unit_of_work
    def get_receipt(self, principal_id: str, key: str) -> StoredReceipt | None:
        self._advisory_lock("receipt", f"{principal_id}\x00{key}")
        row = _first(m.Receipt.objects.using(self._db).filter(principal_id=principal_id,
                                                       key=key))
        if row is None:
            return None
        with self._decoding("a receipt"):
            return _receipt_from_row(row)

    @_in_unit_of_work
    def put_receipt(self, stored: StoredReceipt) -> None:
        m.Receipt.objects.using(self._db).bulk_create(
            [m.Receipt(principal_id=stored.principal_id, key=stored.key,
                       login_key=stored.login_key, receipt=stored.receipt.to_dict())],
            update_conflicts=True, unique_fields=["principal_id", "key"],
            update_fields=["login_key", "receipt"])

    # outbox ---------------------------------------------------------------------------
    @_in_unit_of_work
    def append_event(self, event: Event) -> None:
        # One writer at a time appends (the advisory lock on PostgreSQL, the
        # write lock on SQLite), so max + 1 leaves no gap, even after a rollback.
        self._advisory_lock("outbox", "")
        rows = m.OutboxEvent.objects.using(self._db)
        last = rows.aggregate(last=Max("position"))["last"]
        rows.create(position=int(last or 0) + 1, name=event.name, payload=event.to_payload())

    @_in_unit_of_work
    def unpublished(self, limit: int) -> list[OutboxEntry]:
        rows = (m.OutboxEvent.objects.using(self._db).filter(published=False)
                .order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in rows]

    @_in_unit_of_work
    def mark_published(self, positions: Sequence[int]) -> None:
        m.OutboxEvent.objects.using(self._db).filter(
            position__in=list(positions), published=False).update(published=True)

    # audit ----------------------------------------------------------------------------
    @_in_unit_of_work
    def append_audit(self, record: AuditRecord) -> None:
        m.AuditEntry.objects.using(self._db).create(
            at=_to_db(record.at), action=record.action.value, outcome=record.outcome,
            actor=record.actor, account_id=record.account_id, login=record.login,
            detail=record.detail)

    @_in_unit_of_work
    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        rows = m.AuditEntry.objects.using(self._db).all()
        if account_id is not None:
            rows = rows.filter(Q(account_id=account_id) | Q(actor=account_id))
        newest = list(rows.order_by("-id")[:max(0, limit)])
        with self._decoding("an audit record"):
            return [_audit_from_row(row) for row in reversed(newest)]
