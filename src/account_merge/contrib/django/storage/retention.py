"""Tier ``retention`` of the unit of work: what is due, erasing, forgetting, purging
(the attempts journal's part too, on SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db.models import F, Q
from django.db.models.functions import Lower, Substr

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.rows import (
    _MERGED,
    _audit_from_row,
    _from_db,
    _outbox_entry_from_row,
    _record_from_row,
    _throttle_from_row,
    _to_db,
)
from account_merge.contrib.django.storage.unit_of_work import _DjangoUnitOfWork
from account_merge.domain.account import AccountStatus, CredentialKind
from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeStatus
from account_merge.domain.receipts import MergeReceipt
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    PSEUDONYMISED,
    Forgotten,
    ascii_lower,
    pseudonymised,
)
from account_merge.domain.throttle import ThrottleState
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.storage.attempts import merge_trails

_ESTABLISHMENT = "establishment:"


def _naming_someone() -> Q:
    """The audit rows :func:`~account_merge.domain.retention.names_someone` is true of
    (on rows annotated with ``actor_head`` and ``detail_head``)."""
    return (Q(account_id__isnull=False) | Q(login__isnull=False)
            | (Q(actor__isnull=False) & ~Q(actor_head=_ESTABLISHMENT))
            | (Q(detail__isnull=False) & ~Q(detail_head=PSEUDONYMISED)))


def _prefix_end(prefix: str) -> str:
    """The first text after every text that starts with *prefix* (binary order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _counters_named(forgotten: Forgotten) -> list[Q]:
    """The counters *forgotten* names: its keys, then each prefix's range (one query
    each: an OR of hundreds of them is too deep for SQLite)."""
    found = [Q(key__in=list(forgotten.counter_keys))] if forgotten.counter_keys else []
    return found + [Q(key__gte=p, key__lt=_prefix_end(p)) for p in forgotten.counter_prefixes]


class _DjangoRetention(_DjangoUnitOfWork):
    """The unit of work with tier ``retention`` (the journal's part too, on SQLite)."""

    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        db = self._main()
        rows = m.Account.objects.using(db).select_related("credential")
        if kind is DueKind.UNACTIVATED:
            field = "credential__expires_at"
            rows = rows.filter(status=AccountStatus.PROVISIONAL.value,
                               credential__kind=CredentialKind.PROVISIONAL.value,
                               credential__expires_at__lte=_to_db(before))
        elif kind is DueKind.UNUSED:
            field = "last_signed_in_at"
            rows = rows.filter(status=AccountStatus.ACTIVE.value,
                               last_signed_in_at__lte=_to_db(before))
        else:  # closed by the register, by the closure's time
            field = "closure__closed_at"
            rows = rows.filter(status=AccountStatus.CLOSED.value,
                               closure__closed_at__lte=_to_db(before)).annotate(
                closed_at=F("closure__closed_at"))
        if after is not None:
            at = _to_db(after[0])
            rows = rows.filter(Q(**{f"{field}__gt": at}) | Q(**{field: at, "id__gt": after[1]}))
        with self._translating():
            found = list(rows.order_by(field, "id")[:max(0, limit)])
        with self._decoding("an account"):
            records = tuple(_record_from_row(row) for row in found)
        last = None
        if records and len(records) == limit:
            record = records[-1]
            when: datetime | None
            if kind is DueKind.CLOSED:
                when = _from_db(found[-1].closed_at)  # type: ignore[attr-defined]
            else:
                when = (record.credential.expires_at if kind is DueKind.UNACTIVATED
                        and record.credential is not None else record.account.last_signed_in_at)
            assert when is not None
            last = (when, record.account.id)
        return DuePage(records=records, after=last)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        db = self._main()
        credentials = m.Credential.objects.using(db)
        with self._translating():
            found = list(credentials.filter(
                kind=CredentialKind.PROVISIONAL.value, expires_at__lte=_to_db(expired_by))
                .exclude(password_hash=ERASED_HASH).order_by("expires_at")
                .values_list("account_id", "account__status")[:max(0, limit)])
            merged = [i for i, status in found if status == _MERGED]
            others = [i for i, status in found if status != _MERGED]
            erased = 0
            if merged:
                erased += credentials.filter(account_id__in=merged).exclude(
                    password_hash=ERASED_HASH).delete()[0]
            if others:
                erased += credentials.filter(account_id__in=others).exclude(
                    password_hash=ERASED_HASH).update(password_hash=ERASED_HASH)
        return erased

    def _audit_rows(self, db: str) -> Any:
        return m.AuditEntry.objects.using(db).alias(
            login_lower=Lower("login"), actor_head=Substr("actor", 1, len(_ESTABLISHMENT)),
            detail_head=Substr("detail", 1, len(PSEUDONYMISED)))

    def _naming(self, db: str, forgotten: Forgotten) -> list[m.AuditEntry]:
        ids, logins = list(forgotten.account_ids), [ascii_lower(t) for t in forgotten.logins]
        found = {row.id: row for row in self._audit_rows(db).filter(
            Q(account_id__in=ids) | Q(actor__in=ids) | Q(login_lower__in=logins))}
        return [found[i] for i in sorted(found)]

    def _mentioning(self, db: str, forgotten: Forgotten) -> list[tuple[m.AuditEntry, str]]:
        return [(row, account_id) for at, account_id in forgotten.created
                for row in m.AuditEntry.objects.using(db).filter(
                    at=_to_db(at), detail__contains=account_id)]

    @staticmethod
    def _establishments(db: str, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        return dict(m.Account.objects.using(db).filter(id__in=list(ids)).values_list(
            "id", "establishment_uai"))

    def _rewrite(self, db: str, rows: Sequence[m.AuditEntry]) -> None:
        if rows:
            m.AuditEntry.objects.using(db).bulk_update(
                rows, ["actor", "account_id", "login", "detail"], batch_size=500)

    def forget(self, forgotten: Forgotten) -> None:
        db = self._main()
        ids = list(forgotten.account_ids)
        with self._translating():
            places = self._establishments(db, ids)
            if self._uses_journal():
                self._journal().forget(forgotten, places)
            named = self._naming(db, forgotten)
            places.update(self._establishments(
                db, sorted({r.account_id for r in named if r.account_id} - set(places))))
            changed = []
            for row in named:
                record = pseudonymised(_audit_from_row(row), places.get(row.account_id or ""))
                row.actor, row.account_id, row.login, row.detail = (
                    record.actor, record.account_id, record.login, record.detail)
                changed.append(row)
            for row, account_id in self._mentioning(db, forgotten):
                row.detail = (row.detail or "").replace(account_id, DELETED_ACCOUNT)
                changed.append(row)
            self._rewrite(db, changed)
            for condition in _counters_named(forgotten):
                m.Throttle.objects.using(db).filter(condition).delete()
            if not ids:
                return
            m.Receipt.objects.using(db).filter(principal_id__in=ids).delete()
            m.EmailIndexEntry.objects.using(db).filter(account_id__in=ids).delete()
            m.RegisterEntry.objects.using(db).filter(account_id__in=ids).delete()
            m.RegisterClosure.objects.using(db).filter(account_id__in=ids).delete()
            children = set(m.ChildLink.objects.using(db).filter(account_id__in=ids)
                           .values_list("child_id", flat=True))
            m.ChildLink.objects.using(db).filter(account_id__in=ids).delete()
            m.Child.objects.using(db).filter(id__in=children, links__isnull=True).delete()
            m.Credential.objects.using(db).filter(account_id__in=ids).delete()
            # Absorbed accounts first: they name their holder.
            m.Account.objects.using(db).filter(id__in=ids, merged_into__isnull=False).delete()
            m.Account.objects.using(db).filter(id__in=ids).delete()

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        db = self._main()
        with self._translating():
            rows = self._audit_rows(db).filter(at__lt=_to_db(before))
            if pseudonymise:
                rows = rows.filter(_naming_someone())
            due = list(rows.order_by("at", "id")[:max(0, limit)])
            if not pseudonymise:
                m.AuditEntry.objects.using(db).filter(id__in=[r.id for r in due]).delete()
            else:
                places = self._establishments(db, sorted({r.account_id for r in due
                                                          if r.account_id}))
                for row in due:
                    record = pseudonymised(_audit_from_row(row),
                                           places.get(row.account_id or ""))
                    row.actor, row.account_id, row.login, row.detail = (
                        record.actor, record.account_id, record.login, record.detail)
                self._rewrite(db, due)
            ended = len(due)
            if not self._uses_journal() or ended >= limit:
                return ended
            return ended + self._journal().end_audit(
                before, limit - ended, pseudonymise=pseudonymise,
                establishments=lambda ids: self._establishments(db, ids))

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        rows = m.OutboxEvent.objects.using(self._main()).filter(position__gt=after)
        if published is not None:
            rows = rows.filter(published=published)
        with self._translating():
            found = list(rows.order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in found]

    def delete_outbox(self, positions: Sequence[int]) -> int:
        wanted = sorted(set(positions))
        if not wanted:
            return 0
        db = self._main()
        with self._translating():
            pending = set(m.Notice.objects.using(db).filter(
                event_id__in=wanted, status=NoticeStatus.PENDING.value).values_list(
                "event_id", flat=True))
            doomed = [p for p in wanted if p not in pending]
            if not doomed:
                return 0
            if self._postgres:  # as appending does: one writer of positions at a time
                self._advisory_locks(db, "outbox", [""])
            last = self._last_position(db)
            heads = m.OutboxHead.objects.using(db)
            if not heads.filter(id=1).update(last_position=last):
                heads.bulk_create([m.OutboxHead(id=1, last_position=last)])
            m.Notice.objects.using(db).filter(event_id__in=doomed).delete()
            _, deleted = m.OutboxEvent.objects.using(db).filter(position__in=doomed).delete()
            return deleted.get(m.OutboxEvent._meta.label, 0)

    def delete_counters(self, before: datetime, limit: int) -> int:
        db = self._main()
        with self._translating():
            keys = list(m.Throttle.objects.using(db).filter(
                Q(last_failure_at__isnull=True) | Q(last_failure_at__lt=_to_db(before)))
                .values_list("key", flat=True)[:max(0, limit)])
            deleted = m.Throttle.objects.using(db).filter(key__in=keys).delete()[0]
            if not self._uses_journal() or deleted >= limit:
                return deleted
            return deleted + self._journal().delete_counters(before, limit - deleted)

    def held_about(self, forgotten: Forgotten) -> Held:
        db = self._main()
        with self._translating():
            rows = {row.id: row for row in self._naming(db, forgotten)}
            rows.update((row.id, row) for row, _ in self._mentioning(db, forgotten))
            counter_rows = [row for condition in _counters_named(forgotten)
                            for row in m.Throttle.objects.using(db).filter(condition)]
            receipts = list(m.Receipt.objects.using(db).filter(
                principal_id__in=list(forgotten.account_ids)).order_by("principal_id", "key"))
            journaled: list[Any] = []
            kept: list[ThrottleState] = []
            if self._uses_journal():
                journaled, kept = self._journal().held_about(forgotten)
        with self._decoding("an audit record, a counter or a receipt"):
            main = [(i, _audit_from_row(rows[i])) for i in sorted(rows)]
            by_key = {row.key: _throttle_from_row(row) for row in counter_rows}
            by_key.update((c.key, c) for c in kept)  # the journal's are the current ones
            return Held(
                audit=tuple(merge_trails(main, journaled, len(main) + len(journaled))),
                counters=tuple(by_key[k] for k in sorted(by_key)),
                receipts=tuple((r.principal_id, r.key, MergeReceipt.from_dict(r.receipt))
                               for r in receipts))
