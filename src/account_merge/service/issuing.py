"""Issuing accounts: what an establishment does when it sends letters.

:func:`issue_account` makes one PROVISIONAL account and its letter;
:func:`issue_accounts` many, hashing on every core.  :func:`new_account`
is the part shared with every use case that creates an account with a
letter (a split, later a re-issue or a register sync): a free login, the
account, its provisional credential and its children's links.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime

import attrs

from account_merge.domain.account import (
    Account,
    AccountStatus,
    Credential,
    CredentialKind,
    Role,
    validate_email,
)
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import AccountIssued
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.logins import derive_logins, login_key
from account_merge.domain.passwords import generate_provisional_password
from account_merge.domain.secret import Secret
from account_merge.domain.validation import check_text
from account_merge.exceptions import ConcurrentUpdate, InvalidInput
from account_merge.hashpool import MAX_WORKERS, hash_passwords
from account_merge.ports.storage import NOTHING, ChangeSet, Fetch, Fetched, NewAccount, UnitOfWork
from account_merge.service.arguments import establishment_arg
from account_merge.service.context import Context, logger

__all__ = ["NewAccountPlan", "check_family", "issue_account", "issue_accounts", "new_account",
           "provisional_credential"]

#: Logins tried for one new account (the plain one, then with random digits).
LOGIN_CANDIDATES = 20


def check_family(
    establishment: Establishment, display_name: str, children: Iterable[Child],
    role: Role, email: str | None,
) -> tuple[tuple[Child, ...], str | None]:
    """The checked children and e-mail of an account to issue."""
    establishment_arg(establishment)
    check_text("display_name", display_name)
    if not isinstance(role, Role):
        raise InvalidInput("role", "must be a Role")
    if email is not None:
        email = validate_email(email)
    if isinstance(children, (str, bytes)) or not isinstance(children, Iterable):
        raise InvalidInput("children", "must be a sequence of Child")
    kids = tuple(children)
    if not all(isinstance(c, Child) for c in kids):
        raise InvalidInput("children", "must be a sequence of Child")
    if len({c.id for c in kids}) != len(kids):
        raise InvalidInput("children", "the same child is listed twice")
    if any(c.establishment_uai != establishment.uai for c in kids):
        raise InvalidInput("children", f"every child must be enrolled in {establishment.uai}")
    if role is Role.RESPONSABLE and not kids:
        raise InvalidInput("children", "a responsable account needs at least one child")
    if role is Role.ELEVE and len(kids) != 1:
        raise InvalidInput("children", "a pupil's account names exactly one child, the pupil")
    return kids, email


@attrs.frozen
class NewAccountPlan:
    """A new PROVISIONAL account with its credential and links, ready to apply."""

    account: Account
    expires_at: datetime
    changes: ChangeSet

    def letter(self, establishment: Establishment, password: str,
               children: tuple[Child, ...]) -> NotificationLetter:
        """The letter of this account, carrying *password* (never stored)."""
        return NotificationLetter(
            account_id=self.account.id, login=self.account.login,
            provisional_password=Secret(password), establishment=establishment,
            display_name=self.account.display_name, children=children,
            issued_at=self.account.created_at, expires_at=self.expires_at,
        )


def provisional_credential(ctx: Context, account_id: str, password_hash: str,
                           now: datetime) -> Credential:
    """A letter's provisional credential for *account_id*, valid ``provisional_validity``."""
    return Credential(account_id=account_id, password_hash=password_hash,
                      kind=CredentialKind.PROVISIONAL,
                      expires_at=now + ctx.policies.provisional_validity)


def new_account(
    ctx: Context, uow: UnitOfWork, *, establishment: Establishment, display_name: str,
    role: Role, children: tuple[Child, ...], password_hash: str, now: datetime,
    email: str | None = None, also: Fetch = NOTHING, exclude: Collection[str] = (),
) -> tuple[NewAccountPlan, Fetched]:
    """A new account for *display_name*, under the first free login derived from it.

    The logins are looked up in one read; the account, its provisional
    credential (valid ``provisional_validity``) and its children's links
    (each child's origin is this account and *establishment*) are the
    plan's change set.  A login taken between the read and the write makes
    ``apply`` raise ``LoginTaken``, and the caller's step runs again.  What
    *also* names is read in the same call and returned with the plan.
    Login keys in *exclude* are taken already (by accounts the same change
    set creates).
    """
    candidates = derive_logins(display_name, LOGIN_CANDIDATES)
    keys = [login_key(c) for c in candidates]
    fetched = uow.fetch(attrs.evolve(also, logins=(*keys, *also.logins)))
    taken = fetched.by_login
    free = next((i for i, k in enumerate(keys) if k not in taken and k not in exclude), None)
    if free is None:
        raise ConcurrentUpdate("could not find a free login; try again")
    account_id = uuid.uuid4().hex
    account = Account(id=account_id, login=candidates[free], role=role,
                      status=AccountStatus.PROVISIONAL, display_name=display_name,
                      establishment_uai=establishment.uai, created_at=now, email=email)
    credential = provisional_credential(ctx, account_id, password_hash, now)
    assert credential.expires_at is not None
    expires = credential.expires_at
    changes = ChangeSet(
        new_accounts=(NewAccount(account, keys[free]),),
        credentials=(credential,),
        link=tuple(ChildLink(account_id=account_id, child=c, origin_account_id=account_id,
                             origin_establishment_uai=establishment.uai, via_merge=False,
                             linked_at=now) for c in children),
    )
    return NewAccountPlan(account=account, expires_at=expires, changes=changes), fetched


def _store(ctx: Context, establishment: Establishment, display_name: str,
           kids: tuple[Child, ...], role: Role, email: str | None, password: str,
           password_hash: str) -> NotificationLetter:
    now = ctx.now()
    with ctx.writing() as uow:
        plan, fetched = new_account(
            ctx, uow, establishment=establishment, display_name=display_name, role=role,
            children=kids, password_hash=password_hash, now=now, email=email,
            also=Fetch(establishments=(establishment.uai,)))
        account = plan.account
        known = establishment.uai in fetched.establishments
        uow.apply(
            ChangeSet(establishments=() if known else (establishment,))
            + plan.changes
            + ChangeSet(
                events=(AccountIssued(occurred_at=now, account_id=account.id,
                                      establishment_uai=establishment.uai, role=role.value,
                                      child_ids=tuple(c.id for c in kids)),),
                audit=(AuditRecord(at=now, action=AuditAction.ISSUE, outcome="success",
                                   actor=f"establishment:{establishment.uai}",
                                   account_id=account.id, login=account.login),),
            ))
        uow.commit()
    logger.info("issued account %s (%s) for %s", account.id, account.login, establishment.uai)
    return plan.letter(establishment, password, kids)


def issue_account(ctx: Context, establishment: Establishment, display_name: str,
                  children: Iterable[Child], role: Role, email: str | None) -> NotificationLetter:
    """A PROVISIONAL account for *display_name* and its letter."""
    kids, email = check_family(establishment, display_name, children, role, email)
    password = generate_provisional_password(ctx.policies.provisional_length)
    password_hash = ctx.verifier.hash(password)
    return ctx.retry(lambda: _store(ctx, establishment, display_name, kids, role, email,
                                    password, password_hash))


def issue_accounts(
    ctx: Context, establishment: Establishment, families: Iterable[tuple[str, Iterable[Child]]],
    role: Role, *, workers: int | None, progress: Callable[[int], None] | None,
) -> Iterator[NotificationLetter]:
    """One account per ``(display_name, children)`` family, hashing on every core."""
    establishment_arg(establishment)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        raise InvalidInput("workers", f"must be an int from 1 to {MAX_WORKERS}, or None")
    if isinstance(families, (str, bytes)) or not isinstance(families, Iterable):
        raise InvalidInput("families", "must be an iterable of (display_name, children)")

    def prepared() -> Iterator[tuple[tuple[str, tuple[Child, ...]], str]]:
        for family in families:
            if not isinstance(family, tuple) or len(family) != 2:
                raise InvalidInput("families", "each family is a (display_name, children) pair")
            display_name, children = family
            kids, _ = check_family(establishment, display_name, children, role, None)
            yield (display_name, kids), generate_provisional_password(
                ctx.policies.provisional_length)

    hashed = hash_passwords(ctx.verifier, prepared(), workers=workers)
    for issued, ((display_name, kids), password, password_hash) in enumerate(hashed, 1):
        letter = ctx.retry(functools.partial(_store, ctx, establishment, display_name, kids,
                                             role, None, password, password_hash))
        if progress is not None:
            progress(issued)
        yield letter
