"""The ports: what the service needs from storage, hashing and time.

They are :class:`typing.Protocol` classes: an adapter conforms by having
the methods, not by inheriting.

- :mod:`account_merge.ports.storage`: the storage core tier (``Storage``,
  ``UnitOfWork``, ``Fetch``, ``ChangeSet``...), the contract every store
  meets;
- :mod:`account_merge.ports.tiers`: optional storage tiers;
- :mod:`account_merge.ports.verifier`: ``CredentialVerifier``;
- :mod:`account_merge.ports.clock`: ``Clock``;
- :mod:`account_merge.ports.mailer`: ``Mailer``.
"""

from account_merge.exceptions import ExpectationFailed, LoginTaken
from account_merge.ports.clock import Clock
from account_merge.ports.mailer import Mailer
from account_merge.ports.storage import (
    AccountRecord,
    ChangeSet,
    Expect,
    Fetch,
    Fetched,
    NewAccount,
    SignIn,
    Storage,
    StoredReceipt,
    UnitOfWork,
    write_alone,
)
from account_merge.ports.tiers import BulkLoad, EmailIndex, Notices, require_tier, supports
from account_merge.ports.verifier import CredentialVerifier

__all__ = [
    "AccountRecord",
    "BulkLoad",
    "ChangeSet",
    "Clock",
    "CredentialVerifier",
    "EmailIndex",
    "Expect",
    "ExpectationFailed",
    "Fetch",
    "Fetched",
    "LoginTaken",
    "Mailer",
    "NewAccount",
    "Notices",
    "SignIn",
    "Storage",
    "StoredReceipt",
    "UnitOfWork",
    "require_tier",
    "supports",
    "write_alone",
]
