"""Optional storage tiers: capabilities a store may add to the core tier.

The core tier (:mod:`account_merge.ports.storage`) is all the merge needs.
Each later capability stores something more and is a tier of its own, a
:class:`typing.Protocol` with its own conformance mixin in
:mod:`account_merge.testing.conformance`.  A store offers a tier by having
its methods (on the store or on its units of work, as the tier says); a
use case that needs a tier the store lacks raises
:class:`~account_merge.exceptions.NotSupported` naming it, before it
changes anything.

=================  ==============================  =================================
tier               where its methods are           what needs it
=================  ==============================  =================================
``bulk_load``      the store: :class:`BulkLoad`    :func:`account_merge.testing.bulk_load`
``email_index``    the unit of work:               ``request_password_reset``,
                   :class:`EmailIndex`             ``request_login_reminder``,
                                                   ``confirm_email``
``notices``        the unit of work:               ``deliver_notices``
                   :class:`Notices`
``register``       the unit of work: ``Register``  ``sync_register``, ``split``
``retention``      the unit of work:               ``purge``, ``export_personal_data``
                   :class:`.retention.Retention`
=================  ==============================  =================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from account_merge.exceptions import NotSupported
from account_merge.ports.register import Register
from account_merge.ports.retention import Retention

if TYPE_CHECKING:
    from account_merge.domain.events import OutboxEntry
    from account_merge.domain.notices import NoticeState
    from account_merge.ports.storage import AccountRecord
    from account_merge.storage.bulk import BulkAccount

__all__ = ["BulkLoad", "EmailIndex", "Notices", "Register", "Retention", "require_tier", "supports"]


@runtime_checkable
class BulkLoad(Protocol):
    """**Protocol:** tier ``bulk_load``, on the store: many accounts in one transaction.

    ``bulk_insert(rows)`` stores the rows as
    :meth:`~account_merge.MergeService.issue_account` would have (account,
    provisional or active credential, one child link), without events or
    audit records, all or none: a login or id in use raises
    :class:`~account_merge.exceptions.LoginTaken` and stores none of them.
    For tests and benchmarks that need a large store.
    """

    def bulk_insert(self, rows: Sequence[BulkAccount]) -> None: ...


# -- the way back: addresses found by key, notices delivered -------------------------
@runtime_checkable
class EmailIndex(Protocol):
    """**Protocol:** tier ``email_index``, on the unit of work: accounts found by address.

    The service keeps one index entry per account, the
    :func:`~account_merge.domain.recovery.email_key` of the address it put
    on record, and finds accounts by it:

    - ``index_email(account_id, key)`` records *key* as the account's entry
      (replacing its previous one); ``None`` removes the entry;
    - ``accounts_by_email(key, limit)`` gives the accounts (with their
      credentials) whose entry is *key*, at most *limit*, by account id,
      whatever their status.  The service checks each against its current
      address, so an entry left behind by a change made around the service
      never sends mail to a wrong account.

    Entries are written and read in the unit of work (rules 1 and 2 of
    :mod:`account_merge.ports.storage`); finding by key must not grow with
    the store (an index).
    """

    def index_email(self, account_id: str, key: str | None) -> None: ...

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]: ...


@runtime_checkable
class Notices(Protocol):
    """**Protocol:** tier ``notices``, on the unit of work: the delivery state of notices.

    Kept apart from the host's own reading of the outbox
    (``unpublished``, ``published``): notices are made from every event,
    published or not.

    - ``notice_cursor()``: the last outbox position turned into notices (0
      at first);
    - ``outbox_after(position, limit)``: outbox entries after *position*,
      published or not, by position, at most *limit*;
    - ``add_notices(states, cursor)``: store the states whose id is not
      stored yet (a stored one is left as it is: two deliveries running at
      once add the same notices once) and raise the cursor to *cursor*
      (never lower it);
    - ``pending_notices(limit)``: the PENDING states, by outbox position
      then id, at most *limit*, each with its outbox entry;
    - ``update_notices(states)``: replace the stored state of each id (an
      id not stored is ignored).
    """

    def notice_cursor(self) -> int: ...

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]: ...

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None: ...

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]: ...

    def update_notices(self, states: Sequence[NoticeState]) -> None: ...


#: The tier names, by protocol.
TIER_NAMES: dict[type, str] = {BulkLoad: "bulk_load"}
TIER_NAMES.update({EmailIndex: "email_index", Notices: "notices"})
# Tier ``retention`` (purge, export); its types are in ports/retention.py.
TIER_NAMES[Retention] = "retention"

# Tier ``register`` (the school's register); its types are in ports/register.py.
TIER_NAMES[Register] = "register"


def supports(obj: object, tier: type) -> bool:
    """True if *obj* (a store or a unit of work) has the methods of *tier*."""
    return isinstance(obj, tier)


def require_tier(obj: object, tier: type) -> Any:
    """*obj* (as a *tier*), or :class:`~account_merge.exceptions.NotSupported` naming it."""
    if not isinstance(obj, tier):
        name = TIER_NAMES.get(tier, tier.__name__)
        raise NotSupported(name, f"{type(obj).__name__} lacks the {name!r} storage tier "
                                 f"({tier.__module__}.{tier.__qualname__})")
    return obj
