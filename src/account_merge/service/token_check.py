"""Checking a token from a link against the account it names, the same way for every use case.

A token opens an account when its signature matches the account's
*current* binding (:meth:`~account_merge.domain.tokens.TokenSigner.binding`),
its purpose is the one asked, and it was issued less than the policy's
validity ago.  Every refusal is the one ``invalid_token``, after the same
work (the signature is checked whatever else failed).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from account_merge.domain.tokens import TokenClaims, TokenPurpose, TokenSigner
from account_merge.exceptions import InvalidToken
from account_merge.ports.storage import AccountRecord

__all__ = ["TOKEN_SKEW", "read_claims", "token_opens"]

#: A token issued up to this long in the future (a clock set back) still counts.
TOKEN_SKEW = timedelta(minutes=5)


def token_opens(signer: TokenSigner, token: str, claims: TokenClaims | None,
                record: AccountRecord | None, purpose: TokenPurpose, validity: timedelta,
                now: datetime) -> bool:
    """True if *token* opens *record* for *purpose* at *now* (signature, state and time).

    The signature is checked whatever else failed, so that every refusal
    costs the same.
    """
    binding = (signer.binding(record.account, record.credential) if record is not None
               else signer.binding(None, None))
    signed = signer.verify(token, binding)
    if (claims is None or record is None or claims.purpose is not purpose
            or claims.account_id != record.account.id):
        return False
    if not claims.issued_at - TOKEN_SKEW <= now < claims.issued_at + validity:
        return False
    return signed


def read_claims(signer: TokenSigner, token: object, purpose: TokenPurpose) -> TokenClaims | None:
    """What *token* claims if it reads as a token for *purpose*, else None."""
    try:
        claims = signer.read(token)
    except InvalidToken:
        return None
    return claims if claims.purpose is purpose else None
