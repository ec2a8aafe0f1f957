"""The way back in memory: tiers ``email_index`` and ``notices``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from account_merge.domain.events import OutboxEntry
from account_merge.domain.notices import NoticeState, NoticeStatus
from account_merge.ports.storage import AccountRecord
from account_merge.storage.memory.unit_of_work import _CoreUnitOfWork


class _RecoveryTier(_CoreUnitOfWork):
    """Tiers ``email_index`` and ``notices`` of the unit of work."""

    if TYPE_CHECKING:
        def outbox_page(self, after: int, limit: int, *,
                        published: bool | None = None) -> list[OutboxEntry]: ...

    # tier email_index ---------------------------------------------------------
    def index_email(self, account_id: str, key: str | None) -> None:
        self._check_open()
        t = self._t
        old = t.email_of.get(account_id)
        if old == key:
            return
        if old is not None:
            rest = t.emails.get(old, frozenset()) - {account_id}
            if rest:
                self._set(t.emails, old, rest)
            else:  # no key of an address nobody has any more
                self._delete(t.emails, old)
            self._delete(t.email_of, account_id)
        if key is not None:
            self._set(t.emails, key, t.emails.get(key, frozenset()) | {account_id})
            self._set(t.email_of, account_id, key)

    def accounts_by_email(self, key: str, limit: int) -> list[AccountRecord]:
        self._check_open()
        found = (self._record(i) for i in sorted(self._t.emails.get(key, ())))
        return [r for r in found if r is not None][:limit]

    # tier notices -----------------------------------------------------------------
    def notice_cursor(self) -> int:
        self._check_open()
        return self._t.notice_cursor

    def outbox_after(self, position: int, limit: int) -> list[OutboxEntry]:
        self._check_open()
        return self.outbox_page(position, limit)

    def add_notices(self, states: Sequence[NoticeState], cursor: int) -> None:
        self._check_open()
        t = self._t
        for state in states:
            if state.id not in t.notices:
                self._set(t.notices, state.id, state)
        if cursor > t.notice_cursor:
            previous = t.notice_cursor
            t.notice_cursor = cursor
            self._undo.append(lambda: setattr(t, "notice_cursor", previous))

    def pending_notices(self, limit: int) -> list[tuple[NoticeState, OutboxEntry]]:
        self._check_open()
        pending = sorted((s for s in self._t.notices.values()
                          if s.status is NoticeStatus.PENDING),
                         key=lambda s: (s.position, s.id))[:limit]
        return [(s, entry) for s in pending
                if (entry := self._t.outbox[s.position - 1]) is not None]

    def update_notices(self, states: Sequence[NoticeState]) -> None:
        self._check_open()
        for state in states:
            if state.id in self._t.notices:
                self._set(self._t.notices, state.id, state)
