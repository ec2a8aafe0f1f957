"""A parent's e-mail address: put on record only once the link sent to it is followed.

The address is what lets a parent recover alone (ÉduConnect: without a
confirmed address, only the school can help), so it is never taken on
trust.  Every way of giving one follows the same path:

1. :func:`request_email_change` (with the current password), ``activate``
   with ``email=`` (or the address the establishment gave) and the older
   ``change_email`` write an :class:`~account_merge.domain.events.EmailVerificationRequested`
   event: the address to confirm and the account's binding; the address
   is **not** on record yet, and receives nothing but the confirmation;
2. ``deliver_notices`` sends that address a link holding a token;
3. :func:`confirm_email` with that token puts the address on record, and
   the old address (if any) is told, with "if this was not you, contact
   your school".

The token is bound to the account's state when it was asked: a change of
password, a reset, a merge or another confirmation in between kills it.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from account_merge.domain.account import Account, AccountStatus, Credential, validate_email
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import EmailChanged, EmailVerificationRequested
from account_merge.domain.logins import login_key
from account_merge.domain.proofs import Purpose
from account_merge.domain.recovery import email_key
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import check_client, signin_key
from account_merge.domain.tokens import TokenPurpose
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import (
    AccountNotFound,
    InvalidCredentials,
    InvalidInput,
    InvalidToken,
    PrincipalNotActive,
)
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.ports.tiers import EmailIndex, require_tier
from account_merge.service.arguments import password_arg
from account_merge.service.context import Context, logger
from account_merge.service.credential_check import Attempt, CredentialCheck, hash_for
from account_merge.service.reading import get_account
from account_merge.service.token_check import read_claims, token_opens

__all__ = ["change_email", "confirm_email", "request_email_change", "verification_of"]


def verification_of(ctx: Context, account: Account, credential: Credential | None,
                    email: str, at: datetime) -> EmailVerificationRequested:
    """The event asking *email* to be confirmed for *account*, in the state given."""
    signer = ctx.recovery.require(TokenPurpose.EMAIL_VERIFICATION)
    return EmailVerificationRequested(occurred_at=at, account_id=account.id, email=email,
                                      binding=signer.binding(account, credential))


def _check_new(account: Account, email: str) -> None:
    if account.status is not AccountStatus.ACTIVE:
        raise PrincipalNotActive()
    if account.email is not None and email_key(account.email) == email_key(email):
        raise InvalidInput("new_email", "is already the address on record")


def request_email_change(ctx: Context, account_id: str, current_password: str | Secret,
                         new_email: str, client: str | None) -> None:
    """Ask to confirm *new_email* for an ACTIVE account, proven by its current password."""
    account = get_account(ctx, account_id)
    current = password_arg("current_password", current_password)
    try:
        new_email = validate_email(new_email)
    except InvalidInput as error:
        raise InvalidInput("new_email", error.message.split(": ", 1)[-1]) from None
    client = check_client(client)
    ctx.recovery.require(TokenPurpose.EMAIL_VERIFICATION)
    _check_new(account, new_email)
    check = CredentialCheck(ctx)
    attempt = Attempt(action=AuditAction.REQUEST_EMAIL_CHANGE, login=account.login,
                      password=current, counters=(signin_key(login_key(account.login), client),),
                      choose_hash=hash_for(Purpose.REAUTHENTICATE), actor=account.id)
    proof = check.prove(attempt)
    if proof.account_id != account.id:
        raise InvalidCredentials()

    def build(_: Fetched, record: AccountRecord) -> tuple[ChangeSet, None]:
        _check_new(record.account, new_email)
        now = ctx.now()
        return ChangeSet(
            events=(verification_of(ctx, record.account, record.credential, new_email, now),),
            audit=(AuditRecord(at=now, action=AuditAction.REQUEST_EMAIL_CHANGE,
                               outcome="success", actor=account.id, account_id=account.id),),
        ), None

    check.finish(proof, build, clear=attempt.counters)
    logger.info("address to confirm for account %s", account.id)


def change_email(ctx: Context, account_id: str, email: str) -> Account:
    """Ask to confirm *email* for an ACTIVE account, without its password (the host vouches).

    The account comes back unchanged: the address is on record once
    confirmed.
    """
    check_identifier("account_id", account_id)
    email = validate_email(email)
    ctx.recovery.require(TokenPurpose.EMAIL_VERIFICATION)

    def write() -> Account:
        now = ctx.now()
        with ctx.writing() as uow:
            found = uow.fetch(Fetch(accounts=(account_id,), lock=True)).accounts.get(account_id)
            if found is None:
                raise AccountNotFound(account_id)
            _check_new(found.account, email)
            uow.apply(ChangeSet(
                events=(verification_of(ctx, found.account, found.credential, email, now),),
                audit=(AuditRecord(at=now, action=AuditAction.CHANGE_EMAIL, outcome="success",
                                   actor=account_id, account_id=account_id),),
            ))
            uow.commit()
        return found.account

    return ctx.guarded(AuditAction.CHANGE_EMAIL, None, write, actor=account_id)


def confirm_email(ctx: Context, token: str) -> Account:
    """Put the address of an e-mail confirmation link on record; the account as it is now."""
    signer = ctx.recovery.signer
    if signer is None:
        raise InvalidInput("secret_key", "is needed to check the links of notices")
    if not isinstance(token, str):
        raise InvalidInput("token", f"must be a string, not {type(token).__name__}")
    claims = read_claims(signer, token, TokenPurpose.EMAIL_VERIFICATION)
    validity = ctx.policies.email_confirmation_validity

    def write() -> Account:
        now = ctx.now()
        with ctx.writing() as uow:
            index: EmailIndex = require_tier(uow, EmailIndex)
            found = uow.fetch(Fetch(accounts=(claims.account_id,) if claims else (), lock=True))
            record = found.accounts.get(claims.account_id) if claims else None
            opens = token_opens(signer, token, claims, record, TokenPurpose.EMAIL_VERIFICATION,
                                validity, now)
            if (not opens or claims is None or claims.email is None or record is None
                    or record.account.status is not AccountStatus.ACTIVE):
                raise InvalidToken()
            old = record.account.email
            changed = attrs.evolve(record.account, email=claims.email)
            index.index_email(changed.id, email_key(claims.email))
            uow.apply(ChangeSet(
                accounts=(changed,),
                events=(EmailChanged(occurred_at=now, account_id=changed.id, old_email=old,
                                     new_email=claims.email),),
                audit=(AuditRecord(at=now, action=AuditAction.CONFIRM_EMAIL, outcome="success",
                                   actor=changed.id, account_id=changed.id),),
            ))
            uow.commit()
        return changed

    account = ctx.guarded(AuditAction.CONFIRM_EMAIL, None, write)
    logger.info("address of account %s confirmed", account.id)
    return account
