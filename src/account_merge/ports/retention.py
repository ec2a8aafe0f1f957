"""Storage tier ``retention``: finding what is due and deleting it in bulk.

A store offers the tier by having the methods of :class:`Retention` on its
units of work.  Each finds what it needs through an index and works on at
most ``limit`` rows, so that the service's purge
(:mod:`account_merge.service.retention`) runs in short units of work:

- :meth:`~Retention.accounts_due`: never-activated, unused or closed
  accounts, by the time that makes them due, a page at a time;
- :meth:`~Retention.erase_hashes`: the hashes of expired letters;
- :meth:`~Retention.forget`: accounts and everything keyed by them
  (:class:`~account_merge.domain.retention.Forgotten`), audit records
  pseudonymised;
- :meth:`~Retention.end_audit`: audit records past their retention,
  deleted or pseudonymised;
- :meth:`~Retention.outbox_page` and :meth:`~Retention.delete_outbox`: the
  outbox, read by position and deleted (never reusing a position);
- :meth:`~Retention.delete_counters`: failure counters at rest;
- :meth:`~Retention.held_about`: what the store holds about some accounts
  beyond the core tier's reads (for ``export_personal_data``).

A store that keeps failed attempts apart (the attempts journal of a SQLite
database, rule 6 of :mod:`account_merge.ports.storage`) applies
``forget``, ``end_audit``, ``delete_counters`` and ``held_about`` there too.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from account_merge.domain.audit import AuditRecord
    from account_merge.domain.events import OutboxEntry
    from account_merge.domain.receipts import MergeReceipt
    from account_merge.domain.retention import Forgotten
    from account_merge.domain.throttle import ThrottleState
    from account_merge.ports.storage import AccountRecord

__all__ = ["DueKind", "DuePage", "Held", "Retention"]


class DueKind(enum.Enum):
    """Which accounts :meth:`Retention.accounts_due` pages through, and by what time."""

    #: PROVISIONAL accounts with a provisional credential, by ``expires_at``
    UNACTIVATED = "unactivated"
    #: ACTIVE accounts with a last sign-in, by ``last_signed_in_at``
    UNUSED = "unused"
    #: CLOSED accounts with a closure (tier ``register``), by its ``closed_at``; a store
    #: without the register tier has no closed account, and lists none
    CLOSED = "closed"


@attrs.frozen
class DuePage:
    """A page of :meth:`Retention.accounts_due`: the accounts, and where the next page starts.

    ``after`` is ``(time, account id)`` of the last account of the page
    (None when the page is the last one).
    """

    records: tuple[AccountRecord, ...]
    after: tuple[datetime, str] | None


@attrs.frozen
class Held:
    """What :meth:`Retention.held_about` found.

    ``audit``: the records :meth:`Forgotten.names_record
    <account_merge.domain.retention.Forgotten.names_record>` or
    :meth:`~account_merge.domain.retention.Forgotten.mentions` matches, in
    the order they were written (from every trail the store keeps);
    ``counters``: the counters
    it names, by key; ``receipts``: the receipts of the merges the accounts
    made as principal, as ``(principal id, idempotency key, receipt)``.
    """

    audit: tuple[AuditRecord, ...] = ()
    counters: tuple[ThrottleState, ...] = ()
    receipts: tuple[tuple[str, str, MergeReceipt], ...] = ()


@runtime_checkable
class Retention(Protocol):
    """**Protocol:** tier ``retention``, on the unit of work (see the module docstring).

    Every method works in the unit of work's transaction (rules 1 and 2 of
    :mod:`account_merge.ports.storage`): what it deletes is rolled back with
    it.  The service calls the writing ones in a writing unit of work only.
    """

    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        """Accounts of *kind* whose time is at or before *before*, with their credentials.

        By ``(time, id)``, starting after *after* (None: from the first),
        at most *limit*.  An ACTIVE account without a last sign-in, a
        PROVISIONAL one without a provisional credential, and a CLOSED one
        without a closure (:class:`~account_merge.ports.register.Closure`),
        are never listed.
        """
        ...

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        """Erase at most *limit* provisional credentials that expired at or before
        *expired_by*; how many.

        The hash is replaced by :data:`~account_merge.domain.retention.ERASED_HASH`
        (the credential keeps its expiry, which dates the letter); the
        credential of an absorbed (MERGED) account is deleted instead, since
        nothing needs its date.  Credentials erased already are left alone.
        """
        ...

    def forget(self, forgotten: Forgotten) -> None:
        """Delete the accounts of *forgotten* and everything it names.

        In this order: the audit records it names are pseudonymised as
        :func:`~account_merge.domain.retention.pseudonymised` describes (the
        establishment: the actor's, else that of the record's account, read
        before it is deleted), and the ids of the accounts in the detail of
        the records written when they were created
        (``Forgotten.created``) are replaced by
        :data:`~account_merge.domain.retention.DELETED_ACCOUNT`; then the
        counters it names, the receipts of merges the accounts made as
        principal, their address index entries, on a store with the
        ``register`` tier the register records whose account they are and
        their closures (and whatever index names their links), links,
        credentials and the accounts themselves (absorbed ones before their
        holder), and any child no link names any more.  Ids not stored are
        no error.
        """
        ...

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        """End at most *limit* audit records written before *before*, oldest first; how many.

        Deleted, or (*pseudonymise*) rewritten as
        :func:`~account_merge.domain.retention.pseudonymised` describes;
        with *pseudonymise*, only records that
        :func:`~account_merge.domain.retention.names_someone` are taken.
        """
        ...

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        """Outbox entries after position *after*, by position, at most *limit*: only the
        published ones (*published* True), the unpublished ones (False), or all (None)."""
        ...

    def delete_outbox(self, positions: Sequence[int]) -> int:
        """Delete the entries at *positions*, with their notices, except those with a
        notice still to send; how many.  A position is never given again."""
        ...

    def delete_counters(self, before: datetime, limit: int) -> int:
        """Delete at most *limit* counters whose last failure is before *before* (or that
        never failed); how many."""
        ...

    def held_about(self, forgotten: Forgotten) -> Held:
        """What :meth:`forget` would delete or pseudonymise, beyond the accounts' rows."""
        ...
