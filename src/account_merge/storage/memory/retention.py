"""Retention in memory: tier ``retention``.

What is due, found by a scan of the tables; hashes erased, accounts
forgotten (with their register records and index entries), audit records
ended or pseudonymised, the outbox and counters purged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

import attrs

from account_merge.domain.account import AccountStatus, CredentialKind
from account_merge.domain.audit import AuditRecord
from account_merge.domain.events import OutboxEntry
from account_merge.domain.logins import login_key
from account_merge.domain.notices import NoticeStatus
from account_merge.domain.retention import (
    DELETED_ACCOUNT,
    ERASED_HASH,
    Forgotten,
    counter_at_rest,
    names_someone,
    pseudonymised,
)
from account_merge.ports.retention import DueKind, DuePage, Held
from account_merge.ports.storage import AccountRecord
from account_merge.storage.memory.unit_of_work import _CoreUnitOfWork


class _RetentionTier(_CoreUnitOfWork):
    """Tier ``retention`` of the unit of work."""

    if TYPE_CHECKING:
        def index_email(self, account_id: str, key: str | None) -> None: ...

    # tier retention ---------------------------------------------------------------
    def accounts_due(self, kind: DueKind, before: datetime, after: tuple[datetime, str] | None,
                     limit: int) -> DuePage:
        self._check_open()
        t = self._t
        found: list[tuple[tuple[datetime, str], AccountRecord]] = []
        for account in t.accounts.values():
            credential = t.credentials.get(account.id)
            when: datetime | None = None
            if kind is DueKind.CLOSED and account.status is AccountStatus.CLOSED:
                closure = t.closures.get(account.id)
                when = closure.closed_at if closure is not None else None
            elif kind is DueKind.UNACTIVATED and account.status is AccountStatus.PROVISIONAL:
                if credential is not None and credential.kind is CredentialKind.PROVISIONAL:
                    when = credential.expires_at
            elif kind is DueKind.UNUSED and account.status is AccountStatus.ACTIVE:
                when = account.last_signed_in_at
            if when is None or when > before or (after is not None and (when, account.id) <= after):
                continue
            found.append(((when, account.id), AccountRecord(account, credential)))
        found.sort(key=lambda item: item[0])
        page = found[:max(0, limit)]
        return DuePage(records=tuple(r for _, r in page),
                       after=page[-1][0] if len(page) == limit and page else None)

    def erase_hashes(self, expired_by: datetime, limit: int) -> int:
        self._check_open()
        erased = 0
        for account_id, credential in list(self._t.credentials.items()):
            if erased >= limit:
                break
            if (credential.kind is CredentialKind.PROVISIONAL and credential.expires_at is not None
                    and credential.expires_at <= expired_by
                    and credential.password_hash != ERASED_HASH):
                account = self._t.accounts.get(account_id)
                if account is not None and account.status is AccountStatus.MERGED:
                    self._delete(self._t.credentials, account_id)
                else:
                    self._set(self._t.credentials, account_id,
                              attrs.evolve(credential, password_hash=ERASED_HASH))
                erased += 1
        return erased

    def forget(self, forgotten: Forgotten) -> None:
        self._check_open()
        t = self._t
        ids = set(forgotten.account_ids)
        for index, record in enumerate(t.audit):
            if record is None:
                continue
            changed = record
            if forgotten.names_record(record):
                holder = t.accounts.get(record.account_id or "")
                changed = pseudonymised(record, holder.establishment_uai if holder else None)
            elif (named := forgotten.mentions(record)) is not None:
                changed = attrs.evolve(record, detail=(record.detail or "").replace(
                    named, DELETED_ACCOUNT))
            if changed != record:
                self._replace_audit(index, changed)
        for key in [k for k in t.throttles if forgotten.names_counter(k)]:
            self._delete(t.throttles, key)
        for pair in [k for k in t.receipts if k[0] in ids]:
            self._delete(t.receipts, pair)
        for account_id in forgotten.account_ids:
            self.index_email(account_id, None)
            self._forget_in_register(account_id)
            self._delete(t.links, account_id)
            self._delete(t.credentials, account_id)
        absorbed_first = sorted((t.accounts[i] for i in ids if i in t.accounts),
                                key=lambda a: a.merged_into is None)
        for account in absorbed_first:
            if account.merged_into is not None:
                bucket = t.absorbed.get(account.merged_into, {})
                self._set(t.absorbed, account.merged_into,
                          {k: None for k in bucket if k != account.id})
            self._delete(t.absorbed, account.id)
            key = login_key(account.login)
            if t.logins.get(key) != account.id:  # stored under another key: look for it
                key = next((k for k, v in t.logins.items() if v == account.id), key)
            self._delete(t.logins, key)
            self._delete(t.accounts, account.id)

    def _forget_in_register(self, account_id: str) -> None:
        """Tier ``register``: the account's records, its closure, its links' origin index."""
        t = self._t
        for key in list(t.register_by_account.get(account_id, {})):
            self._delete(t.register, key)
            self._drop_position(t.register_order.get(key[0], []), t.register_position, key)
        self._delete(t.register_by_account, account_id)
        self._delete(t.closures, account_id)
        for link in t.links.get(account_id, {}).values():
            self._index_origin(link, None)
            uai, child_id = link.origin_establishment_uai, link.child.id
            holders = t.origin_links.get(uai, {})
            if not holders.get(child_id, True):  # no account holds it through uai's letters
                self._delete(holders, child_id)
                self._drop_position(t.origin_order.get(uai, []), t.origin_position,
                                    (uai, child_id))

    def _drop_position(self, order: list[str | None], positions: dict[tuple[str, str], int],
                       key: tuple[str, str]) -> None:
        """Empty the slot of *key* in a paging order (later slots keep their place)."""
        index = positions.get(key)
        if index is not None:
            self._delete(positions, key)
            old = order[index]
            order[index] = None
            self._undo.append(partial(order.__setitem__, index, old))

    def _replace_audit(self, index: int, record: AuditRecord | None) -> None:
        audit = self._t.audit
        old = audit[index]
        audit[index] = record
        self._undo.append(partial(audit.__setitem__, index, old))

    def end_audit(self, before: datetime, limit: int, *, pseudonymise: bool) -> int:
        self._check_open()
        t = self._t
        ended = 0
        for index, record in enumerate(t.audit):
            if ended >= limit:
                break
            if record is None or record.at >= before:
                continue
            if not pseudonymise:
                self._replace_audit(index, None)
            elif names_someone(record):
                holder = t.accounts.get(record.account_id or "")
                self._replace_audit(index, pseudonymised(
                    record, holder.establishment_uai if holder else None))
            else:
                continue
            ended += 1
        return ended

    def outbox_page(self, after: int, limit: int, *,
                    published: bool | None = None) -> list[OutboxEntry]:
        self._check_open()
        out: list[OutboxEntry] = []
        for entry in self._t.outbox[max(after, 0):]:
            if len(out) >= limit:
                break
            if entry is not None and (published is None or entry.published is published):
                out.append(entry)
        return out

    def delete_outbox(self, positions: Sequence[int]) -> int:
        self._check_open()
        t = self._t
        pending = {s.position for s in t.notices.values() if s.status is NoticeStatus.PENDING}
        deleted = 0
        for position in sorted(set(positions)):
            index = position - 1
            if not 0 <= index < len(t.outbox) or t.outbox[index] is None or position in pending:
                continue
            old = t.outbox[index]
            t.outbox[index] = None
            self._undo.append(partial(t.outbox.__setitem__, index, old))
            for notice_id in [i for i, s in t.notices.items() if s.position == position]:
                self._delete(t.notices, notice_id)
            deleted += 1
        return deleted

    def delete_counters(self, before: datetime, limit: int) -> int:
        self._check_open()
        t = self._t
        keys = [k for k, state in t.throttles.items() if counter_at_rest(state, before)][:limit]
        for key in keys:
            self._delete(t.throttles, key)
        return len(keys)

    def held_about(self, forgotten: Forgotten) -> Held:
        self._check_open()
        t = self._t
        ids = set(forgotten.account_ids)
        return Held(
            audit=tuple(r for r in t.audit if r is not None and (
                forgotten.names_record(r) or forgotten.mentions(r))),
            counters=tuple(state for key, state in sorted(t.throttles.items())
                           if forgotten.names_counter(key)),
            receipts=tuple((p, k, stored.receipt) for (p, k), stored in t.receipts.items()
                           if p in ids))
