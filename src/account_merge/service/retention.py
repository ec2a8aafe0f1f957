"""Retention: the purge the host runs every night, and a parent's own data on request.

:func:`purge` applies the :class:`~account_merge.domain.retention.RetentionPolicy`
(``policies.retention``), step after step, each in batches of
``retention.batch`` rows, each batch a short unit of work of its own, so
that no lock is held long, a purge can be stopped at any time and run
again (it goes on where it stopped; a purge with nothing due changes
nothing), and two purges at once only share the work:

1. the hashes of expired letters are erased;
2. failure counters at rest for ``counters`` are deleted;
3. audit records past ``audit`` are deleted or pseudonymised;
4. never-activated, then unused, then closed accounts (closed by the
   school's register, on a store with the ``register`` tier) that are due
   are deleted, each with the accounts it had absorbed
   (:func:`~account_merge.domain.retention.forgotten` says what goes with
   them: their counters and receipts, their register records and closure,
   and their audit records, pseudonymised), under lock, after their due
   date is checked again, with an
   :class:`~account_merge.domain.events.AccountPurged` event each; an
   account holding a child its letters' register records list (an
   enrolled child) that no account not due holds is kept
   (``kept_for_children``): taking a child away is the register's job.
   A responsable whose account went is new to the register again: the
   next sync listing them issues a letter;
5. the outbox is read once, by position: events that name an account no
   longer stored, published events past ``published_events`` and
   unpublished ones past ``unpublished_events`` are deleted (never one
   with a notice still to send);

and an audit record of the purge, with its counts, is written when it
deleted anything.  A dry run does the same work in units of work that are
rolled back, and reports what a purge would delete (steps 1 to 3 each in
one unit of work, so that each batch sees what the ones before it did:
on SQLite, writers wait for a dry run's step to end).

:func:`export_personal_data` gathers what the store holds about one
account, for the parent's right of access (RGPD art. 15); the fields are
described in ``docs/privacy.md``.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import attrs

from account_merge.domain.account import Account
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import AccountPurged, OutboxEntry, account_ids_of
from account_merge.domain.retention import (
    AuditEnd,
    PurgeReason,
    PurgeReport,
    RetentionPolicy,
    closed_cutoff,
    due_reason,
    forgotten,
    letter_issued_at,
    plan_purge,
    pseudonym,
    unactivated_cutoff,
    unused_cutoff,
)
from account_merge.domain.validation import check_identifier
from account_merge.exceptions import AccountNotFound, InvalidInput, StorageError
from account_merge.ports.register import Register, RegisterFetch
from account_merge.ports.retention import DueKind, Retention
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched, UnitOfWork
from account_merge.ports.tiers import require_tier, supports
from account_merge.service.context import Context, logger

__all__ = ["EXPORT_FORMAT", "Progress", "export_personal_data", "purge"]

#: The ``format`` of :func:`export_personal_data`'s answer.
EXPORT_FORMAT = "account_merge.personal_data/1"

#: Called after each batch with the number of rows (accounts, events, records,
#: counters, hashes) the purge has handled so far.
Progress = Callable[[int], None]


@attrs.define
class _Run:
    """One purge: its time, its counts, and what a dry run pretends it deleted."""

    ctx: Context
    policy: RetentionPolicy
    now: datetime
    dry_run: bool
    progress: Progress | None
    deleted: Counter[str] = attrs.Factory(Counter)
    kept_for_children: int = 0
    erased_hashes: int = 0
    audit_deleted: int = 0
    audit_pseudonymised: int = 0
    events_deleted: int = 0
    counters_deleted: int = 0
    account_ids: list[str] = attrs.Factory(list)
    #: the accounts deleted so far (a dry run's are still stored)
    gone: set[str] = attrs.Factory(set)
    handled: int = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[tuple[UnitOfWork, Retention]]:
        """A writing unit of work with its retention tier; committed unless a dry run."""
        with self.ctx.writing() as uow:
            yield uow, require_tier(uow, Retention)
            if not self.dry_run:
                uow.commit()

    def done(self, count: int) -> None:
        self.handled += count
        if self.progress is not None and count:
            self.progress(self.handled)

    def report(self) -> PurgeReport:
        return PurgeReport(
            at=self.now, dry_run=self.dry_run, deleted=dict(self.deleted),
            kept_for_children=self.kept_for_children, erased_hashes=self.erased_hashes,
            audit_deleted=self.audit_deleted, audit_pseudonymised=self.audit_pseudonymised,
            events_deleted=self.events_deleted, counters_deleted=self.counters_deleted,
            account_ids=tuple(self.account_ids))

    def repeat(self, step: Callable[[Retention, int], int]) -> int:
        """Run *step* (which works on at most *limit* rows) until it does less than that.

        Each batch is a unit of work of its own; a dry run runs them all in
        one unit of work, rolled back at the end (each batch sees what the
        ones before it did).
        """
        limit = self.policy.batch
        total = 0
        with contextlib.ExitStack() as stack:
            tier = stack.enter_context(self.batch())[1] if self.dry_run else None
            while True:
                count = step(tier, limit) if tier is not None else self.ctx.retry(
                    functools.partial(self.alone, step, limit))
                total += count
                self.done(count)
                if count < limit:
                    return total


    def alone(self, step: Callable[[Retention, int], int], limit: int) -> int:
        """*step* in a unit of work of its own."""
        with self.batch() as (_, tier):
            return step(tier, limit)


# -- 4. accounts -------------------------------------------------------------------------------
def _purge_accounts(run: _Run, kind: DueKind, before: datetime) -> None:
    """Delete the accounts of *kind* due at *before*, page after page."""
    after: tuple[datetime, str] | None = None
    while True:
        with run.ctx.reading() as uow:
            page = require_tier(uow, Retention).accounts_due(kind, before, after,
                                                            run.policy.batch)
        ids = [r.account.id for r in page.records if r.account.id not in run.gone]
        if ids:
            run.ctx.retry(functools.partial(_delete_accounts, run, ids))
        if page.after is None:
            return
        if after is not None and page.after <= after:  # a store whose pages do not advance
            logger.error("purge: the store gave the same page of %s accounts again; "
                         "stopping this step", kind.value)
            return
        after = page.after


def _delete_accounts(run: _Run, ids: list[str]) -> None:
    """Lock the accounts, check each is still due, and delete those the plan lets go."""
    ctx, now = run.ctx, run.now
    with run.batch() as (uow, tier):
        fetched = uow.fetch(Fetch(accounts=ids, links=ids, absorbed=ids, lock=True))

        def why(record: AccountRecord, closed_at: datetime | None) -> PurgeReason | None:
            return due_reason(record.account, record.credential, run.policy,
                              provisional_validity=ctx.policies.provisional_validity, now=now,
                              closed_at=closed_at)

        register = _Enrolment.read(uow, fetched, ids, why)
        due = []
        for account_id in ids:
            record = fetched.accounts.get(account_id)
            if record is None:
                continue  # deleted since the page was read (another purge)
            reason = why(record, register.closed_at.get(account_id))
            if reason is not None:
                due.append((record.account, reason))
        plan = plan_purge(due, fetched.absorbed,
                          {i: [link.child.id for link in fetched.links.get(i, ())] for i in ids},
                          enrolled=register.enrolled, holders=register.holders)
        if plan.deleted:
            tier.forget(forgotten(plan.accounts))
            uow.apply(ChangeSet(events=tuple(
                AccountPurged(occurred_at=now, pseudonym=pseudonym(account.id),
                              reason=reason.value, establishment_uai=account.establishment_uai)
                for account, reason in plan.deleted)))
    run.kept_for_children += len(plan.kept)
    for account, reason in plan.deleted:
        run.deleted[reason.value] += 1
        run.account_ids.append(account.id)
        run.gone.add(account.id)
    run.done(len(plan.deleted))


@attrs.frozen
class _Enrolment:
    """What the register tier says about a batch: closures, enrolled children, holders."""

    closed_at: dict[str, datetime] = attrs.Factory(dict)
    #: by account id, the children the register records of its letters list
    enrolled: dict[str, frozenset[str]] = attrs.Factory(dict)
    #: for those children, the responsable accounts holding a link to them that are
    #: not due (an account deleted already, in a dry run too, was due)
    holders: dict[str, set[str]] = attrs.Factory(dict)

    @classmethod
    def read(cls, uow: UnitOfWork, fetched: Fetched, ids: list[str],
             why: Callable[[AccountRecord, datetime | None], PurgeReason | None],
             ) -> _Enrolment:
        """Read it for the accounts *ids*; *why* says whether an account is due.

        Only accounts that are not due count as holders, so that what a
        purge keeps does not depend on the order it meets due accounts in
        (two due accounts holding an enrolled child are both kept when one of
        them lists it).  A store without the ``register`` tier has no closure
        and no enrolled child.
        """
        if not supports(uow, Register):
            return cls()
        tier: Register = require_tier(uow, Register)
        letters = {i: [i, *(a.id for a in fetched.absorbed.get(i, ()))] for i in ids}
        found = tier.register_fetch(RegisterFetch(
            accounts=[a for i in ids for a in letters[i]], closures=ids))
        enrolled: dict[str, frozenset[str]] = {}
        by_school: dict[str, set[str]] = {}
        for account_id in ids:
            held = {link.child.id for link in fetched.links.get(account_id, ())}
            listed = [child for letter in letters[account_id]
                      for record in found.by_account.get(letter, ())
                      for child in record.children if child.id in held]
            enrolled[account_id] = frozenset(child.id for child in listed)
            for child in listed:
                by_school.setdefault(child.establishment_uai, set()).add(child.id)
        holding: dict[str, set[str]] = {}
        for uai, children in sorted(by_school.items()):
            links = tier.register_fetch(RegisterFetch(
                origin_links=sorted(children), establishment=uai)).origin_links
            for child_id, child_links in links.items():
                holding.setdefault(child_id, set()).update(link.account_id
                                                           for link in child_links)
        closed_at = {i: c.closed_at for i, c in found.closures.items()}
        others = sorted({a for accounts in holding.values() for a in accounts} - set(ids))
        records = dict(fetched.accounts)
        if others:
            records.update(uow.fetch(Fetch(accounts=others)).accounts)
            closed_at.update((i, c.closed_at) for i, c in tier.register_fetch(
                RegisterFetch(closures=others)).closures.items())
        not_due = {i for i, record in records.items() if why(record, closed_at.get(i)) is None}
        return cls(closed_at=closed_at, enrolled=enrolled,
                   holders={c: accounts & not_due for c, accounts in holding.items()})


# -- 5. the outbox -----------------------------------------------------------------------------
def _expired(run: _Run, entry: OutboxEntry) -> bool:
    """True if *entry* is past its time: published or not."""
    age = run.now - entry.event.occurred_at
    if entry.published:
        return age >= run.policy.published_events
    limit = run.policy.unpublished_events
    return limit is not None and age >= limit


def _purge_outbox(run: _Run) -> None:
    """One pass over the outbox: events of deleted accounts, and events past their time.

    Each page is read without the write lock; a unit of work deletes what
    it found, if anything (an account not stored when the page was read is
    never stored again: ids are not reused).
    """
    gone = run.gone  # a dry run has not deleted them
    position = 0
    while True:
        with run.ctx.reading() as uow:
            page = require_tier(uow, Retention).outbox_page(position, run.policy.batch)
            named = {i for entry in page for i in account_ids_of(entry.event)}
            stored = uow.fetch(Fetch(accounts=sorted(named))).accounts if named else {}
        if not page:
            return
        doomed = [entry.position for entry in page
                  if _expired(run, entry) or any(
                      i not in stored or i in gone for i in account_ids_of(entry.event))]
        if doomed:
            count = run.ctx.retry(functools.partial(run.alone, _deleting(doomed), 0))
            run.events_deleted += count
            run.done(count)
        if page[-1].position <= position:  # a store whose pages do not advance
            logger.error("purge: the store gave outbox entries at or before position %d "
                         "again; stopping this step", position)
            return
        position = page[-1].position


def _deleting(positions: list[int]) -> Callable[[Retention, int], int]:
    """A step deleting the outbox entries at *positions*."""
    return lambda tier, _: tier.delete_outbox(positions)


# -- the use cases -----------------------------------------------------------------------------
def purge(ctx: Context, *, dry_run: bool, progress: Progress | None) -> PurgeReport:
    """Apply the retention policy (see the module docstring); what was deleted."""
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run", "must be True or False")
    if progress is not None and not callable(progress):
        raise InvalidInput("progress", "must be a callable or None")
    policy = ctx.policies.retention
    now = ctx.now()
    with ctx.reading() as uow:
        require_tier(uow, Retention)  # before anything: not_supported names the tier
        has_register = supports(uow, Register)
    run = _Run(ctx, policy, now, dry_run, progress)
    run.erased_hashes = run.repeat(lambda tier, limit: tier.erase_hashes(now, limit))
    run.counters_deleted = run.repeat(
        lambda tier, limit: tier.delete_counters(now - policy.counters, limit))
    pseudonymise = policy.audit_end is AuditEnd.PSEUDONYMISE
    ended = run.repeat(lambda tier, limit: tier.end_audit(now - policy.audit, limit,
                                                          pseudonymise=pseudonymise))
    if pseudonymise:
        run.audit_pseudonymised = ended
    else:
        run.audit_deleted = ended
    validity = ctx.policies.provisional_validity
    _purge_accounts(run, DueKind.UNACTIVATED, unactivated_cutoff(policy, validity, now))
    _purge_accounts(run, DueKind.UNUSED, unused_cutoff(policy, now))
    if has_register:  # a store without the register tier closes no account
        _purge_accounts(run, DueKind.CLOSED, closed_cutoff(policy, now))
    _purge_outbox(run)
    report = run.report()
    if not dry_run and run.handled:
        ctx.storage.write(ChangeSet(audit=(AuditRecord(
            at=now, action=AuditAction.PURGE, outcome="success", detail=_summary(report)),)))
    logger.info("%s: %s", "purge (dry run)" if dry_run else "purge", _summary(report))
    return report


def _summary(report: PurgeReport) -> str:
    data = report.to_dict()
    deleted = ", ".join(f"{reason} {count}" for reason, count in data["deleted"].items())
    return (f"accounts {data['accounts']} ({deleted}), kept for children "
            f"{data['kept_for_children']}; hashes erased {data['erased_hashes']}; events "
            f"{data['events_deleted']}; audit records deleted {data['audit_deleted']}, "
            f"pseudonymised {data['audit_pseudonymised']}; counters {data['counters_deleted']}")


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _account(account: Account) -> dict[str, Any]:
    return {"id": account.id, "login": account.login, "role": account.role.value,
            "status": account.status.value, "display_name": account.display_name,
            "establishment_uai": account.establishment_uai,
            "created_at": account.created_at.isoformat(), "email": account.email,
            "merged_into": account.merged_into,
            "last_signed_in_at": _time(account.last_signed_in_at)}


def export_personal_data(ctx: Context, account_id: str) -> dict[str, Any]:
    """Everything the store holds about the account and its own doings (JSON-ready)."""
    check_identifier("account_id", account_id)
    with ctx.reading() as uow:
        tier: Retention = require_tier(uow, Retention)
        fetched = uow.fetch(Fetch(accounts=(account_id,), links=(account_id,),
                                  absorbed=(account_id,)))
        record = fetched.accounts.get(account_id)
        if record is None:
            raise AccountNotFound(account_id)
        account, credential = record.account, record.credential
        links = fetched.links[account_id]
        held = tier.held_about(forgotten([account]))
        events = _events_naming(tier, account_id, ctx.policies.retention.batch)
        register = _register_about(uow, [account_id, *(a.id for a in fetched.absorbed[account_id])])
        uais = sorted({account.establishment_uai,
                       *(entry["establishment_uai"] for entry in register["register"]),
                       *(link.origin_establishment_uai for link in links),
                       *(link.child.establishment_uai for link in links)})
        schools = uow.fetch(Fetch(establishments=uais)).establishments
    return {
        "format": EXPORT_FORMAT,
        "generated_at": ctx.now().isoformat(),
        "account": _account(account),
        "credential": None if credential is None else {
            "kind": credential.kind.value, "expires_at": _time(credential.expires_at),
            "letter_issued_at": _time(letter_issued_at(
                credential, ctx.policies.provisional_validity))},
        "children": [{
            "id": link.child.id, "first_name": link.child.first_name,
            "last_name": link.child.last_name,
            "establishment_uai": link.child.establishment_uai,
            "origin_account_id": link.origin_account_id,
            "origin_establishment_uai": link.origin_establishment_uai,
            "via_merge": link.via_merge, "linked_at": link.linked_at.isoformat()}
            for link in links],
        "absorbed_accounts": [_account(a) for a in fetched.absorbed[account_id]],
        "establishments": {uai: school.name for uai, school in sorted(schools.items())},
        "audit": [{
            "at": r.at.isoformat(), "action": r.action.value, "outcome": r.outcome,
            "actor": r.actor, "account_id": r.account_id, "login": r.login, "detail": r.detail}
            for r in held.audit],
        "counters": [{
            "key": c.key, "consecutive": c.consecutive,
            "last_failure_at": _time(c.last_failure_at),
            "recent": [t.isoformat() for t in c.recent]} for c in held.counters],
        "merge_receipts": [{"idempotency_key": key, **receipt.to_dict()}
                           for _, key, receipt in held.receipts],
        "events": [{"position": e.position, "name": e.event.name, "published": e.published,
                    "payload": e.event.to_payload()} for e in events],
        **register,
    }


def _register_about(uow: UnitOfWork, account_ids: list[str]) -> dict[str, Any]:
    """The register records of the account's letters (its own, those it absorbed), and its
    closure (none on a store without the ``register`` tier)."""
    if not supports(uow, Register):
        return {"register": [], "closure": None}
    found = require_tier(uow, Register).register_fetch(RegisterFetch(
        accounts=account_ids, closures=account_ids[:1]))
    closure = found.closures.get(account_ids[0])
    return {
        "register": [{
            "establishment_uai": r.establishment_uai, "external_id": r.external_id,
            "account_id": r.account_id, "display_name": r.display_name, "email": r.email,
            "children": [{"id": c.id, "first_name": c.first_name, "last_name": c.last_name,
                          "establishment_uai": c.establishment_uai} for c in r.children]}
            for account_id in account_ids for r in found.by_account.get(account_id, ())],
        "closure": None if closure is None else {
            "establishment_uai": closure.establishment_uai,
            "closed_at": closure.closed_at.isoformat()},
    }


def _events_naming(tier: Retention, account_id: str, batch: int) -> list[OutboxEntry]:
    """The outbox entries whose event names *account_id* (one pass over the outbox)."""
    found: list[OutboxEntry] = []
    position = 0
    while page := tier.outbox_page(position, batch):
        found += [e for e in page if account_id in account_ids_of(e.event)]
        if page[-1].position <= position:  # a store whose pages do not advance
            raise StorageError("retention", "the outbox gave the same entries again")
        position = page[-1].position
    return found
