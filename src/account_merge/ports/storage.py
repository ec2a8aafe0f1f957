"""The storage port, core tier: what every store must do.

A use case talks to its store in a few calls, each at the grain of a
whole step, so that a store can serve a step in one round trip:

- :meth:`UnitOfWork.fetch` reads everything one step needs (accounts with
  their credentials, found by login or id, their children, the accounts
  they absorbed, failure counters, receipts), optionally locking what it
  read and counting an attempt, in one call;
- :meth:`UnitOfWork.apply` writes one whole :class:`ChangeSet` (accounts,
  credentials, links, counters, receipts, events, audit records);
- :meth:`Storage.write` applies a change set in a transaction of its own.

A store is a :class:`Storage`: it conforms by having the methods, not by
inheriting.  Optional capabilities (bulk loading, and later tokens,
external ids, retention) are further tiers in :mod:`account_merge.ports.tiers`.

Every rule below that a store decides (order, locking, atomicity, errors)
is checked by the conformance suite, :mod:`account_merge.testing.conformance`,
which every store of this package passes and which a store of yours
should pass too (see ``docs/custom-store.md``).

The rules, in one place:

1. **Units of work.**  ``with storage.unit_of_work() as uow: ...;
   uow.commit()``.  Leaving the block without ``commit()`` (by an
   exception or not) rolls back everything written in it.  After
   ``commit()`` the unit of work stays usable; what follows is a new
   transaction.  After :meth:`UnitOfWork.apply` raised, the unit of work
   must be rolled back (the service always leaves the block).  Counting
   (``Fetch.count``) and ``apply`` happen only in a writing unit of work
   (``write=True``); a read-only one may refuse them.
2. **Isolation.**  Reads inside a unit of work see committed data and
   their own writes.  ``Fetch(lock=True)`` in a writing unit of work
   protects the accounts it names by id and the counters it names from
   every other writer until the unit of work ends (a global write lock,
   ``BEGIN IMMEDIATE``, or row locks taken in a fixed order: counters by
   key, then accounts by id), so that a read-modify-write of them loses no
   concurrent update.  A counted key (``Fetch.count``) is always
   protected so.  Replacing an account (``ChangeSet.accounts``) is only
   done for accounts fetched with ``lock=True`` in the same unit of work,
   or absorbed by one of them (an absorbed account's row changes only
   under its holder's lock).
3. **Errors.**  Driver errors never leave the store: a lost race (lock
   timeout, deadlock, serialization failure, "database is locked")
   becomes :class:`~account_merge.exceptions.ConcurrentUpdate`, which the
   service retries a bounded number of times; anything else
   :class:`~account_merge.exceptions.StorageError` naming the store (a
   file, a URL without its password).  A row the domain refuses when it is
   read back is a ``StorageError`` too.  ``apply`` raises
   :class:`~account_merge.exceptions.LoginTaken` for a login or id in use
   and :class:`~account_merge.exceptions.ExpectationFailed` for a failed
   :class:`Expect` or an account to replace that does not exist.
4. **Order.**  An account's links come back in the order they were
   first linked (a child linked again to the same account keeps its
   place); absorbed accounts in the order they were absorbed into that
   account; outbox entries by position, positions increasing and gap-free
   in commit order (a rolled-back event leaves no gap; entries the
   ``retention`` tier deletes leave theirs, and a position is never given
   twice); audit records in the order they were written.
5. **Children.**  A link keeps the child as the letter that carried it
   named it (name, establishment): the same child id on two letters of two
   establishments is two links that each read back as written.
6. **Attempts outlive the host's transaction.**  A store that runs inside
   a transaction of its host (a Django request, a Flask-SQLAlchemy
   session) must make the failed-attempt counters (``Fetch.count``,
   ``ChangeSet.throttles``, the clearing of a counter after a success
   included) and the audit records of failures (outcome other than
   ``"success"``) durable even if the host rolls back (a side connection,
   or a side file on SQLite), so that a host rolling back after the
   service raised cannot erase a failed attempt.  Such a store reads and
   locks the counters where it writes them; the audit records it wrote
   there are visible to the host's transaction once the unit of work has
   committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, Self

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event, OutboxEntry
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState

__all__ = [
    "NOTHING",
    "AccountRecord",
    "ChangeSet",
    "Expect",
    "Fetch",
    "Fetched",
    "NewAccount",
    "SignIn",
    "Storage",
    "StoredReceipt",
    "UnitOfWork",
    "write_alone",
]

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


def _tuple(value: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen
class StoredReceipt:
    """The receipt of a merge made with an idempotency key."""

    principal_id: str
    key: str
    login_key: str
    receipt: MergeReceipt


@attrs.frozen
class AccountRecord:
    """An account with its stored credential (None if it has none)."""

    account: Account
    credential: Credential | None


@attrs.frozen(kw_only=True)
class Fetch:
    """What one step reads, in one :meth:`UnitOfWork.fetch` call.

    - ``logins``: accounts (with credentials) by login key; a key no
      account has is simply absent from the result, after the same work;
    - ``accounts``: accounts (with credentials) by id;
    - ``links``: the child links of these account ids, in link order;
    - ``absorbed``: for these account ids, the MERGED accounts whose
      ``merged_into`` is the id, in the order they were absorbed;
    - ``throttles``: failure counters by key (a key never written reads as
      ``ThrottleState(key)``);
    - ``count``: counters that count one more failure at ``at``, atomically
      with the read: each is written as
      :meth:`ThrottlePolicy.count <account_merge.domain.throttle.ThrottlePolicy.count>`
      describes, keeping the last ``keep`` failure times, and comes back
      (in ``Fetched.throttles``) as it was *before* the count;
    - ``receipts``: stored receipts by ``(principal id, key)``;
    - ``establishments``: establishments by UAI;
    - ``lock``: protect the accounts named in ``accounts`` and the counters
      in ``throttles`` from other writers until the unit of work ends (see
      rule 2 of the module).  Counted keys are protected whatever ``lock``.
    """

    logins: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    accounts: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    links: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    absorbed: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    throttles: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    count: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    at: datetime | None = None
    keep: int = 32
    receipts: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_tuple)
    establishments: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    lock: bool = False

    def __attrs_post_init__(self) -> None:
        if self.count and self.at is None:
            raise ValueError("Fetch.count needs Fetch.at, the time of the attempt")
        if len(set(self.count)) != len(self.count):
            raise ValueError("a key is counted once per fetch")
        if set(self.count) & set(self.throttles):
            raise ValueError("a key is either counted or read, not both")
        if self.keep < 1:
            raise ValueError("Fetch.keep must be at least 1")


#: A fetch that reads nothing: the default where a step reads nothing more.
NOTHING = Fetch()


@attrs.frozen(kw_only=True)
class Fetched:
    """What :meth:`UnitOfWork.fetch` found; every mapping is keyed as asked."""

    by_login: Mapping[str, AccountRecord] = _EMPTY
    accounts: Mapping[str, AccountRecord] = _EMPTY
    links: Mapping[str, tuple[ChildLink, ...]] = _EMPTY
    absorbed: Mapping[str, tuple[Account, ...]] = _EMPTY
    throttles: Mapping[str, ThrottleState] = _EMPTY
    receipts: Mapping[tuple[str, str], StoredReceipt] = _EMPTY
    establishments: Mapping[str, Establishment] = _EMPTY

    def record(self, account_id: str) -> AccountRecord | None:
        """The account fetched by id (or by login) with this id, or None."""
        found = self.accounts.get(account_id)
        if found is not None:
            return found
        for record in self.by_login.values():
            if record.account.id == account_id:
                return record
        return None


@attrs.frozen
class Expect:
    """A precondition of a change set: the account still is as it was read.

    ``status`` is the account's status and ``password_hash`` its
    credential's hash (None: it has no credential).
    """

    account_id: str
    status: AccountStatus
    password_hash: str | None = attrs.field(repr=False)


@attrs.frozen
class NewAccount:
    """An account to insert, under its normalised login key."""

    account: Account
    login_key: str


@attrs.frozen
class SignIn:
    """A successful sign-in: only the account's ``last_signed_in_at`` changes."""

    account_id: str
    at: datetime


@attrs.frozen(kw_only=True)
class ChangeSet:
    """Everything one step writes, applied by :meth:`UnitOfWork.apply`, in this order:

    1. ``expect``: every precondition is checked first; one that fails raises
       ``ExpectationFailed`` and nothing is written;
    2. ``establishments``: inserted, or renamed when the UAI exists;
    3. ``new_accounts``: inserted; a login key or id in use raises
       ``LoginTaken``;
    4. ``accounts``: replace the stored account with the same id (an id not
       stored raises ``ExpectationFailed``); ``sign_ins`` set only
       ``last_signed_in_at``;
    5. ``credentials``: inserted or replaced (one per account);
       ``drop_credentials``: deleted (an absent one is no error);
    6. ``unlink``: links removed (by account id and child id; an absent
       link is no error); then ``link``: links added (a link with the same
       account and child replaces the old one in its place);
    7. ``throttles``: counters inserted or replaced;
    8. ``receipts``: inserted or replaced;
    9. ``events``: appended to the outbox, in order; ``published``: outbox
       positions marked published (unknown ones ignored);
    10. ``audit``: appended, in order.
    """

    expect: tuple[Expect, ...] = attrs.field(default=(), converter=_tuple)
    establishments: tuple[Establishment, ...] = attrs.field(default=(), converter=_tuple)
    new_accounts: tuple[NewAccount, ...] = attrs.field(default=(), converter=_tuple)
    accounts: tuple[Account, ...] = attrs.field(default=(), converter=_tuple)
    sign_ins: tuple[SignIn, ...] = attrs.field(default=(), converter=_tuple)
    credentials: tuple[Credential, ...] = attrs.field(default=(), converter=_tuple)
    drop_credentials: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    unlink: tuple[ChildLink, ...] = attrs.field(default=(), converter=_tuple)
    link: tuple[ChildLink, ...] = attrs.field(default=(), converter=_tuple)
    throttles: tuple[ThrottleState, ...] = attrs.field(default=(), converter=_tuple)
    receipts: tuple[StoredReceipt, ...] = attrs.field(default=(), converter=_tuple)
    events: tuple[Event, ...] = attrs.field(default=(), converter=_tuple)
    published: tuple[int, ...] = attrs.field(default=(), converter=_tuple)
    audit: tuple[AuditRecord, ...] = attrs.field(default=(), converter=_tuple)

    def __add__(self, other: ChangeSet) -> ChangeSet:
        """Both change sets, this one's items first in each part."""
        return ChangeSet(**{
            field.name: getattr(self, field.name) + getattr(other, field.name)
            for field in attrs.fields(ChangeSet)
        })

    def __bool__(self) -> bool:
        return any(getattr(self, field.name) for field in attrs.fields(ChangeSet))

    @property
    def only_attempts(self) -> bool:
        """True if it holds nothing but counters and audit records of failures.

        Such a change set records failed attempts, which must outlive a
        host's rollback (rule 6 of the module).
        """
        rest = attrs.evolve(self, throttles=(), audit=())
        return not rest and all(record.is_failure for record in self.audit)


class UnitOfWork(Protocol):
    """**Protocol:** one transaction over the store (rules 1-6 of the module)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None:
        """Make everything written in this unit of work durable and visible."""
        ...

    def rollback(self) -> None:
        """Forget everything written in this unit of work."""
        ...

    def fetch(self, request: Fetch) -> Fetched:
        """Read (and lock, and count) what *request* names, in one call."""
        ...

    def apply(self, changes: ChangeSet) -> None:
        """Write *changes*, in the order :class:`ChangeSet` gives."""
        ...

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        """The oldest unpublished outbox entries, at most *limit*, by position."""
        ...

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        """The last *limit* records (those whose ``account_id`` or ``actor`` is
        *account_id*, if given), oldest first."""
        ...


class Storage(Protocol):
    """**Protocol:** a store the service opens units of work on.

    ``write=False`` promises the unit of work will only read, which lets a
    store skip its write lock.  Nothing may connect before the first unit
    of work; ``close()`` releases what the store holds (the store stays
    usable: a later unit of work connects again).
    """

    def unit_of_work(self, *, write: bool = True) -> UnitOfWork: ...

    def write(self, changes: ChangeSet) -> None:
        """Apply *changes* in a unit of work of their own, and commit.

        :func:`write_alone` is a correct implementation; a store may do it
        in one statement.
        """
        ...

    def close(self) -> None: ...


def write_alone(storage: Storage, changes: ChangeSet) -> None:
    """Apply *changes* in a unit of work of their own: the plain :meth:`Storage.write`."""
    with storage.unit_of_work(write=True) as uow:
        uow.apply(changes)
        uow.commit()
