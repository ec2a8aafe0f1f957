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
``register``       the unit of work: ``Register``  ``sync_register``, ``split``
=================  ==============================  =================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from account_merge.exceptions import NotSupported
from account_merge.ports.register import Register

if TYPE_CHECKING:
    from account_merge.storage.bulk import BulkAccount

__all__ = ["BulkLoad", "Register", "require_tier", "supports"]


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


#: The tier names, by protocol.
TIER_NAMES: dict[type, str] = {BulkLoad: "bulk_load"}

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
