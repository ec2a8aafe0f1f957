"""The ports: what the service needs from storage, hashing and time.

They are :class:`typing.Protocol` classes: an adapter conforms by having
the methods, not by inheriting.  Every adapter in this package passes the
conformance suite in :mod:`account_merge.testing.conformance`, and so
should yours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

import attrs

from account_merge.domain.account import Account, Credential
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event, OutboxEntry
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.throttle import ThrottleState

__all__ = [
    "Clock",
    "CredentialVerifier",
    "LoginTaken",
    "Storage",
    "StoredReceipt",
    "UnitOfWork",
]

#: A zero-argument callable giving the current time, timezone-aware.
Clock = Callable[[], datetime]


class LoginTaken(Exception):
    """Raised by ``UnitOfWork.add_account`` when the login key is in use.

    The service catches it and derives another login; it never reaches
    the host.
    """


@attrs.frozen
class StoredReceipt:
    """The receipt of a merge made with an idempotency key."""

    principal_id: str
    key: str
    login_key: str
    receipt: MergeReceipt


class CredentialVerifier(Protocol):
    """**Protocol:** hashes and checks passwords.

    ``verify`` never raises for a wrong password or a malformed hash: it
    returns ``False``.  Called with ``password_hash=None`` (no such
    account), it does the same work against a dummy hash and returns
    ``False``, so that every failure costs one verification (rule I7).
    """

    def hash(self, password: str) -> str:
        """A new hash of *password* with the current parameters."""
        ...

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if *password* matches *password_hash*."""
        ...

    def needs_rehash(self, password_hash: str) -> bool:
        """True if *password_hash* was made with other parameters than the current ones."""
        ...


class UnitOfWork(Protocol):
    """**Protocol:** one transaction over the store.

    Used as ``with storage.unit_of_work() as uow: ...; uow.commit()``:
    leaving the block without ``commit()`` (by an exception or not) rolls
    back everything written in it.  While a writing unit of work is open,
    the rows it reads with ``lock_accounts`` and ``get_throttle`` are
    protected from other writers until it ends (a global write lock,
    ``BEGIN IMMEDIATE``, or row locks taken in sorted id order), so a
    read-modify-write inside it loses no concurrent update.  Adapters translate their driver's
    errors into :class:`~account_merge.exceptions.StorageError` and
    :class:`~account_merge.exceptions.ConcurrentUpdate`.

    Lists come back in a stable order: children in the order they were
    linked, outbox entries by position, audit records oldest first.
    """

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

    # establishments
    def get_establishment(self, uai: str) -> Establishment | None: ...

    def put_establishment(self, establishment: Establishment) -> None:
        """Insert the establishment, or update its name."""
        ...

    # accounts
    def get_account(self, account_id: str) -> Account | None: ...

    def get_account_id_by_login(self, login_key: str) -> str | None:
        """The id of the account whose normalised login is *login_key*."""
        ...

    def lock_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        """Lock the rows of these accounts (sorted by id) and return those found."""
        ...

    def add_account(self, account: Account, login_key: str) -> None:
        """Insert a new account; raise :class:`LoginTaken` if *login_key* is in use."""
        ...

    def update_account(self, account: Account) -> None:
        """Replace the stored account that has the same id."""
        ...

    def accounts_merged_into(self, account_id: str) -> list[Account]:
        """The MERGED accounts whose ``merged_into`` is *account_id*."""
        ...

    # credentials
    def get_credential(self, account_id: str) -> Credential | None: ...

    def put_credential(self, credential: Credential) -> None:
        """Insert or replace the account's credential."""
        ...

    def delete_credential(self, account_id: str) -> None: ...

    # children
    def links(self, account_id: str) -> list[ChildLink]:
        """The children attached to the account, in the order they were linked."""
        ...

    def add_links(self, links: Sequence[ChildLink]) -> None:
        """Attach children (storing each :class:`Child` if it is new)."""
        ...

    def remove_links(self, links: Sequence[ChildLink]) -> None:
        """Detach these children from these accounts."""
        ...

    # throttling
    def get_throttle(self, key: str) -> ThrottleState | None: ...

    def put_throttle(self, state: ThrottleState) -> None:
        """Insert or replace the failure counter under ``state.key``."""
        ...

    # idempotency
    def get_receipt(self, principal_id: str, key: str) -> StoredReceipt | None: ...

    def put_receipt(self, stored: StoredReceipt) -> None: ...

    # outbox
    def append_event(self, event: Event) -> None:
        """Append to the outbox, after every event already there."""
        ...

    def unpublished(self, limit: int) -> list[OutboxEntry]:
        """The oldest unpublished events, at most *limit*, by position."""
        ...

    def mark_published(self, positions: Sequence[int]) -> None: ...

    # audit
    def append_audit(self, record: AuditRecord) -> None: ...

    def audit_records(self, account_id: str | None, limit: int) -> list[AuditRecord]:
        """The last *limit* records (about *account_id* if given), oldest first."""
        ...


class Storage(Protocol):
    """**Protocol:** a store the service opens units of work on.

    ``write=False`` promises the unit of work will only read, which lets
    a store skip its write lock.  Nothing may connect before the first
    unit of work; ``close()`` releases what the store holds.
    """

    def unit_of_work(self, *, write: bool = True) -> UnitOfWork: ...

    def close(self) -> None: ...
