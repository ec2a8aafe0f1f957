"""The way back, as rules: which address is confirmed, who may reset, who re-issues a letter.

An account's e-mail address is **on record once confirmed**: the service
sets ``Account.email`` of an activated account only when the link sent
to that address is followed (``confirm_email``).  A PROVISIONAL
account's address is the one its establishment gave, to be confirmed at
activation; it receives nothing before.  So:

- the confirmed address of an account is the address of an ACTIVE
  account, or of an absorbed account that had been activated (it keeps
  its own password's credential);
- a password is reset by self-service only for an ACTIVE account with a
  confirmed address; a never-activated or absorbed account, or one
  without an address, gets the same answer and goes to its school, which
  re-issues a letter (:func:`reissued_children`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from account_merge.domain.account import Account, AccountStatus, Credential, CredentialKind
from account_merge.domain.child import Child, ChildLink
from account_merge.exceptions import NotAuthorized

__all__ = ["confirmed_email", "email_key", "reissued_children", "resettable"]


def email_key(address: str) -> str:
    """The form under which addresses are compared: NFKC, case-folded, stripped.

    Addresses are *matched* under this key and mail is always sent to the
    address on record, never to the one typed (CVE-2019-19844).
    """
    return unicodedata.normalize("NFKC", address).casefold().strip()


def _activated(account: Account, credential: Credential | None) -> bool:
    if account.status is AccountStatus.ACTIVE:
        return True
    return (account.status is AccountStatus.MERGED and credential is not None
            and credential.kind is CredentialKind.PASSWORD)


def confirmed_email(account: Account, credential: Credential | None) -> str | None:
    """The account's confirmed address, or None (see the module docstring)."""
    return account.email if _activated(account, credential) else None


def resettable(account: Account, credential: Credential | None) -> bool:
    """True if a self-service reset may open the account: ACTIVE, with a confirmed address."""
    return (account.status is AccountStatus.ACTIVE and account.email is not None
            and credential is not None and credential.kind is CredentialKind.PASSWORD)


def reissued_children(establishment_uai: str, account: Account,
                      links: Iterable[ChildLink]) -> tuple[Child, ...]:
    """The children a letter re-issued by *establishment_uai* names, or ``not_authorized``.

    Only an establishment whose letter carried a child now on the live
    account may re-issue its letter; an absorbed account gets none (its
    school splits it instead).
    """
    if not account.is_live:
        raise NotAuthorized("the account was merged into another: split it instead")
    children = tuple(link.child for link in links
                     if link.origin_establishment_uai == establishment_uai)
    if not children:
        raise NotAuthorized("no child on this account came with a letter of this establishment")
    return children
