"""The service layer: :class:`MergeService` and the use cases behind it.

``MergeService`` (:mod:`~account_merge.service.facade`) is the one public
entry; each of its methods hands its work to the module of one actor's
goal (issuing, own_account, merging, splitting, reading), which takes a
:class:`~account_merge.service.context.Context` and reads as its steps.
The credential protocol every password-bearing use case follows is
:mod:`~account_merge.service.credential_check`; every tunable is in
:class:`~account_merge.service.policies.Policies`; the defaults and the
hosts' settings are read by :mod:`~account_merge.service.bootstrap`.
"""

from account_merge.service.facade import MergeService
from account_merge.service.policies import IdentityRule, Policies, same_display_name

__all__ = ["IdentityRule", "MergeService", "Policies", "same_display_name"]
