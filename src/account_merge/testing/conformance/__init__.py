"""The storage contract, as mixin classes an adapter's test suite subclasses.

Every storage adapter in this package runs these tests, and so should
yours.  The mixins are not named ``Test*``, so pytest does not collect
them on their own; subclass one (or :class:`StorageContract`, which has
them all) in a class whose name starts with ``Test`` and implement the one
hook, :meth:`StorageHarness.make_storage`::

    from account_merge.testing.conformance import StorageContract

    class TestMyStorage(StorageContract):
        def make_storage(self):
            return MyStorage(...)          # a fresh, empty store

Optional hooks: ``close_storage(storage)`` (default ``storage.close()``),
``make_broken_storage()`` (a store whose backend cannot be used, to check
that driver errors come out as ``StorageError``; by default that test is
skipped), ``hosted_storage(storage)`` (a store on the same database whose
units of work run inside a host transaction that is rolled back at the
end; by default that test is skipped), ``dump_storage(storage)`` (every
row the store holds, as text, for the retention contract's test of what
deleting an account leaves; by default that test is skipped), and the
class attribute ``state_machine_examples``.

Each numbered rule of :mod:`account_merge.ports.storage` has its tests
here: round trip of every aggregate and the order of what comes back
(:class:`RoundTripContract`, :class:`OrderContract`), the change set's
preconditions and errors (:class:`ChangeSetContract`), counting attempts
(:class:`CountingContract`), rollback (:class:`RollbackContract`),
isolation between threads (:class:`IsolationContract`), the outbox
(:class:`OutboxContract`), idempotency keys (:class:`IdempotencyContract`),
translation of driver errors (:class:`ErrorTranslationContract`),
attempts that outlive a host's rollback (:class:`HostRollbackContract`),
and the Hypothesis state machine of :mod:`account_merge.testing.state_machine`
(:class:`StateMachineContract`).  Optional tiers have their own mixins,
which skip on a store without the tier (:class:`BulkLoadContract`,
:class:`EmailIndexContract`, :class:`NoticesContract`,
:class:`RegisterContract`, :class:`RetentionContract`, itself
:class:`RetentionTierContract` and :class:`PurgeContract`).

The package has one module per concept: ``harness`` (the hook and its
fixtures), ``core_data`` and ``core_transactions`` (the core tier), and one
module per optional tier (``bulk_load``, ``recovery`` for ``email_index`` and
``notices``, ``register``, ``retention``); import the names from the package.
"""

from __future__ import annotations

from account_merge.testing.conformance.bulk_load import BulkLoadContract
from account_merge.testing.conformance.core_data import (
    ChangeSetContract,
    CountingContract,
    OrderContract,
    RoundTripContract,
)
from account_merge.testing.conformance.core_transactions import (
    ErrorTranslationContract,
    HostRollbackContract,
    IdempotencyContract,
    IsolationContract,
    OutboxContract,
    RollbackContract,
    StateMachineContract,
)
from account_merge.testing.conformance.harness import HASH as HASH
from account_merge.testing.conformance.harness import OTHER_HASH as OTHER_HASH
from account_merge.testing.conformance.harness import OTHER_SCHOOL as OTHER_SCHOOL
from account_merge.testing.conformance.harness import SCHOOL as SCHOOL
from account_merge.testing.conformance.harness import STRONG as STRONG
from account_merge.testing.conformance.harness import T0 as T0
from account_merge.testing.conformance.harness import StorageHarness
from account_merge.testing.conformance.harness import _account as _account
from account_merge.testing.conformance.harness import _child as _child
from account_merge.testing.conformance.harness import _link as _link
from account_merge.testing.conformance.harness import _new as _new
from account_merge.testing.conformance.recovery import EmailIndexContract, NoticesContract
from account_merge.testing.conformance.register import RegisterContract
from account_merge.testing.conformance.retention import (
    PurgeContract,
    RetentionContract,
    RetentionTierContract,
)

__all__ = [
    "BulkLoadContract",
    "ChangeSetContract",
    "CountingContract",
    "EmailIndexContract",
    "ErrorTranslationContract",
    "HostRollbackContract",
    "IdempotencyContract",
    "IsolationContract",
    "NoticesContract",
    "OrderContract",
    "OutboxContract",
    "PurgeContract",
    "RegisterContract",
    "RetentionContract",
    "RetentionTierContract",
    "RollbackContract",
    "RoundTripContract",
    "StateMachineContract",
    "StorageContract",
    "StorageHarness",
]


class StorageContract(
    RoundTripContract,
    OrderContract,
    ChangeSetContract,
    CountingContract,
    RollbackContract,
    IsolationContract,
    OutboxContract,
    IdempotencyContract,
    ErrorTranslationContract,
    HostRollbackContract,
    StateMachineContract,
    BulkLoadContract,
    EmailIndexContract,
    NoticesContract,
    RegisterContract,
    RetentionContract,
):
    """The whole storage contract (core tier and every optional tier)."""
