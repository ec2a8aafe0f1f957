"""Re-issued letters: the school prints a new letter for a lost one, with the same login.

This is the way back for every parent who cannot recover alone (never
activated, no confirmed address, no access to it any more): NIST SP
800-63B's draft revision gives an account that cannot be recovered
otherwise a new credential through the channel that issued the first.

Only an establishment whose letter carried a child now on the account may
re-issue it (:func:`~account_merge.domain.recovery.reissued_children`).
The account gets a new provisional password (the old password, provisional
or not, stops working at once) and a new expiry, and is PROVISIONAL again
until the parent activates it with the new letter.  The new password is
hashed outside any lock; the rules are checked again under lock before
anything is written; an event (for the notice to the address confirmed
before, if any) and an audit record naming the establishment are written
with the change.
"""

from __future__ import annotations

import attrs

from account_merge.domain.account import AccountStatus
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import LetterReissued
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.passwords import generate_provisional_password
from account_merge.domain.recovery import confirmed_email, reissued_children
from account_merge.domain.secret import Secret
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import AccountMergeError, AccountNotFound, NotAuthorized
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, UnitOfWork
from account_merge.service.arguments import establishment_arg
from account_merge.service.context import Context, logger
from account_merge.service.issuing import provisional_credential

__all__ = ["reissue_letter"]


def _read(uow: UnitOfWork, establishment: Establishment, account_id: str, *,
          lock: bool) -> tuple[Establishment, AccountRecord, tuple[Child, ...]]:
    """The establishment as stored, the account and the children its new letter names."""
    fetched = uow.fetch(Fetch(accounts=(account_id,), links=(account_id,),
                              establishments=(establishment.uai,), lock=lock))
    known = fetched.establishments.get(establishment.uai)
    if known is None:
        raise NotAuthorized("unknown establishment")
    record = fetched.accounts.get(account_id)
    if record is None:
        raise AccountNotFound(account_id)
    return known, record, reissued_children(establishment.uai, record.account,
                                            fetched.links[account_id])


def reissue_letter(ctx: Context, establishment: Establishment,
                   account_id: str) -> NotificationLetter:
    """A new letter for the account, with the same login and a new provisional password."""
    establishment_arg(establishment)
    check_identifier("account_id", account_id)
    actor = f"establishment:{establishment.uai}"
    try:
        with ctx.reading() as uow:
            _read(uow, establishment, account_id, lock=False)  # refuse before hashing
        password = generate_provisional_password(ctx.policies.provisional_length)
        password_hash = ctx.verifier.hash(password)

        def write() -> NotificationLetter:
            now = ctx.now()
            with ctx.writing() as uow:
                school, record, children = _read(uow, establishment, account_id, lock=True)
                account = record.account
                credential = provisional_credential(ctx, account.id, password_hash, now)
                provisional = attrs.evolve(account, status=AccountStatus.PROVISIONAL)
                uow.apply(ChangeSet(
                    accounts=(provisional,) if provisional != account else (),
                    credentials=(credential,),
                    events=(LetterReissued(occurred_at=now, account_id=account.id,
                                           establishment_uai=school.uai,
                                           email=confirmed_email(account, record.credential)),),
                    audit=(AuditRecord(at=now, action=AuditAction.REISSUE_LETTER,
                                       outcome="success", actor=actor, account_id=account.id,
                                       login=account.login),),
                ))
                uow.commit()
            assert credential.expires_at is not None
            return NotificationLetter(
                account_id=account.id, login=account.login,
                provisional_password=Secret(password), establishment=school,
                display_name=account.display_name, children=children, issued_at=now,
                expires_at=credential.expires_at)

        letter = ctx.retry(write)
    except AccountMergeError as error:
        ctx.audit(AuditRecord(at=ctx.now(), action=AuditAction.REISSUE_LETTER,
                              outcome=error.code, actor=actor))
        raise
    logger.info("letter of account %s re-issued by %s", account_id, establishment.uai)
    return letter
