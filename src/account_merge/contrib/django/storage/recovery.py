"""Tiers ``email_index`` and ``notices`` of the unit of work: the way back to an account.
"""

from __future__ import annotations

from collections.abc import Sequence

from account_merge.contrib.django import models as m
from account_merge.contrib.django.storage.rows import (
    _notice_from_row,
    _notice_row,
    _outbox_entry_from_row,
    _record_from_row,
)
from account_merge.contrib.django.storage.unit_of_work import _DjangoUnitOfWork
from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.ports.storage import AccountRecord


class _DjangoRecovery(_DjangoUnitOfWork):
    """The unit of work with tiers ``email_index`` and ``notices``."""

    def index_email(self, account_id: str, key: str | None) -> None:
        with self._translating():
            rows = m.EmailIndexEntry.objects.using(self._main())
            if key is None:
                rows.filter(account_id=account_id).delete()
            else:
                rows.bulk_create([m.EmailIndexEntry(account_id=account_id, key=key)],
                                 update_conflicts=True, unique_fields=["account"],
                                 update_fields=["key"])

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        with self._translating():
            found = list(m.Account.objects.using(self._main()).select_related("credential")
                         .filter(email_index__key=key).order_by("id")[:max(0, limit)])
        with self._decoding("an account"):
            return [_record_from_row(row) for row in found]

    def notice_cursor(self) -> int:
        with self._translating():
            found = (m.NoticeCursor.objects.using(self._main()).filter(id=1)
                     .values_list("position", flat=True).first())
        return 0 if found is None else int(found)

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        with self._translating():
            rows = list(m.OutboxEvent.objects.using(self._main()).filter(position__gt=position)
                        .order_by("position")[:max(0, limit)])
        with self._decoding("an outbox event"):
            return [_outbox_entry_from_row(row) for row in rows]

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        with self._translating():
            db = self._main()
            m.Notice.objects.using(db).bulk_create(
                [_notice_row(state) for state in states], ignore_conflicts=True)
            cursors = m.NoticeCursor.objects.using(db)
            # Raised, never lowered (two deliveries may run at once).
            if not cursors.filter(id=1, position__lt=cursor).update(position=cursor):
                cursors.bulk_create([m.NoticeCursor(id=1, position=cursor)],
                                    ignore_conflicts=True)

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        with self._translating():
            rows = list(m.Notice.objects.using(self._main()).select_related("event")
                        .filter(status=NoticeStatus.PENDING.value)
                        .order_by("event_id", "id")[:max(0, limit)])
        with self._decoding("a notice"):
            return [(_notice_from_row(row), _outbox_entry_from_row(row.event)) for row in rows]

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        if not states:
            return
        with self._translating():
            m.Notice.objects.using(self._main()).bulk_update(
                [_notice_row(state) for state in states],
                ["event", "role", "status", "attempts", "updated_at"])
