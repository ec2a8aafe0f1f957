"""Reading: what a parent's screens and a school's staff look up.

Each read is one read-only unit of work and one :class:`~account_merge.ports.Fetch`.
"""

from __future__ import annotations

from collections.abc import Sequence

from account_merge.domain.account import Account
from account_merge.domain.audit import AuditRecord
from account_merge.domain.child import AttachedChild
from account_merge.domain.events import OutboxEntry
from account_merge.domain.logins import login_key
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import AccountNotFound
from account_merge.ports.storage import ChangeSet, Fetch
from account_merge.service.arguments import limit_arg, login_arg, positions_arg
from account_merge.service.context import Context

__all__ = ["attached_children", "audit_trail", "find_account", "get_account", "mark_published",
           "resolve", "unpublished_events"]


def get_account(ctx: Context, account_id: str) -> Account:
    """The account with this id, or ``account_not_found``."""
    check_identifier("account_id", account_id)
    with ctx.reading() as uow:
        found = uow.fetch(Fetch(accounts=(account_id,))).accounts.get(account_id)
    if found is None:
        raise AccountNotFound(account_id)
    return found.account


def find_account(ctx: Context, login: str) -> Account:
    """The account with this login (case and width folded), or ``account_not_found``."""
    key = login_key(login_arg(login))
    with ctx.reading() as uow:
        found = uow.fetch(Fetch(logins=(key,))).by_login.get(key)
    if found is None:
        raise AccountNotFound(login)
    return found.account


def resolve(ctx: Context, account_id: str) -> Account:
    """The live account holding *account_id*: itself, or the one that absorbed it."""
    account = get_account(ctx, account_id)
    if account.merged_into is None:
        return account
    try:
        return get_account(ctx, account.merged_into)
    except AccountNotFound:
        raise AccountNotFound(account.merged_into) from None


def attached_children(ctx: Context, account_id: str) -> tuple[AttachedChild, ...]:
    """The children with their responsable and where each came from."""
    check_identifier("account_id", account_id)
    with ctx.reading() as uow:
        fetched = uow.fetch(Fetch(accounts=(account_id,), links=(account_id,)))
    found = fetched.accounts.get(account_id)
    if found is None:
        raise AccountNotFound(account_id)
    return tuple(
        AttachedChild(child=link.child, responsable=found.account.display_name,
                      origin_account_id=link.origin_account_id,
                      origin_establishment_uai=link.origin_establishment_uai,
                      via_merge=link.via_merge)
        for link in fetched.links[account_id]
    )


def unpublished_events(ctx: Context, limit: int) -> list[OutboxEntry]:
    """The oldest events not yet marked published, in order."""
    limit = limit_arg(limit)
    with ctx.reading() as uow:
        return uow.unpublished(limit)


def mark_published(ctx: Context, positions: Sequence[int]) -> None:
    """Mark these outbox positions as published (positions never given are ignored)."""
    ctx.storage.write(ChangeSet(published=positions_arg(positions)))


def audit_trail(ctx: Context, account_id: str | None, limit: int) -> list[AuditRecord]:
    """The last audit records (about *account_id* if given), oldest first."""
    if account_id is not None:
        check_identifier("account_id", account_id)
    limit = limit_arg(limit)
    with ctx.reading() as uow:
        return uow.audit_records(account_id, limit)
