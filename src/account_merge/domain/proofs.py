"""Which stored hash a typed password may be checked against, by purpose.

The service verifies exactly one hash per attempt (rule I7): the one this
module names, or none (then the verifier works against a dummy hash).  A
credential opens an account only for the purposes below; anything else is
the same ``invalid_credentials`` after the same work.  An account the
school's register closed opens nothing, whatever the purpose.
"""

from __future__ import annotations

import enum
from datetime import datetime

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind
from account_merge.domain.retention import ERASED_HASH

__all__ = ["Purpose", "openable_hash"]


class Purpose(enum.Enum):
    """What a password is typed for."""

    #: ``authenticate``: an ACTIVE account's password signs in; a letter's
    #: unexpired provisional password and an absorbed account's last
    #: password are checked too, so that, once proven, the parent can be
    #: told to activate, or to sign in with the principal account.
    SIGN_IN = "sign_in"
    #: ``activate``: a PROVISIONAL account's unexpired provisional password.
    ACTIVATE = "activate"
    #: the merge form: a letter's unexpired provisional password, or an
    #: ACTIVE account's password.
    MERGE = "merge"
    #: a merge repeated with its idempotency key, after it was made: the
    #: absorbed account's last password.
    MERGE_REPLAY = "merge_replay"
    #: ``change_password`` and other re-authentications: an ACTIVE account's password.
    REAUTHENTICATE = "reauthenticate"


def _usable(account: Account, credential: Credential, now: datetime) -> bool:
    """True if the credential is the one its account's state calls for, unexpired."""
    if credential.expired(now) or credential.password_hash == ERASED_HASH:
        return False
    provisional = credential.kind is CredentialKind.PROVISIONAL
    if account.status is AccountStatus.PROVISIONAL:
        return provisional
    if account.status is AccountStatus.ACTIVE:
        return not provisional
    # MERGED: the credential it had when it was absorbed; CLOSED (by the
    # register): nothing, for any purpose.
    return account.status is AccountStatus.MERGED


def openable_hash(account: Account | None, credential: Credential | None, now: datetime,
                  purpose: Purpose) -> str | None:
    """The hash to verify a password against for *purpose*, or None if no password opens it."""
    if account is None or credential is None or not _usable(account, credential, now):
        return None
    status = account.status
    allowed = {
        Purpose.SIGN_IN: status in (AccountStatus.ACTIVE, AccountStatus.PROVISIONAL,
                                    AccountStatus.MERGED),
        Purpose.ACTIVATE: status is AccountStatus.PROVISIONAL,
        Purpose.MERGE: status in (AccountStatus.ACTIVE, AccountStatus.PROVISIONAL),
        Purpose.MERGE_REPLAY: status is AccountStatus.MERGED,
        Purpose.REAUTHENTICATE: status is AccountStatus.ACTIVE,
    }[purpose]
    return credential.password_hash if allowed else None
