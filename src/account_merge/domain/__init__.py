"""The domain: accounts, children, letters, rules, events.  Imports only attrs."""

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import Event, OutboxEntry
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.receipts import MergeReceipt, SplitReceipt
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import ThrottlePolicy, ThrottleState

__all__ = [
    "Account",
    "AccountStatus",
    "AuditAction",
    "AuditRecord",
    "Child",
    "ChildLink",
    "Credential",
    "CredentialKind",
    "Establishment",
    "Event",
    "MergeReceipt",
    "NotificationLetter",
    "OutboxEntry",
    "Role",
    "Secret",
    "SplitReceipt",
    "ThrottlePolicy",
    "ThrottleState",
]
