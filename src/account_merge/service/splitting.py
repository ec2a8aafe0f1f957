"""Splitting: only an establishment undoes merges, for its own letters (S1-S3).

A split takes, from a live responsable account, the children whose merged
letter the establishment issued, and gives them to new PROVISIONAL
accounts, one per letter they first came with (each for the responsable
that letter named), each with a new letter.  The account keeps the rest.
Nothing a parent can call splits.

On a store with the school's register, a child both responsables are
listed for stays with both: the account keeps the children another letter
it holds lists, and each new account gets every child its letter lists.
"""

from __future__ import annotations

import functools

import attrs

from account_merge.domain.account import Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import MergeSplit
from account_merge.domain.letter import NotificationLetter
from account_merge.domain.passwords import generate_provisional_password
from account_merge.domain.receipts import SplitReceipt
from account_merge.domain.register import keep_listed
from account_merge.domain.rules import SplitPlan, plan_split
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import (
    AccountMergeError,
    AccountNotFound,
    ConcurrentUpdate,
    NotAuthorized,
)
from account_merge.ports.register import Register, RegisterChanges, RegisterFetch
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched, UnitOfWork
from account_merge.ports.tiers import require_tier, supports
from account_merge.service.arguments import establishment_arg
from account_merge.service.context import WRITE_RETRIES, Context, logger
from account_merge.service.issuing import new_account

__all__ = ["split"]


class _Replan(Exception):
    """The account changed between the preview and the write: hash again."""


class _Moved(Exception):
    """The account is held by another live account than the one read with it."""

    def __init__(self, live_id: str) -> None:
        super().__init__(live_id)
        self.live_id = live_id


@attrs.frozen
class _Preview:
    """What a split would do, read without locks: the live account, and the letters'
    accounts (one per new account), so that the write reads them in one call."""

    live_id: str
    origins: tuple[str, ...]


def _read(uow: UnitOfWork, establishment: Establishment, account_id: str, *,
          live_id: str, origins: tuple[str, ...] = (),
          lock: bool) -> tuple[AccountRecord, SplitPlan, Fetched]:
    """In one call: the account, the live account *live_id* holding it, its links, the
    establishment and the *origins* accounts; and what the split would move.

    Raises :class:`_Moved` when *live_id* no longer holds the account.
    """
    fetched = uow.fetch(Fetch(accounts=tuple(dict.fromkeys((account_id, live_id, *origins))),
                              links=(live_id,), establishments=(establishment.uai,),
                              lock=lock))
    if establishment.uai not in fetched.establishments:
        raise NotAuthorized("unknown establishment")
    found = fetched.accounts.get(account_id)
    if found is None:
        raise AccountNotFound(account_id)
    holder = found.account.merged_into or account_id
    if holder != live_id:
        raise _Moved(holder)
    live = fetched.accounts.get(live_id)
    if live is None:
        raise AccountNotFound(live_id)
    return live, plan_split(establishment, live.account, fetched.links[live_id]), fetched


def _preview(ctx: Context, establishment: Establishment, account_id: str) -> _Preview:
    """Where the split applies and to which letters, to hash their passwords outside any lock."""
    live_id = account_id
    with ctx.reading() as uow:
        for _ in range(2):
            try:
                _, plan, _ = _read(uow, establishment, account_id, live_id=live_id, lock=False)
            except _Moved as moved:  # an absorbed account: the split applies to its holder
                live_id = moved.live_id
                continue
            return _Preview(live_id=live_id,
                            origins=tuple(g.origin_account_id for g in plan.groups))
    raise _Replan()


def _write(ctx: Context, establishment: Establishment, account_id: str, preview: _Preview,
           passwords: list[str], hashes: list[str]) -> SplitReceipt:
    now = ctx.now()
    actor = f"establishment:{establishment.uai}"
    with ctx.writing() as uow:
        try:
            live, plan, fetched = _read(uow, establishment, account_id,
                                        live_id=preview.live_id, origins=preview.origins,
                                        lock=True)
        except _Moved:
            raise _Replan() from None
        if len(plan.groups) != len(hashes):
            raise _Replan()
        origins = dict(fetched.accounts)
        unread = [g.origin_account_id for g in plan.groups
                  if g.origin_account_id not in preview.origins]
        if unread:  # the letters changed since the preview (their number did not)
            origins.update(uow.fetch(Fetch(accounts=tuple(unread))).accounts)
        view = _register_view(uow, establishment, live.account.id,
                              fetched.links[live.account.id], plan)
        staying = {link.child.id for link in view.kept}
        changes = ChangeSet(unlink=tuple(link for link in plan.removed
                                         if link.child.id not in staying), link=view.kept)
        moved_to: dict[str, str] = {}
        letters: list[NotificationLetter] = []
        claimed: set[str] = set()
        for group, password, password_hash in zip(plan.groups, passwords, hashes, strict=True):
            origin = origins.get(group.origin_account_id)
            name = (origin or live).account.display_name
            children = group.children + view.extra.get(group.origin_account_id, ())
            new, _ = new_account(ctx, uow, establishment=establishment, display_name=name,
                                 role=Role.RESPONSABLE, children=children,
                                 password_hash=password_hash, now=now, exclude=claimed)
            claimed.update(n.login_key for n in new.changes.new_accounts)
            changes += new.changes + ChangeSet(
                events=(MergeSplit(occurred_at=now, principal_id=live.account.id,
                                   new_account_id=new.account.id,
                                   establishment_uai=establishment.uai,
                                   moved_child_ids=tuple(c.id for c in children)),),
                audit=(AuditRecord(at=now, action=AuditAction.SPLIT, outcome="success",
                                   actor=actor, account_id=live.account.id,
                                   detail=f"new account {new.account.id}"),))
            letters.append(new.letter(establishment, password, children))
            moved_to[group.origin_account_id] = new.account.id
        uow.apply(changes)
        _follow_in_register(uow, establishment, moved_to)
        uow.commit()
    logger.info("split %d children of %s from %s into %d new accounts",
                len(plan.moved), establishment.uai, live.account.id, len(letters))
    return SplitReceipt(principal_id=live.account.id, moved=plan.moved, letters=tuple(letters))


@attrs.frozen
class _RegisterView:
    """What the school's register changes in a split (nothing on a store without it).

    ``kept``: links that stay on the account, credited to another letter it
    holds that lists their child; ``extra``: per letter split off, the
    children its register entry lists that the account holds through
    another letter: the new account gets them too, so that it holds every
    child the letter lists.
    """

    kept: tuple[ChildLink, ...] = ()
    extra: dict[str, tuple[Child, ...]] = attrs.Factory(dict)


def _register_view(uow: UnitOfWork, establishment: Establishment, holder_id: str,
                   links: tuple[ChildLink, ...], plan: SplitPlan) -> _RegisterView:
    if not supports(uow, Register):
        return _RegisterView()
    tier: Register = require_tier(uow, Register)
    absorbed = uow.fetch(Fetch(absorbed=(holder_id,))).absorbed.get(holder_id, ())
    letters = (holder_id, *(a.id for a in absorbed))
    found = tier.register_fetch(RegisterFetch(accounts=letters)).by_account
    held = [r for account in letters for r in found.get(account, ())]
    kept = keep_listed(holder_id, plan.removed, held)
    on_account = {link.child.id for link in links}
    extra: dict[str, tuple[Child, ...]] = {}
    for group in plan.groups:
        moving = {c.id for c in group.children}
        extra[group.origin_account_id] = tuple(
            c for r in found.get(group.origin_account_id, ())
            if r.establishment_uai == establishment.uai
            for c in r.children if c.id in on_account and c.id not in moving)
    return _RegisterView(kept, extra)


def _follow_in_register(uow: UnitOfWork, establishment: Establishment,
                        moved_to: dict[str, str]) -> None:
    """The register's entries of the split letters now name the new accounts.

    So that the next sync of the establishment's register finds each
    responsable on their new account (a store without the ``register``
    tier has no entries to follow).
    """
    if not supports(uow, Register):
        return
    tier: Register = require_tier(uow, Register)
    found = tier.register_fetch(RegisterFetch(accounts=tuple(moved_to))).by_account
    tier.register_apply(RegisterChanges(put=tuple(
        attrs.evolve(record, account_id=moved_to[origin])
        for origin, records in found.items() for record in records
        if record.establishment_uai == establishment.uai)))


def split(ctx: Context, establishment: Establishment, account_id: str) -> SplitReceipt:
    """Undo merges, for the children of *establishment* (rules S1-S3)."""
    establishment_arg(establishment)
    check_identifier("account_id", account_id)
    actor = f"establishment:{establishment.uai}"
    try:
        for _ in range(WRITE_RETRIES):
            try:
                # How many letters the split makes, to hash their passwords outside any lock.
                preview = _preview(ctx, establishment, account_id)
                passwords = [generate_provisional_password(ctx.policies.provisional_length)
                             for _ in preview.origins]
                hashes = [ctx.verifier.hash(p) for p in passwords]
                return ctx.retry(functools.partial(_write, ctx, establishment, account_id,
                                                   preview, passwords, hashes))
            except _Replan:
                continue
        raise ConcurrentUpdate("the account kept changing during the split; try again")
    except AccountMergeError as error:
        ctx.audit(AuditRecord(at=ctx.now(), action=AuditAction.SPLIT, outcome=error.code,
                              actor=actor, account_id=None))
        raise
