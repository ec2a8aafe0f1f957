"""The way back for a parent who forgot: « mot de passe oublié ? », « identifiant oublié ? ».

A request (:func:`request_password_reset`, :func:`request_login_reminder`)
answers nothing, ever: it returns None after the same storage work
whether the login or address belongs to an account or not (OWASP Forgot
Password Cheat Sheet; ASVS 5.0 6.3.8).  In one writing unit of work it
reads the account by login and by confirmed address, *counts the request*
on the identifier's counter and the client's in the same call, and writes
one event (naming the accounts found, perhaps none) and one audit record.
Nothing is sent here: ``deliver_notices`` makes the notices from the
outbox later, to the address on record (CVE-2019-19844), so a failing
mail server tells nothing about which addresses exist (CVE-2024-45231).

Only an ACTIVE account with a confirmed address is reset by self-service
(:func:`~account_merge.domain.recovery.resettable`).  A never-activated or
absorbed account gets the same answer; its way back is a letter its
school re-issues.  A merged account's login does **not** reset the
account holding it (see ``docs/recovery.md``, *Merged accounts*).

:func:`reset_password` takes a token from a reset link and a new password.
The token is checked against the account's current state, so it works
once, within ``reset_validity``, and dies with any change of password.
The parent is not signed in: the host sends them to the sign-in page.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from account_merge.domain.account import (
    Account,
    AccountStatus,
    Credential,
    CredentialKind,
    validate_email,
)
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import (
    Event,
    LoginReminderRequested,
    PasswordReset,
    PasswordResetRequested,
)
from account_merge.domain.recovery import email_key, resettable
from account_merge.domain.secret import Secret
from account_merge.domain.throttle import (
    check_client,
    recovery_client_key,
    recovery_key,
    token_key,
)
from account_merge.domain.tokens import TokenPurpose
from account_merge.domain.validation import (
    MAX_EMAIL_LENGTH,
    check_text,
    escape_for_log,
)
from account_merge.exceptions import (
    InvalidInput,
    InvalidToken,
    PasswordPolicyError,
    TooManyAttempts,
)
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch
from account_merge.ports.tiers import EmailIndex, require_tier
from account_merge.service.arguments import password_arg
from account_merge.service.context import Context, logger
from account_merge.service.own_account import check_new_password
from account_merge.service.token_check import read_claims, token_opens

__all__ = ["MAX_MATCHES", "request_login_reminder", "request_password_reset", "reset_password"]

#: At most this many accounts are found for one address.
MAX_MATCHES = 20

#: Builds a request's event from the accounts it found (perhaps none).
EventBuilder = Callable[[datetime, list[AccountRecord]], Event]


def _identifier_arg(value: object) -> str:
    """A login or an address as typed: 1 to 254 printable characters."""
    if not isinstance(value, str):
        raise InvalidInput("login_or_email", f"must be a string, not {type(value).__name__}")
    return check_text("login_or_email", value, max_length=MAX_EMAIL_LENGTH)


def _found(key: str, fetched_by_login: AccountRecord | None,
           by_email: list[AccountRecord]) -> list[AccountRecord]:
    """The accounts with this login, and those whose address *on record* has this key."""
    found = {} if fetched_by_login is None else {fetched_by_login.account.id: fetched_by_login}
    for record in by_email:
        address = record.account.email
        if address is not None and email_key(address) == key:
            found.setdefault(record.account.id, record)
    if not by_email:
        email_key(key)  # the work of one address found: no quicker answer for nobody's
    return [found[i] for i in sorted(found)]


def _request(ctx: Context, action: AuditAction, typed: str, client: str | None, *,
             by_login: bool, event: EventBuilder) -> None:
    """One recovery request: read, count, write the event and the audit, alike for anyone."""
    throttle = ctx.policies.throttle
    key = email_key(typed)
    counters = (recovery_key(key), *((recovery_client_key(client),) if client else ()))
    now = ctx.now()

    def write() -> float:
        with ctx.writing() as uow:
            index: EmailIndex = require_tier(uow, EmailIndex)
            fetched = uow.fetch(Fetch(logins=(key,) if by_login else (), count=counters,
                                      at=now, keep=throttle.keep))
            by_email = index.accounts_by_email(key, MAX_MATCHES)
            wait = max(throttle.wait(fetched.throttles[k], now) for k in counters)
            if wait > 0:
                return wait  # leaving without commit forgets the count
            found = _found(key, fetched.by_login.get(key), by_email)
            uow.apply(ChangeSet(
                events=(event(now, found),),
                audit=(AuditRecord(at=now, action=action, outcome="success",
                                   login=escape_for_log(typed)),)))
            uow.commit()
        return 0.0

    wait = ctx.retry(write)
    if wait > 0:
        # Said to nobody (the answer is None, always): audited and logged for operators.
        ctx.audit(AuditRecord(at=now, action=action, outcome=TooManyAttempts.code,
                              login=escape_for_log(typed)))
        logger.warning("%s throttled (%d s)", action.value, throttle.retry_after(wait))


def request_password_reset(ctx: Context, login_or_email: str, client: str | None) -> None:
    """Record a reset request for a login or address; None, whatever it matched."""
    typed = _identifier_arg(login_or_email)
    client = check_client(client)
    signer = ctx.recovery.require(TokenPurpose.PASSWORD_RESET)

    def event(now: datetime, found: list[AccountRecord]) -> Event:
        targets = [r for r in found if resettable(r.account, r.credential)]
        bindings = [signer.binding(r.account, r.credential) for r in targets]
        if not targets:
            signer.binding(None, None)  # the same work as for one account
        return PasswordResetRequested(occurred_at=now,
                                      account_ids=tuple(r.account.id for r in targets),
                                      bindings=tuple(bindings))

    _request(ctx, AuditAction.REQUEST_PASSWORD_RESET, typed, client, by_login=True,
             event=event)
    logger.info("password reset requested")


def request_login_reminder(ctx: Context, email: str, client: str | None) -> None:
    """Record a login-reminder request for an address; None, whatever it matched."""
    typed = validate_email(email)
    client = check_client(client)

    def event(now: datetime, found: list[AccountRecord]) -> Event:
        live = [r for r in found if r.account.status is AccountStatus.ACTIVE]
        return LoginReminderRequested(occurred_at=now,
                                      account_ids=tuple(r.account.id for r in live))

    _request(ctx, AuditAction.REQUEST_LOGIN_REMINDER, typed, client, by_login=False,
             event=event)
    logger.info("login reminder requested")


def reset_password(ctx: Context, token: str, new_password: str | Secret,
                   client: str | None) -> Account:
    """Set a new password with a reset link's token; the account, not signed in."""
    signer = ctx.recovery.signer
    if signer is None:
        raise InvalidInput("secret_key", "is needed to check the links of notices")
    if not isinstance(token, str):
        raise InvalidInput("token", f"must be a string, not {type(token).__name__}")
    new = password_arg("new_password", new_password)
    client = check_client(client)
    throttle = ctx.policies.throttle
    claims = read_claims(signer, token, TokenPurpose.PASSWORD_RESET)
    counters = (token_key(client),) if client else ()
    now = ctx.now()
    validity = ctx.policies.reset_validity

    def refuse(outcome: str) -> None:
        ctx.audit(AuditRecord(at=now, action=AuditAction.RESET_PASSWORD, outcome=outcome))

    # Step 1: read the account the token names, counting the attempt (from a client).
    with ctx.writing() as uow:
        fetched = uow.fetch(Fetch(accounts=(claims.account_id,) if claims else (),
                                  count=counters, at=now, keep=throttle.keep))
        wait = max((throttle.wait(fetched.throttles[k], now) for k in counters), default=0.0)
        if wait <= 0:
            uow.commit()
    if wait > 0:
        refuse(TooManyAttempts.code)
        logger.warning("password reset throttled")
        raise TooManyAttempts(throttle.retry_after(wait))
    record = fetched.accounts.get(claims.account_id) if claims else None
    opens = token_opens(signer, token, claims, record, TokenPurpose.PASSWORD_RESET,
                        validity, now)
    if not opens or record is None or not resettable(record.account, record.credential):
        refuse(InvalidToken.code)
        logger.info("password reset refused: invalid token")
        raise InvalidToken()
    account = record.account

    # Step 2: the policy, then one hash, outside any transaction.
    try:
        check_new_password(ctx, new, account.login, old=None,
                           context=tuple(w for w in (account.display_name, account.email) if w))
    except PasswordPolicyError as error:
        ctx.storage.write(ChangeSet(
            throttles=tuple(throttle.release(fetched.throttles[k], now) for k in counters),
            audit=(AuditRecord(at=now, action=AuditAction.RESET_PASSWORD, outcome=error.code,
                               account_id=account.id),)))
        raise
    new_hash = ctx.verifier.hash(new)

    # Step 3: under lock, the token must still open the account (it works once).
    def write() -> Account:
        at = ctx.now()
        with ctx.writing() as uow:
            found = uow.fetch(Fetch(accounts=(account.id,), throttles=counters, lock=True))
            current = found.accounts.get(account.id)
            if not token_opens(signer, token, claims, current, TokenPurpose.PASSWORD_RESET,
                               validity, at) or current is None:
                raise InvalidToken()
            credential = Credential(account_id=account.id, password_hash=new_hash,
                                    kind=CredentialKind.PASSWORD)
            uow.apply(ChangeSet(
                credentials=(credential,),
                throttles=tuple(throttle.cleared(k) for k in counters),
                events=(PasswordReset(occurred_at=at, account_id=account.id),),
                audit=(AuditRecord(at=at, action=AuditAction.RESET_PASSWORD, outcome="success",
                                   actor=account.id, account_id=account.id),)))
            uow.commit()
        return current.account

    done = ctx.guarded(AuditAction.RESET_PASSWORD, None, write)
    logger.info("password of account %s reset", account.id)
    return done
