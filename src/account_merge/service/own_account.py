"""The parent's own account: activate it, sign in, change the password or the e-mail.

Every password typed here counts against the sign-in counter of its login
*and client* (see :mod:`account_merge.domain.throttle`), never against the
merge form's, so neither a stranger's wrong guesses from elsewhere nor
merge-form failures slow the owner down.
"""

from __future__ import annotations

import attrs

from account_merge.domain.account import (
    Account,
    AccountStatus,
    Credential,
    CredentialKind,
    validate_email,
)
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import AccountActivated, EmailChanged, PasswordChanged
from account_merge.domain.logins import login_key
from account_merge.domain.proofs import Purpose
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import check_client, signin_key
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import (
    AccountMerged,
    AccountNotFound,
    ActivationRequired,
    InvalidCredentials,
    PasswordPolicyError,
    PrincipalNotActive,
)
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched, SignIn
from account_merge.service.arguments import login_arg, password_arg
from account_merge.service.context import Context, logger
from account_merge.service.credential_check import Attempt, CredentialCheck, hash_for
from account_merge.service.reading import get_account

__all__ = ["activate", "authenticate", "change_email", "change_password",
           "check_new_password"]


def check_new_password(ctx: Context, password: str, login: str, *, old: str | None,
                       context: tuple[str, ...] = ()) -> None:
    """The password policy, and a new password that is not the current one.

    (Its length was bounded already: ``password_arg`` refuses longer input.)
    """
    if old is not None and password == old:
        raise PasswordPolicyError("the new password must differ from the current one",
                                  rule="unchanged")
    ctx.policies.password_policy.check(password, login=login, context=context)


def _context_words(account: Account) -> tuple[str, ...]:
    return tuple(w for w in (account.display_name, account.email) if w)


def activate(ctx: Context, login: str, provisional_password: str | Secret,
             new_password: str | Secret, email: str | None, client: str | None) -> Account:
    """First sign-in: the letter's provisional password is replaced by the parent's own."""
    login = login_arg(login)
    provisional = password_arg("provisional_password", provisional_password)
    new = password_arg("new_password", new_password)
    client = check_client(client)
    if email is not None:
        email = validate_email(email)
    check_new_password(ctx, new, login, old=provisional)  # before any work: tells nothing
    check = CredentialCheck(ctx)
    attempt = Attempt(action=AuditAction.ACTIVATE, login=login, password=provisional,
                      counters=(signin_key(login_key(login), client),),
                      choose_hash=hash_for(Purpose.ACTIVATE))
    proof = check.prove(attempt)
    account = proof.record.account
    # The names on the account are known now, and only to the letter's holder.
    _check_or_give_back(ctx, account, new, login, attempt, email=email)
    new_hash = ctx.verifier.hash(new)

    def build(_: Fetched, current: AccountRecord) -> tuple[ChangeSet, Account]:
        now = ctx.now()
        active = attrs.evolve(current.account, status=AccountStatus.ACTIVE,
                              email=email if email is not None else current.account.email,
                              last_signed_in_at=now)
        return ChangeSet(
            accounts=(active,),
            credentials=(Credential(account_id=active.id, password_hash=new_hash,
                                    kind=CredentialKind.PASSWORD),),
            events=(AccountActivated(occurred_at=now, account_id=active.id),),
            audit=(AuditRecord(at=now, action=AuditAction.ACTIVATE, outcome="success",
                               actor=active.id, account_id=active.id, login=active.login),),
        ), active

    active = check.finish(proof, build, clear=attempt.counters)
    logger.info("activated account %s", account.id)
    return active


def _check_or_give_back(ctx: Context, account: Account, new: str, login: str,
                        attempt: Attempt, *, email: str | None = None) -> None:
    """The policy's context words, once the password is proven; a refusal gives the attempt back."""
    words = _context_words(account) + ((email,) if email else ())
    try:
        check_new_password(ctx, new, login, old=None, context=words)
    except PasswordPolicyError as error:
        ctx.storage.write(ChangeSet(
            throttles=tuple(ctx.policies.throttle.cleared(k) for k in attempt.counters),
            audit=(attempt.audit(ctx.now(), error.code, account.id),)))
        raise


def authenticate(ctx: Context, login: str, password: str | Secret,
                 client: str | None) -> Account:
    """Sign in to an ACTIVE account.

    Once the password is proven (never before), a letter's provisional
    password gives ``activation_required`` and an absorbed account's last
    password ``account_merged``; anything else is ``invalid_credentials``.
    A hash made with other argon2 parameters than the current ones is
    replaced by a new hash of the same password.
    """
    login = login_arg(login)
    secret = password_arg("password", password)
    client = check_client(client)
    check = CredentialCheck(ctx)
    attempt = Attempt(action=AuditAction.AUTHENTICATE, login=login, password=secret,
                      counters=(signin_key(login_key(login), client),),
                      choose_hash=hash_for(Purpose.SIGN_IN))
    proof = check.prove(attempt)
    account, credential = proof.record.account, proof.record.credential
    assert credential is not None
    now = ctx.now()
    if account.status is not AccountStatus.ACTIVE:
        error = (ActivationRequired(account.id) if account.status is AccountStatus.PROVISIONAL
                 else AccountMerged(account.id))
        check.finish_alone(proof, ChangeSet(audit=(attempt.audit(now, error.code, account.id),)),
                           clear=attempt.counters)
        raise error
    rehash = (Credential(account.id, ctx.verifier.hash(secret), credential.kind,
                         credential.expires_at)
              if ctx.verifier.needs_rehash(credential.password_hash) else None)
    check.finish_alone(proof, ChangeSet(
        sign_ins=(SignIn(account.id, now),),
        credentials=(rehash,) if rehash is not None else (),
        audit=(AuditRecord(at=now, action=AuditAction.AUTHENTICATE, outcome="success",
                           actor=account.id, account_id=account.id),),
    ), clear=attempt.counters)
    return attrs.evolve(account, last_signed_in_at=now)


def change_password(ctx: Context, account_id: str, current_password: str | Secret,
                    new_password: str | Secret, client: str | None) -> None:
    """Change an ACTIVE account's password, proven by the current one."""
    account = get_account(ctx, account_id)
    current = password_arg("current_password", current_password)
    new = password_arg("new_password", new_password)
    client = check_client(client)
    if account.status is not AccountStatus.ACTIVE:
        raise PrincipalNotActive()
    check_new_password(ctx, new, account.login, old=current, context=_context_words(account))
    check = CredentialCheck(ctx)
    attempt = Attempt(action=AuditAction.CHANGE_PASSWORD, login=account.login, password=current,
                      counters=(signin_key(login_key(account.login), client),),
                      choose_hash=hash_for(Purpose.REAUTHENTICATE), actor=account.id)
    proof = check.prove(attempt)
    if proof.account_id != account.id:
        raise InvalidCredentials()
    new_hash = ctx.verifier.hash(new)

    def build(_: Fetched, __: AccountRecord) -> tuple[ChangeSet, None]:
        now = ctx.now()
        return ChangeSet(
            credentials=(Credential(account_id=account.id, password_hash=new_hash,
                                    kind=CredentialKind.PASSWORD),),
            events=(PasswordChanged(occurred_at=now, account_id=account.id),),
            audit=(AuditRecord(at=now, action=AuditAction.CHANGE_PASSWORD, outcome="success",
                               actor=account.id, account_id=account.id),),
        ), None

    check.finish(proof, build, clear=attempt.counters)


def change_email(ctx: Context, account_id: str, email: str) -> Account:
    """Change an ACTIVE account's e-mail address."""
    check_identifier("account_id", account_id)
    email = validate_email(email)

    def write() -> Account:
        now = ctx.now()
        with ctx.writing() as uow:
            found = uow.fetch(Fetch(accounts=(account_id,), lock=True)).accounts.get(account_id)
            if found is None:
                raise AccountNotFound(account_id)
            if found.account.status is not AccountStatus.ACTIVE:
                raise PrincipalNotActive()
            changed = attrs.evolve(found.account, email=email)
            uow.apply(ChangeSet(
                accounts=(changed,),
                events=(EmailChanged(occurred_at=now, account_id=account_id),),
                audit=(AuditRecord(at=now, action=AuditAction.CHANGE_EMAIL, outcome="success",
                                   actor=account_id, account_id=account_id),),
            ))
            uow.commit()
        return changed

    return ctx.guarded(AuditAction.CHANGE_EMAIL, None, write, actor=account_id)
