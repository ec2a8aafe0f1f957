"""Optional tier ``retention``: its mixin, :class:`RetentionContract`, the tier's own
methods (:mod:`~account_merge.testing.conformance.retention_tier`) and the purge on the
store (:mod:`~account_merge.testing.conformance.purge`)."""

from __future__ import annotations

from account_merge.testing.conformance.purge import PurgeContract
from account_merge.testing.conformance.retention_tier import RetentionTierContract

__all__ = ["PurgeContract", "RetentionContract", "RetentionTierContract"]


class RetentionContract(RetentionTierContract, PurgeContract):
    """Tier ``retention``: what is due, found in pages; deleted in bulk, and nothing else.

    :meth:`test_a_purged_account_leaves_nothing_that_names_it` reads every
    row the store holds, through :meth:`StorageHarness.dump_storage` (it is
    skipped when the hook gives None), so that a table added later is
    looked at too.
    """
