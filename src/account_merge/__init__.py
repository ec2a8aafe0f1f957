"""account_merge: the regroupement de comptes responsables of a school ENT.

A parent who received one letter per child activates one account (the
principal) and merges the others into it; only the establishment can undo
a merge.  See ``docs/concepts.md``.
"""

from account_merge.credentials import Argon2Verifier
from account_merge.domain.account import Account, AccountStatus, Role
from account_merge.domain.child import AttachedChild, Child
from account_merge.domain.establishment import Establishment
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.receipts import MergeReceipt, SplitReceipt
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import ThrottlePolicy
from account_merge.exceptions import AccountMergeError
from account_merge.service import MergeService
from account_merge.storage.memory import InMemoryStorage
from account_merge.storage.sqlite import SQLiteStorage

__all__ = [
    "Account",
    "AccountMergeError",
    "AccountStatus",
    "Argon2Verifier",
    "AttachedChild",
    "Child",
    "Establishment",
    "InMemoryStorage",
    "MergeReceipt",
    "MergeService",
    "NotificationLetter",
    "Role",
    "SQLiteStorage",
    "Secret",
    "SplitReceipt",
    "ThrottlePolicy",
]
