"""Notices: what a parent should hear about, made from the outbox and sent through a mailer.

Every change a parent should hear about writes an event in its own
transaction; :func:`deliver_notices` (which the host runs periodically)
turns those events into :class:`~account_merge.domain.notices.Notice`
objects and hands them to a :class:`~account_merge.ports.mailer.Mailer`:

1. **queue** (one writing unit of work per batch): the outbox entries after
   the ``notices`` tier's cursor, published by the host or not, become one
   :class:`~account_merge.domain.notices.NoticeState` per notice to send,
   each with a stable id; a merge is also recorded for the establishments
   whose letters carried the children that moved;
2. **send** (no transaction): each pending notice is made now, from its
   event and the accounts as they are now, in the language asked, and
   sent.  A link is signed again from the event's binding (tokens are
   never stored); a notice whose link died since (the password or address
   changed, the link expired) or whose recipient has no confirmed address
   any more is dropped.  A failing send is logged (the notice's id and
   kind, never its text or link) and left for the next run, up to
   ``notice_attempts`` times;
3. **record** (one writing unit of work): what was sent, dropped or failed,
   and an audit record per notice sent.

Delivery is at least once: a run that stops between a send and the
record sends that notice again next time, with the same id (the SMTP
``Message-ID``), on which a mail server can de-duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs

from account_merge import messages
from account_merge.domain.account import AccountStatus
from account_merge.domain.audit import AuditAction, AuditRecord
from account_merge.domain.events import (
    AccountsMerged,
    EmailChanged,
    EmailVerificationRequested,
    Event,
    LetterReissued,
    LoginReminderRequested,
    OutboxEntry,
    PasswordChanged,
    PasswordReset,
    PasswordResetRequested,
    account_ids_of,
)
from account_merge.domain.notices import Notice, NoticeKind, NoticeState, NoticeStatus, notice_id
from account_merge.domain.recovery import confirmed_email, resettable
from account_merge.domain.tokens import TokenClaims, TokenPurpose
from account_merge.exceptions import InvalidInput
from account_merge.ports.mailer import Mailer
from account_merge.ports.storage import AccountRecord, ChangeSet, Fetch, Fetched
from account_merge.ports.tiers import Notices, require_tier
from account_merge.service.arguments import limit_arg
from account_merge.service.context import Context, logger

__all__ = ["SCAN_BATCH", "deliver_notices"]

#: Outbox entries queued per unit of work; a run queues at most 20 batches.
SCAN_BATCH = 500
_SCAN_BATCHES = 20


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


# -- 1. queue ------------------------------------------------------------------------------
def _reminder_addresses(event: LoginReminderRequested, fetched: Fetched) -> list[str]:
    """The distinct confirmed addresses of a reminder's accounts: one message each."""
    addresses = {confirmed_email(r.account, r.credential)
                 for i in event.account_ids if (r := fetched.accounts.get(i)) is not None}
    return sorted(a for a in addresses if a is not None)


def _roles(event: Event, fetched: Fetched) -> list[str]:
    """The notices an event gives, by role (an event may give none)."""
    if isinstance(event, PasswordResetRequested):
        return [f"reset-{i}" for i in range(len(event.account_ids))]
    if isinstance(event, LoginReminderRequested):
        return [f"reminder-{_digest(a)}" for a in _reminder_addresses(event, fetched)]
    if isinstance(event, EmailVerificationRequested):
        return ["verify"]
    if isinstance(event, EmailChanged):
        return ["old-address"] if event.old_email else []
    if isinstance(event, (PasswordChanged, PasswordReset)):
        return ["owner"]
    if isinstance(event, LetterReissued):
        return ["owner"] if event.email else []
    if isinstance(event, AccountsMerged):
        return ["principal", "absorbed"]
    return []


def _school_records(entries: Sequence[OutboxEntry], fetched: Fetched,
                    now: datetime) -> list[AuditRecord]:
    """For each merge, a record per establishment whose letters carried the children that moved."""
    records = []
    for entry in entries:
        event = entry.event
        if not isinstance(event, AccountsMerged):
            continue
        moved = set(event.moved_child_ids)
        by_school: dict[str, list[str]] = {}
        for link in fetched.links.get(event.principal_id, ()):
            if link.child.id in moved:
                by_school.setdefault(link.origin_establishment_uai, []).append(link.child.id)
        for uai, children in sorted(by_school.items()):
            records.append(AuditRecord(
                at=now, action=AuditAction.NOTICE, outcome="success",
                account_id=event.principal_id,
                detail=f"recorded for establishment {uai}: account {event.absorbed_id} merged into "
                       f"{event.principal_id} on {event.occurred_at.isoformat()}; children "
                       f"{', '.join(children)}; both accounts' confirmed addresses are told"))
    return records


def _queue(ctx: Context, now: datetime) -> None:
    """Turn the outbox entries after the cursor into notice states, batch by batch."""
    for _ in range(_SCAN_BATCHES):
        with ctx.writing() as uow:
            notices: Notices = require_tier(uow, Notices)
            entries = notices.outbox_after(notices.notice_cursor(), SCAN_BATCH)
            if not entries:
                return
            reminded = [i for e in entries if isinstance(e.event, LoginReminderRequested)
                        for i in e.event.account_ids]
            principals = [e.event.principal_id for e in entries
                          if isinstance(e.event, AccountsMerged)]
            fetched = uow.fetch(Fetch(accounts=reminded, links=principals))
            states = [NoticeState(id=notice_id(e.position, role, e.event), position=e.position,
                                  role=role, updated_at=now)
                      for e in entries for role in _roles(e.event, fetched)]
            notices.add_notices(states, entries[-1].position)
            audit = _school_records(entries, fetched, now)
            if audit:
                uow.apply(ChangeSet(audit=tuple(audit)))
            uow.commit()
        if len(entries) < SCAN_BATCH:
            return


# -- 2. make a notice ----------------------------------------------------------------------
class _Drop(Exception):
    """A notice that will never go: why, for the log."""


def _join(names: Iterable[str], language: str) -> str:
    items = list(names)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + messages.message("letter.list_and", language) + items[-1]




@attrs.frozen
class _Made:
    """A notice, the account it is about, and its token (to keep out of the logs)."""

    notice: Notice
    account_id: str
    token: str | None = None


class _Maker:
    """Makes the notices of pending states, from what one read found."""

    def __init__(self, ctx: Context, found: Fetched, language: str, now: datetime) -> None:
        self.ctx = ctx
        self.found = found
        self.language = language
        self.now = now

    def record(self, account_id: str) -> AccountRecord:
        record = self.found.accounts.get(account_id)
        if record is None:
            raise _Drop("the account is gone")
        return record

    def date(self, at: datetime) -> str:
        from babel.dates import format_date  # noqa: PLC0415 - when first needed

        return format_date(at, format="long", locale=self.language)

    def school_names(self, uais: Iterable[str]) -> str:
        names = [e.name for u in sorted(set(uais))
                 if (e := self.found.establishments.get(u)) is not None]
        return _join(names, self.language) or messages.message("notice.your_school",
                                                                self.language)

    def notice(self, state: NoticeState, kind: NoticeKind, to: str, name: str, *,
               url: str | None = None, **fields: object) -> Notice:
        language = self.language
        sign_in = None if url is not None else self.ctx.recovery.url("sign_in")
        parts = [messages.message("notice.greeting", language, name=name),
                 messages.message(f"notice.{kind.value}.body", language, url=url, **fields)]
        if sign_in is not None:
            parts.append(messages.message("notice.sign_in", language, url=sign_in))
        parts.append(messages.message("notice.footer", language))
        return Notice(to=to, subject=messages.message(f"notice.{kind.value}.subject", language,
                                                      **fields),
                      body="\n\n".join(parts), kind=kind, language=language,
                      url=url if url is not None else sign_in, id=state.id)

    def link(self, purpose: TokenPurpose, claims: TokenClaims, binding: str,
             record: AccountRecord) -> tuple[str, str]:
        """The token and link of a request, if the account is still as it was asked."""
        signer = self.ctx.recovery.signer
        if signer is None or purpose.value not in self.ctx.recovery.links:
            raise _Drop("no secret_key or link to make the link with")
        if signer.binding(record.account, record.credential) != binding:
            raise _Drop("the account changed since the request: the link would not work")
        validity = (self.ctx.policies.reset_validity if purpose is TokenPurpose.PASSWORD_RESET
                    else self.ctx.policies.email_confirmation_validity)
        if self.now >= claims.issued_at + validity:
            raise _Drop("the link expired before it could be sent")
        token = signer.sign(claims, binding)
        url = self.ctx.recovery.url(purpose.value, token)
        assert url is not None
        return token, url

    def make(self, state: NoticeState, event: Event) -> _Made:
        language = self.language
        if isinstance(event, PasswordResetRequested):
            index = int(state.role.rpartition("-")[2])
            record = self.record(event.account_ids[index])
            if not resettable(record.account, record.credential):
                raise _Drop("the account cannot be reset any more")
            claims = TokenClaims(TokenPurpose.PASSWORD_RESET, record.account.id,
                                 event.occurred_at)
            token, url = self.link(TokenPurpose.PASSWORD_RESET, claims, event.bindings[index],
                                   record)
            account = record.account
            assert account.email is not None
            return _Made(self.notice(
                state, NoticeKind.PASSWORD_RESET, account.email, account.display_name, url=url,
                login=account.login, validity=messages.describe_wait(
                    self.ctx.policies.reset_validity.total_seconds(), language)),
                account.id, token)
        if isinstance(event, LoginReminderRequested):
            digest = state.role.partition("-")[2]
            records = [r for i in event.account_ids if (r := self.found.accounts.get(i))
                       and r.account.status is AccountStatus.ACTIVE]
            same = [r for r in records if (a := confirmed_email(r.account, r.credential))
                    and _digest(a) == digest]
            if not same:
                raise _Drop("no account has this address any more")
            logins = "\n".join(f"- {r.account.login}" for r in same)
            account = same[0].account
            assert account.email is not None
            return _Made(self.notice(
                state, NoticeKind.LOGIN_REMINDER, account.email, account.display_name,
                logins=logins, intro=messages.message(
                    "notice.login_reminder.one" if len(same) == 1
                    else "notice.login_reminder.many", language)), account.id)
        if isinstance(event, EmailVerificationRequested):
            record = self.record(event.account_id)
            if record.account.status is not AccountStatus.ACTIVE:
                raise _Drop("the account is not active any more")
            claims = TokenClaims(TokenPurpose.EMAIL_VERIFICATION, record.account.id,
                                 event.occurred_at, event.email)
            token, url = self.link(TokenPurpose.EMAIL_VERIFICATION, claims, event.binding,
                                   record)
            return _Made(self.notice(
                state, NoticeKind.EMAIL_VERIFICATION, event.email, record.account.display_name,
                url=url, login=record.account.login, email=event.email,
                validity=messages.describe_wait(
                    self.ctx.policies.email_confirmation_validity.total_seconds(), language)),
                record.account.id, token)
        if isinstance(event, EmailChanged):
            record = self.record(event.account_id)
            assert event.old_email is not None
            return _Made(self.notice(
                state, NoticeKind.EMAIL_CHANGED, event.old_email, record.account.display_name,
                login=record.account.login, new_email=event.new_email or "",
                date=self.date(event.occurred_at)), record.account.id)
        if isinstance(event, (PasswordChanged, PasswordReset)):
            record = self.record(event.account_id)
            to = confirmed_email(record.account, record.credential)
            if to is None:
                raise _Drop("the account has no confirmed address")
            kind = (NoticeKind.PASSWORD_CHANGED if isinstance(event, PasswordChanged)
                    else NoticeKind.PASSWORD_RESET_DONE)
            return _Made(self.notice(state, kind, to, record.account.display_name,
                                     login=record.account.login,
                                     date=self.date(event.occurred_at)), record.account.id)
        if isinstance(event, LetterReissued):
            record = self.record(event.account_id)
            assert event.email is not None
            return _Made(self.notice(
                state, NoticeKind.LETTER_REISSUED, event.email, record.account.display_name,
                login=record.account.login, date=self.date(event.occurred_at),
                school=self.school_names([event.establishment_uai])), record.account.id)
        if isinstance(event, AccountsMerged):
            about = event.principal_id if state.role == "principal" else event.absorbed_id
            return _Made(self.merged(state, event), about)
        raise _Drop(f"no notice for {event.name}")  # pragma: no cover - roles gave none

    def merged(self, state: NoticeState, event: AccountsMerged) -> Notice:
        principal = self.record(event.principal_id)
        absorbed = self.record(event.absorbed_id)
        moved = set(event.moved_child_ids)
        links = [link for link in self.found.links.get(event.principal_id, ())
                 if link.child.id in moved]
        children = _join((f"{link.child.first_name} {link.child.last_name}" for link in links),
                         self.language)
        fields = {"login": principal.account.login, "absorbed_login": absorbed.account.login,
                  "date": self.date(event.occurred_at), "children": children or "-",
                  "schools": self.school_names(link.origin_establishment_uai
                                               for link in links)}
        to_principal = confirmed_email(principal.account, principal.credential)
        if state.role == "principal":
            if to_principal is None:
                raise _Drop("the principal account has no confirmed address")
            return self.notice(state, NoticeKind.ACCOUNT_MERGED, to_principal,
                               principal.account.display_name, **fields)
        to_absorbed = confirmed_email(absorbed.account, absorbed.credential)
        if to_absorbed is None:
            raise _Drop("the absorbed account had no confirmed address")
        if to_principal is not None and to_absorbed.casefold() == to_principal.casefold():
            raise _Drop("both accounts have the same address: one notice")
        fields["login"] = absorbed.account.login  # the principal's login is not told
        return self.notice(state, NoticeKind.ACCOUNT_ABSORBED, to_absorbed,
                           absorbed.account.display_name, **fields)


def _read_pending(ctx: Context, limit: int) -> tuple[list[tuple[NoticeState, OutboxEntry]],
                                                    Fetched]:
    """The pending notices, oldest first, and what making them needs, in one read."""
    with ctx.reading() as uow:
        notices: Notices = require_tier(uow, Notices)
        pending = notices.pending_notices(limit)
        events = [entry.event for _, entry in pending]
        ids = sorted({i for e in events for i in account_ids_of(e)})
        principals = sorted({e.principal_id for e in events if isinstance(e, AccountsMerged)})
        found = uow.fetch(Fetch(accounts=ids, links=principals))
        schools = {link.origin_establishment_uai for p in principals
                   for link in found.links.get(p, ())}
        schools.update(e.establishment_uai for e in events if isinstance(e, LetterReissued))
        with_schools = uow.fetch(Fetch(establishments=sorted(schools)))
    return pending, attrs.evolve(found, establishments=with_schools.establishments)


def _scrubbed(error: BaseException, token: str | None) -> str:
    text = f"{type(error).__name__}: {error}"
    return text.replace(token, "[token]") if token else text


# -- the use case ----------------------------------------------------------------------------
def deliver_notices(ctx: Context, mailer: Mailer, limit: int, language: str | None) -> int:
    """Queue the new events' notices, send up to *limit* pending ones; how many were sent."""
    limit = limit_arg(limit)
    if not callable(getattr(mailer, "send", None)):
        raise InvalidInput("mailer", "must have a send(notice) method")
    if language is None:
        code = messages.get_language()
    else:
        found_language = messages.normalize_language(language)
        if found_language is None:
            raise InvalidInput("language", f"must be one of {', '.join(messages.LANGUAGES)}")
        code = found_language
    now = ctx.now()
    _queue(ctx, now)
    pending, found = _read_pending(ctx, limit)
    maker = _Maker(ctx, found, code, now)
    updates: list[NoticeState] = []
    audit: list[AuditRecord] = []
    sent = 0
    for state, entry in pending:
        try:
            made = maker.make(state, entry.event)
        except _Drop as reason:
            logger.info("notice %s dropped: %s", state.id, reason)
            updates.append(attrs.evolve(state, status=NoticeStatus.DROPPED, updated_at=now))
            continue
        try:
            mailer.send(made.notice)
        except Exception as error:  # any failure of the mailer: the notice waits for the next run
            attempts = state.attempts + 1
            last = attempts >= ctx.policies.notice_attempts
            logger.warning("notice %s (%s) not sent, attempt %d%s: %s", state.id,
                           made.notice.kind.value, attempts, ", given up" if last else "",
                           _scrubbed(error, made.token))
            updates.append(attrs.evolve(
                state, attempts=attempts, updated_at=now,
                status=NoticeStatus.DROPPED if last else NoticeStatus.PENDING))
            continue
        sent += 1
        updates.append(attrs.evolve(state, status=NoticeStatus.SENT, updated_at=now))
        audit.append(AuditRecord(at=now, action=AuditAction.NOTICE, outcome="success",
                                 account_id=made.account_id,
                                 detail=f"sent {made.notice.kind.value} {state.id}"))
    if updates:
        with ctx.writing() as uow:
            notices: Notices = require_tier(uow, Notices)
            notices.update_notices(updates)
            if audit:
                uow.apply(ChangeSet(audit=tuple(audit)))
            uow.commit()
    if sent:
        logger.info("%d notice(s) sent", sent)
    return sent
