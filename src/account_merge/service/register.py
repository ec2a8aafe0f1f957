"""The school's register: an establishment syncs the accounts with what SIECLE or ONDE says.

:func:`sync_register` reads the establishment's register once (a whole
register by default, a delta with ``partial=True``) and, in steps that
each read as the rules of :mod:`account_merge.domain.register`:

1. **stage** it on disk (:mod:`~account_merge.service.staging`) and
   refuse it whole, with every bad line, if it does not hold together;
2. **compare** it with the records the store keeps, a page at a time:
   an entry as the store has it is *unchanged* and costs nothing more
   (no account is read, nothing is hashed); the others are new, changed,
   or gone (a whole register only), and a whole register also tells which
   children the establishment's letters gave that nobody lists any more;
3. **adopt** for a new responsable the one letter the school gave them
   before it kept its register here, if exactly one bears their name;
4. **plan and write each live account concerned**, a batch per unit of
   work under lock: the children its letters list are attached, those no
   letter it holds lists are detached, names are corrected, an account
   left with no child is closed, a closed one with a child again opens;
5. **issue** a letter to each responsable still new, hashing on every
   core as :func:`~account_merge.service.issuing.issue_accounts` does.

A dry run does steps 1 to 5 without writing or hashing, and returns the
same report.  The store needs the ``register`` tier
(:class:`~account_merge.ports.register.Register`).

Over 500 lines because the sync is one use case whose steps share one state
(the staged register, the report being built); each step is a method that
reads top to bottom.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import attrs

from account_merge.domain.account import Account, AccountStatus, Role
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.establishment import Establishment
from account_merge.domain.events import (
    AccountClosed,
    AccountIssued,
    AccountReopened,
    ChildAttached,
    ChildDetached,
    Event,
    RegisterSynced,
)
from account_merge.domain.passwords import generate_provisional_password
from account_merge.domain.register import (
    AccountChange,
    ChildChange,
    HolderPlan,
    Listing,
    NameChange,
    RegisterEntry,
    RegisterLetter,
    RegisterRecord,
    SyncMode,
    SyncReport,
    choose_adoption,
    plan_holder,
)
from account_merge.exceptions import ConcurrentUpdate, InvalidInput, InvalidRegister
from account_merge.hashpool import MAX_WORKERS, hash_passwords
from account_merge.ports.register import (
    Closure,
    Register,
    RegisterChanges,
    RegisterFetch,
)
from account_merge.ports.storage import ChangeSet, Fetch, UnitOfWork
from account_merge.ports.tiers import require_tier
from account_merge.service.arguments import establishment_arg
from account_merge.service.context import Context, logger
from account_merge.service.issuing import new_account
from account_merge.service.staging import StagedRegister, raw_listing

__all__ = ["Progress", "sync_register"]

#: Told how far a sync is: ``(stage, done, total)``; stages are ``read``,
#: ``compare``, ``children``, ``accounts``, ``letters``; *total* None when
#: not known in advance.
Progress = Callable[[str, int, int | None], None]


def sync_register(
    ctx: Context, establishment: Establishment, entries: Iterable[RegisterEntry], *,
    dry_run: bool, partial: bool, workers: int | None = None,
    progress: Progress | None = None,
    on_letter: Callable[[RegisterLetter], None] | None = None,
) -> SyncReport:
    """Bring the establishment's accounts in line with its register (see the module)."""
    establishment_arg(establishment)
    for name, flag in (("dry_run", dry_run), ("partial", partial)):
        if not isinstance(flag, bool):
            raise InvalidInput(name, "must be True or False")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        raise InvalidInput("workers", f"must be an int from 1 to {MAX_WORKERS}, or None")
    with ctx.reading() as uow:
        require_tier(uow, Register)
    mode = SyncMode.PARTIAL if partial else SyncMode.FULL
    with StagedRegister(establishment.uai) as staged:
        staged.load(entries, None if progress is None else
                    lambda done: progress("read", done, None))
        if staged.problems:  # refused input: nothing written, not even an audit record
            raise InvalidRegister(staged.problems)
        sync = _Sync(ctx, establishment, staged, mode, dry_run, progress)
        return sync.run(workers, on_letter)


@attrs.define
class _Found:
    """What the comparison found to do."""

    changed: dict[str, None] = attrs.Factory(dict)  # account ids of entries to look at
    leavers: list[str] = attrs.Factory(list)        # child ids nobody lists any more
    new: list[str] = attrs.Factory(list)            # external ids the store does not know
    unchanged: int = 0


class _Sync:
    """One sync's steps and what they found (see the module docstring)."""

    def __init__(self, ctx: Context, establishment: Establishment, staged: StagedRegister,
                 mode: SyncMode, dry_run: bool, progress: Progress | None) -> None:
        self.ctx = ctx
        self.establishment = establishment
        self.uai = establishment.uai
        self.actor = f"establishment:{establishment.uai}"
        self.staged = staged
        self.mode = mode
        self.dry_run = dry_run
        self.progress = progress
        self.found = _Found()
        # adopted letters: (uai, external id) -> the record the sync will write
        self.adopted: dict[tuple[str, str], RegisterRecord] = {}
        self.to_issue: list[str] = []
        self.done: set[str] = set()  # live accounts settled already
        self.parts: dict[str, list[object]] = {name: [] for name in SyncReport.CHANGES}
        self.report = SyncReport(self.uai, mode, dry_run, entries=staged.responsables)

    def tell(self, stage: str, done: int, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def add(self, **parts: Sequence[object]) -> None:
        for name, items in parts.items():
            self.parts[name].extend(items)

    # -- the steps ------------------------------------------------------------------
    def run(self, workers: int | None,
            on_letter: Callable[[RegisterLetter], None] | None) -> SyncReport:
        self.compare()
        if self.mode is SyncMode.FULL:
            self.find_leavers()
        self.adopt()
        self.settle_accounts()
        self.issue(workers, on_letter)
        parts: dict[str, Any] = {name: tuple(sorted(items, key=_in_register_order))
                                 if name in _SORTED_PARTS else tuple(items)
                                 for name, items in self.parts.items()}
        self.report = attrs.evolve(self.report, unchanged=self.found.unchanged, **parts)
        if not self.dry_run:
            self.record_sync()
        logger.info("register of %s synced (%s%s): %s", self.uai, self.mode.value,
                    ", dry run" if self.dry_run else "", self.report.counts())
        return self.report

    def compare(self) -> None:
        """Step 2: the store's records against the register, a page at a time."""
        policies = self.ctx.policies
        cursor: str | None = None
        compared = 0
        while True:
            with self.ctx.reading() as uow:
                page = _tier(uow).register_page(self.uai, cursor, policies.register_page)
            records: Sequence[RegisterRecord] = page.items
            now = self.staged.raw_listings([r.external_id for r in records])
            for record in records:
                listed = now.get(record.external_id)
                if listed is not None:
                    if listed == raw_listing(record):
                        self.found.unchanged += 1
                    else:
                        self.found.changed[record.account_id] = None
                elif self.mode is SyncMode.FULL and record.children:
                    self.found.changed[record.account_id] = None  # gone from the register
            self.staged.mark_seen(list(now))
            compared += len(records)
            self.tell("compare", compared, None)
            cursor = page.cursor
            if cursor is None:
                break

    def find_leavers(self) -> None:
        """Step 2, whole register: children the establishment's letters gave, listed by nobody."""
        cursor: str | None = None
        seen = 0
        while True:
            with self.ctx.reading() as uow:
                page = _tier(uow).linked_children_page(self.uai, cursor,
                                                       self.ctx.policies.register_page)
            ids: Sequence[str] = page.items
            listed = self.staged.enrolled(ids)
            self.found.leavers.extend(i for i in ids if i not in listed)
            seen += len(ids)
            self.tell("children", seen, None)
            cursor = page.cursor
            if cursor is None:
                break

    def adopt(self) -> None:
        """Step 3: new responsables whose letter the school issued before its register."""
        taken: set[str] = set()
        for batch in self.staged.unseen(self.ctx.policies.register_batch):
            listings = self.staged.listings(batch)
            child_ids = sorted({c.id for listing in listings.values() for c in listing.children})
            with self.ctx.reading() as uow:
                tier = _tier(uow)
                origin = tier.register_fetch(RegisterFetch(
                    origin_links=child_ids, establishment=self.uai)).origin_links
                letters = {link.origin_account_id for links in origin.values() for link in links
                           if link.origin_establishment_uai == self.uai}
                accounts = uow.fetch(Fetch(accounts=tuple(letters))).accounts
                known = tier.register_fetch(RegisterFetch(accounts=tuple(letters))).by_account
            for ext in batch:
                listing = listings[ext]
                candidates = [
                    accounts[link.origin_account_id].account
                    for child in listing.children for link in origin.get(child.id, ())
                    if link.origin_establishment_uai == self.uai
                    and link.origin_account_id in accounts
                    and link.origin_account_id not in taken
                    and not any(r.establishment_uai == self.uai
                                for r in known.get(link.origin_account_id, ()))]
                chosen = choose_adoption(listing.display_name, candidates)
                if chosen is None:
                    self.to_issue.append(ext)
                    continue
                taken.add(chosen.id)
                record = RegisterRecord(self.uai, ext, chosen.id, listing.display_name,
                                        listing.email, listing.children)
                self.adopted[record.key] = record
                self.found.changed[chosen.id] = None
                self.add(adopted=((ext, chosen.id),))

    def settle_accounts(self) -> None:
        """Step 4: each live account concerned, planned and written a batch at a time."""
        pending: list[str] = list(self.found.changed)
        size = self.ctx.policies.register_batch
        for start in range(0, len(self.found.leavers), size):
            leavers = self.found.leavers[start:start + size]
            with self.ctx.reading() as uow:
                origin = _tier(uow).register_fetch(RegisterFetch(
                    origin_links=leavers, establishment=self.uai)).origin_links
            pending.extend(link.account_id for links in origin.values() for link in links)
        pending = list(dict.fromkeys(pending))
        total = len(pending)
        for start in range(0, total, size):
            batch = pending[start:start + size]
            if self.dry_run:
                with self.ctx.reading() as uow:
                    settled = self.settle(uow, batch, lock=False)
            else:
                settled = self.ctx.retry(functools.partial(self.settle_and_commit, batch))
            self.add(**settled.parts)
            self.done.update(settled.done)
            self.to_issue.extend(e for e in settled.reissue if e not in self.to_issue)
            self.tell("accounts", min(start + size, total), total)

    def settle_and_commit(self, batch: list[str]) -> _Settled:
        with self.ctx.writing() as uow:
            settled = self.settle(uow, batch, lock=True)
            uow.apply(settled.changes)
            _tier(uow).register_apply(settled.register)
            uow.commit()
        return settled

    def settle(self, uow: UnitOfWork, batch: list[str], *, lock: bool) -> _Settled:
        """Plan every live account holding one of *batch*'s letters (writing nothing)."""
        tier = _tier(uow)
        out = _Settled()
        first = uow.fetch(Fetch(accounts=tuple(batch))).accounts
        missing = [a for a in batch if a not in first]
        if missing:
            out.reissue = self.reissue_for(tier, missing)
        holders = [h for h in dict.fromkeys(
            (r.account.merged_into or r.account.id) for r in first.values())
            if h not in self.done]
        if not holders:
            return out
        fetched = uow.fetch(Fetch(accounts=tuple(dict.fromkeys([*holders, *first])),
                                  links=tuple(holders), absorbed=tuple(holders), lock=lock))
        for account_id in first:
            found = fetched.accounts.get(account_id)
            resolved = None if found is None else (found.account.merged_into or account_id)
            if resolved is None or (resolved not in holders and resolved not in self.done):
                raise ConcurrentUpdate("an account was merged during the sync; try again")
        if any(fetched.accounts[h].account.status is AccountStatus.MERGED for h in holders):
            raise ConcurrentUpdate("an account was merged during the sync; try again")
        absorbed = {h: fetched.absorbed.get(h, ()) for h in holders}
        held_ids = [*holders, *(a.id for accounts in absorbed.values() for a in accounts)]
        records = tier.register_fetch(RegisterFetch(accounts=tuple(held_ids))).by_account
        by_account: dict[str, list[RegisterRecord]] = {
            a: [r for r in records.get(a, ()) if r.key not in self.adopted] for a in held_ids}
        for record in self.adopted.values():
            if record.account_id in by_account:
                by_account[record.account_id].append(record)
        listed = self.staged.listings([r.external_id for rs in by_account.values() for r in rs
                                       if r.establishment_uai == self.uai])
        ours = {lk.child.id for h in holders for lk in fetched.links.get(h, ())
                if lk.origin_establishment_uai == self.uai}
        enrolled = (self.staged.enrolled(ours).__contains__
                    if self.mode is SyncMode.FULL else None)
        now = self.ctx.now()
        for holder_id in holders:
            holder = fetched.accounts[holder_id]
            out.done.append(holder_id)
            if holder.account.role is not Role.RESPONSABLE:
                continue
            letters = {holder_id: holder.account, **{a.id: a for a in absorbed[holder_id]}}
            mine = [r for account_id in letters for r in by_account[account_id]]
            current = [self.counting_now(r, listed) for r in mine]
            kind = holder.credential.kind if holder.credential is not None else None
            plan = plan_holder(holder.account, kind, fetched.links.get(holder_id, ()), current,
                               self.uai, enrolled, now)
            accounts = self.renamed(mine, current, letters, out)
            if plan.account is not None:
                renamed_holder = accounts.pop(holder_id, holder.account)
                accounts[holder_id] = attrs.evolve(
                    plan.account, display_name=renamed_holder.display_name)
            externals = {r.account_id: r.external_id for r in mine
                         if r.establishment_uai == self.uai}
            out.changes += self.holder_changes(plan, list(accounts.values()), now, externals,
                                               out)
            out.register += RegisterChanges(
                put=[c for r, c in zip(mine, current, strict=True)
                     if r.establishment_uai == self.uai and (c != r or r.key in self.adopted)],
                close=[Closure(holder_id, self.uai, now)] if plan.closed else [],
                reopen=[holder_id] if plan.reopened else [])
        return out

    def counting_now(self, record: RegisterRecord,
                     listed: dict[str, Listing]) -> RegisterRecord:
        """*record* with the listing that counts now (for the establishment: its register's)."""
        if record.establishment_uai != self.uai:
            return record
        listing = listed.get(record.external_id)
        if listing is not None:
            return record.with_listing(listing)
        if self.mode is SyncMode.FULL:
            return attrs.evolve(record, children=())
        return record

    def renamed(self, mine: list[RegisterRecord], current: list[RegisterRecord],
                letters: dict[str, Account], out: _Settled) -> dict[str, Account]:
        """The accounts whose responsable the register renamed, by id, renamed."""
        accounts: dict[str, Account] = {}
        for before, now in zip(mine, current, strict=True):
            account = letters.get(before.account_id)
            if (before.establishment_uai != self.uai or account is None
                    or account.display_name == now.display_name):
                continue
            accounts[account.id] = attrs.evolve(account, display_name=now.display_name)
            out.parts["renamed"].append(NameChange(account.id, account.display_name,
                                                   now.display_name,
                                                   external_id=before.external_id))
        return accounts

    def holder_changes(self, plan: HolderPlan, accounts: list[Account], now: datetime,
                       externals: dict[str, str], out: _Settled) -> ChangeSet:
        """The change set of one account's plan, with its events and audit record."""
        holder = plan.holder
        events: list[Event] = [
            *(ChildAttached(now, holder.id, lk.child.id, self.uai) for lk in plan.attached),
            *(ChildDetached(now, holder.id, lk.child.id, self.uai) for lk in plan.unlink)]
        if plan.closed:
            events.append(AccountClosed(now, holder.id, self.uai))
        if plan.reopened:
            events.append(AccountReopened(now, holder.id, self.uai))
        parts = out.parts
        parts["attached"].extend(ChildChange(holder.id, lk.child,
                                             externals.get(lk.origin_account_id))
                                 for lk in plan.attached)
        parts["detached"].extend(ChildChange(holder.id, lk.child,
                                             externals.get(lk.origin_account_id))
                                 for lk in plan.unlink)
        if plan.closed:
            parts["closed"].append(AccountChange(holder.id, holder.display_name))
        if plan.reopened:
            parts["reopened"].append(AccountChange(holder.id, holder.display_name))
        parts["renamed"].extend(
            NameChange(holder.id, f"{old.child.first_name} {old.child.last_name}",
                       f"{new.first_name} {new.last_name}", child_id=new.id)
            for old, new in plan.renamed)
        if not plan.changed and not accounts:
            return ChangeSet()
        said = [f"{name} {len(items)}" for name, items in (
            ("attached", plan.attached), ("detached", plan.unlink)) if items]
        said += [word for word, yes in (("closed", plan.closed), ("reopened", plan.reopened))
                 if yes]
        return ChangeSet(
            accounts=accounts, unlink=plan.unlink, link=plan.link, events=events,
            audit=[AuditRecord(at=now, action=AuditAction.SYNC_REGISTER, outcome="success",
                               actor=self.actor, account_id=holder.id,
                               detail=", ".join(said) or "renamed")])

    def reissue_for(self, tier: Register, account_ids: list[str]) -> list[str]:
        """Listed entries whose account is gone (purged): they get a letter, as new ones."""
        records = tier.register_fetch(RegisterFetch(accounts=tuple(account_ids))).by_account
        ours = [r.external_id for a in account_ids for r in records.get(a, ())
                if r.establishment_uai == self.uai]
        listed = self.staged.lines(ours)
        return [ext for ext in ours if ext in listed]

    # -- step 5: letters ----------------------------------------------------------------
    def issue(self, workers: int | None,
              on_letter: Callable[[RegisterLetter], None] | None) -> None:
        total = len(self.to_issue)
        if self.dry_run:
            for start in range(0, total, self.ctx.policies.register_batch):
                batch = self.to_issue[start:start + self.ctx.policies.register_batch]
                listings = self.staged.listings(batch)
                self.add(issued=[RegisterLetter(ext, listings[ext].display_name,
                                                listings[ext].children) for ext in batch])
            return
        if not total:
            return
        self.tell("letters", 0, total)

        def prepared() -> Iterator[tuple[tuple[str, Listing], str]]:
            size = self.ctx.policies.register_batch
            for start in range(0, total, size):
                batch = self.to_issue[start:start + size]
                listings = self.staged.listings(batch)
                for ext in batch:
                    yield (ext, listings[ext]), generate_provisional_password(
                        self.ctx.policies.provisional_length)

        issued = 0
        for (ext, listing), password, password_hash in hash_passwords(
                self.ctx.verifier, prepared(), workers=workers):
            letter = self.ctx.retry(functools.partial(
                self.store_letter, ext, listing, password, password_hash))
            issued += 1
            self.tell("letters", issued, total)
            if letter is None:
                continue
            self.add(issued=(letter,))
            if on_letter is not None:
                on_letter(letter)

    def store_letter(self, ext: str, listing: Listing, password: str,
                     password_hash: str) -> RegisterLetter | None:
        now = self.ctx.now()
        with self.ctx.writing() as uow:
            tier = _tier(uow)
            key = (self.uai, ext)
            before = tier.register_fetch(RegisterFetch(entries=(key,))).entries.get(key)
            plan, fetched = new_account(
                self.ctx, uow, establishment=self.establishment,
                display_name=listing.display_name, role=Role.RESPONSABLE,
                children=listing.children, password_hash=password_hash, now=now,
                email=listing.email,
                also=Fetch(establishments=(self.uai,),
                           accounts=(before.account_id,) if before is not None else ()))
            if before is not None and before.account_id in fetched.accounts:
                return None  # a concurrent sync issued it meanwhile
            account = plan.account
            known = self.uai in fetched.establishments
            uow.apply(
                ChangeSet(establishments=() if known else (self.establishment,))
                + plan.changes
                + ChangeSet(
                    events=(AccountIssued(occurred_at=now, account_id=account.id,
                                          establishment_uai=self.uai,
                                          role=Role.RESPONSABLE.value,
                                          child_ids=tuple(c.id for c in listing.children)),),
                    audit=(AuditRecord(at=now, action=AuditAction.ISSUE, outcome="success",
                                       actor=self.actor, account_id=account.id,
                                       login=account.login, detail=f"register {ext}"),)))
            tier.register_apply(RegisterChanges(put=(RegisterRecord(
                self.uai, ext, account.id, listing.display_name, listing.email,
                listing.children),)))
            uow.commit()
        logger.info("issued account %s (%s) for %s, register entry %s", account.id,
                    account.login, self.uai, ext)
        letter = plan.letter(self.establishment, password, listing.children)
        return RegisterLetter(ext, listing.display_name, listing.children, letter)

    def record_sync(self) -> None:
        """The sync's own event and audit record, even when it changed nothing."""
        counts = self.report.counts()
        now = self.ctx.now()
        self.ctx.storage.write(ChangeSet(
            events=(RegisterSynced(now, self.uai, self.mode.value, counts["issued"],
                                   counts["attached"], counts["detached"], counts["closed"]),),
            audit=(AuditRecord(at=now, action=AuditAction.SYNC_REGISTER, outcome="success",
                               actor=self.actor, detail=f"{self.mode.value}: " + ", ".join(
                                   f"{k} {v}" for k, v in counts.items())),)))


#: The parts of a report given in the register's order, whatever the store's ids.
_SORTED_PARTS = ("attached", "detached", "closed", "reopened", "adopted")


def _in_register_order(item: object) -> tuple[str, ...]:
    """By external id, then child id (then name): a report reads the same on every store."""
    if isinstance(item, ChildChange):
        return (item.external_id or "", item.child.id)
    if isinstance(item, AccountChange):
        return ("", "", item.display_name)
    if isinstance(item, tuple):  # adopted: (external id, account id)
        return (str(item[0]),)
    return ()


@attrs.define
class _Settled:
    """What one batch of step 4 writes, and what it adds to the report once written."""

    changes: ChangeSet = attrs.Factory(ChangeSet)
    register: RegisterChanges = attrs.Factory(RegisterChanges)
    parts: dict[str, list[object]] = attrs.Factory(lambda: {
        name: [] for name in ("attached", "detached", "closed", "reopened", "renamed")})
    done: list[str] = attrs.Factory(list)
    reissue: list[str] = attrs.Factory(list)


def _tier(uow: UnitOfWork) -> Register:
    tier: Register = require_tier(uow, Register)
    return tier
